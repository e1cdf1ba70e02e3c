//! Log output: `tracing-subscriber` to stderr, text or JSON. `RUST_LOG` overrides the config.

use crate::config::schema::LogFormat;
use crate::config::Logging;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

pub fn init(logging: &Logging) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(logging.level.as_deref().unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: log files and collectors get plain text.
        .with_ansi(std::io::stderr().is_terminal());
    // try_init: a second call (tests, embedding) keeps the first subscriber.
    let _ = match logging.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
