//! What the proxy asks of the admin API, drawn here so that neither crate imports the other:
//! the binary hands the proxy an `Arc<dyn LocalService>`.

use crate::ctx::RequestCtx;
use pingora::proxy::Session;

/// A service keyward answers itself, completely, on the proxy's listeners.
#[async_trait::async_trait]
pub trait LocalService: Send + Sync {
    /// Answers the request: writes the whole response, or returns the error pingora logs.
    async fn handle(&self, session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<()>;
}
