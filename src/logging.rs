//! Log output: `tracing-subscriber` to stderr, text or JSON. `RUST_LOG` overrides the config.
//!
//! Third-party crates (pingora, h2, hyper, sqlx, rustls, …) log raw request headers, Basic
//! credentials and API keys included, at debug and trace. Whatever `RUST_LOG` or
//! `logging.level` say, their events are kept to `info` and above unless the environment
//! variable [`THIRD_PARTY_ENV`] is `1`: secrets never reach a log at a level keyward enables
//! on its own. keyward's own events (targets `keyward::…` and `keyward_<crate>::…`) follow the filter as given.
//!
//! A client can make third-party code log a warning or an error at will (pingora's
//! `Fail to proxy: Downstream InvalidChunk …` for every malformed request): such lines are
//! rate-limited per call site (SPEC §15, issue 20): the first in each [`ERROR_LINE_INTERVAL`]
//! is written, the rest are counted, and one `similar log lines suppressed` warning per call site
//! then says how many were dropped. keyward's own lines are never limited.
//!
//! Lines go to stderr in batches, written by a thread of their own (`crate::log_output`):
//! a request never waits on a `write(2)`. [`LogFlush`] writes out what is pending when the
//! process ends.

use crate::config::schema::LogFormat;
use crate::config::Logging;
use std::fmt::Write as _;
use std::io::IsTerminal;
use tracing::level_filters::LevelFilter;
use tracing::Level;
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// `KEYWARD_LOG_THIRD_PARTY=1`: let third-party debug and trace output through (it may contain
/// credentials; for debugging only).
pub const THIRD_PARTY_ENV: &str = "KEYWARD_LOG_THIRD_PARTY";

/// The crates of keyward's workspace below the binary (`keyward_auth::…` targets).
const KEYWARD_CRATES: [&str; 8] = [
    "core", "metrics", "store", "config", "auth", "http", "admin", "proxy",
];

/// Whether an event's target is keyward's own code: the binary (`keyward::…`) or one of its
/// crates (`keyward_auth::…`).
pub fn is_keyward(target: &str) -> bool {
    let Some(rest) = target.strip_prefix("keyward") else {
        return false;
    };
    let rest = match rest.strip_prefix('_') {
        Some(crate_and_path) => match KEYWARD_CRATES
            .iter()
            .find_map(|name| crate_and_path.strip_prefix(name))
        {
            Some(path) => path,
            None => return false,
        },
        None => rest,
    };
    rest.is_empty() || rest.starts_with("::")
}

/// Whether an event passes the third-party cap (see the module docs). rustls warns once per
/// connection about what a client sent (an IP address as SNI, as some load tools and
/// libraries send it): a client must not be able to write a log line per connection, so rustls
/// is kept to errors (failed handshakes are counted in a metric instead).
pub fn third_party_allows(target: &str, level: &Level, third_party: bool) -> bool {
    if third_party || is_keyward(target) {
        return true;
    }
    match target.starts_with("rustls") {
        true => *level <= Level::ERROR,
        false => *level <= Level::INFO,
    }
}

/// The filter part of the subscriber (the level filter and the third-party cap), replaced
/// as one on reload so that the cap's level hint follows the new filter.
type FilterLayers = Box<dyn Layer<Registry> + Send + Sync>;

fn filter_layers(filter: EnvFilter, third_party: bool) -> FilterLayers {
    // The cap only removes events; combined with the env filter's own hint (the larger of the
    // two is used), this bound is exact enough for `log` records to be skipped cheaply.
    let hint = Layer::<Registry>::max_level_hint(&filter)
        .unwrap_or(LevelFilter::TRACE)
        .max(LevelFilter::INFO);
    let cap = tracing_subscriber::filter::filter_fn(move |meta| {
        third_party_allows(meta.target(), meta.level(), third_party)
    })
    .with_max_level_hint(hint);
    Box::new(filter.and_then(cap))
}

/// Changes the log filter of the running process (`logging.level` on reload). A filter from
/// `RUST_LOG` wins over the config, at start and on reload.
pub struct LogFilterHandle {
    handle: reload::Handle<FilterLayers, Registry>,
    third_party: bool,
    from_env: bool,
}

impl LogFilterHandle {
    pub fn set(&self, logging: &Logging) -> Result<(), String> {
        if self.from_env {
            return Ok(());
        }
        let filter = EnvFilter::try_new(logging.level.as_deref().unwrap_or("info"))
            .map_err(|e| format!("logging.level: {e}"))?;
        self.handle
            .reload(filter_layers(filter, self.third_party))
            .map_err(|e| format!("logging.level: {e}"))
    }
}

/// The writer thread's handle: dropping it writes out the pending lines and waits for them.
/// Keep it until the process has stopped logging.
#[must_use = "dropping it ends the log output"]
pub struct LogFlush(#[allow(dead_code)] Option<crate::log_output::LogWriterThread>);

/// Installs the subscriber; returns the handle a reload changes the filter with (`None` when
/// a subscriber was already installed) and the writer thread's [`LogFlush`].
pub fn init(logging: &Logging) -> (Option<LogFilterHandle>, LogFlush) {
    let from_env = EnvFilter::try_from_default_env();
    let from_env_ok = from_env.is_ok();
    let filter = from_env
        .or_else(|_| EnvFilter::try_new(logging.level.as_deref().unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let third_party = std::env::var(THIRD_PARTY_ENV).is_ok_and(|v| v == "1");
    let (filters, handle) = reload::Layer::new(filter_layers(filter, third_party));
    let registry = tracing_subscriber::registry()
        .with(filters)
        .with(ErrorLineLimit::start());
    let (writer, guard) = crate::log_output::LogOutput::start();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        // Colour only on a terminal: log files and collectors get plain text.
        .with_ansi(std::io::stderr().is_terminal());
    // try_init: a second call (tests, embedding) keeps the first subscriber.
    let installed = match logging.format {
        LogFormat::Json => registry.with(fmt.event_format(JsonLine)).try_init(),
        LogFormat::Text => registry.with(fmt).try_init(),
    };
    match installed {
        Ok(()) => (
            Some(LogFilterHandle {
                handle,
                third_party,
                from_env: from_env_ok,
            }),
            LogFlush(Some(guard)),
        ),
        Err(_) => (None, LogFlush(None)),
    }
}

/// How often a third-party call site may write a warning or error line.
pub const ERROR_LINE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// The rate limit on third-party warnings and errors (see the module docs).
#[derive(Clone, Default)]
struct ErrorLineLimit {
    sites: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<u64, Site>>>,
}

/// One call site's current interval.
struct Site {
    /// `target file:line`, for the summary.
    label: String,
    since: std::time::Instant,
    suppressed: u64,
}

impl ErrorLineLimit {
    /// The limit, with the thread that writes the summaries.
    fn start() -> ErrorLineLimit {
        let limit = ErrorLineLimit::default();
        let reporter = limit.clone();
        let _ = std::thread::Builder::new()
            .name("keyward-log-limit".into())
            .spawn(move || loop {
                std::thread::sleep(ERROR_LINE_INTERVAL);
                for (label, suppressed) in reporter.take_suppressed(std::time::Instant::now()) {
                    tracing::warn!(
                        target: "keyward::log",
                        site = %label,
                        suppressed,
                        interval_s = ERROR_LINE_INTERVAL.as_secs(),
                        "similar log lines suppressed"
                    );
                }
            });
        limit
    }

    /// Whether a warning or error of this call site may be written now.
    fn allow(
        &self,
        target: &str,
        file: Option<&str>,
        line: Option<u32>,
        now: std::time::Instant,
    ) -> bool {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (target, file, line).hash(&mut hasher);
        let key = hasher.finish();
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        match sites.get_mut(&key) {
            Some(site) if now.duration_since(site.since) < ERROR_LINE_INTERVAL => {
                site.suppressed += 1;
                false
            }
            Some(site) => {
                // A new interval (the summary of the last one was written, or is due).
                site.since = now;
                true
            }
            None => {
                let label = format!("{target} {}:{}", file.unwrap_or("?"), line.unwrap_or(0));
                sites.insert(
                    key,
                    Site {
                        label,
                        since: now,
                        suppressed: 0,
                    },
                );
                true
            }
        }
    }

    /// The call sites that dropped lines, with how many; forgets sites quiet for a while.
    fn take_suppressed(&self, now: std::time::Instant) -> Vec<(String, u64)> {
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        let mut report = Vec::new();
        sites.retain(|_, site| {
            if site.suppressed > 0 {
                report.push((site.label.clone(), std::mem::take(&mut site.suppressed)));
            }
            now.duration_since(site.since) < ERROR_LINE_INTERVAL * 6
        });
        report
    }
}

impl<S: tracing::Subscriber> Layer<S> for ErrorLineLimit {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        if *meta.level() > Level::WARN || is_keyward(meta.target()) {
            return true;
        }
        self.allow(
            meta.target(),
            meta.file(),
            meta.line(),
            std::time::Instant::now(),
        )
    }
}

/// One JSON object per event: `timestamp`, `level`, `message`, the event's fields, `target`.
/// Events bridged from the `log` crate (pingora's) carry their metadata as `log.file`,
/// `log.line`, … fields, which would put the build machine's paths into every line: those are
/// dropped, and `target` is the record's own. Each line is built in a reused per-thread
/// buffer, with values escaped as they are written: no allocation per field.
struct JsonLine;

thread_local! {
    static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            // RFC 3339 in UTC with microseconds, as the text format writes it; it needs no JSON
            // escaping, so it is written straight into the line (humantime's formatter: a
            // third of the cost of tracing-subscriber's, measured under callgrind).
            line.extend_from_slice(b"{\"timestamp\":\"");
            write!(
                LineWriter(&mut line),
                "{}",
                humantime::format_rfc3339_micros(std::time::SystemTime::now())
            )?;
            line.push(b'"');
            line.extend_from_slice(b",\"level\":\"");
            line.extend_from_slice(meta.level().as_str().as_bytes());
            line.push(b'"');
            event.record(&mut JsonFields { line: &mut line });
            line.extend_from_slice(b",\"target\":");
            json_str(&mut line, meta.target());
            line.extend_from_slice(b"}\n");
            writer.write_str(std::str::from_utf8(&line).map_err(|_| std::fmt::Error)?)
        })
    }
}

/// `fmt::Write` into the line buffer.
struct LineWriter<'l>(&'l mut Vec<u8>);

impl std::fmt::Write for LineWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn json_str(line: &mut Vec<u8>, value: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *line, value);
}

struct JsonFields<'l> {
    line: &'l mut Vec<u8>,
}

impl JsonFields<'_> {
    /// Writes `,"name":` unless the field is `log` metadata; `false` to skip the value.
    fn key(&mut self, field: &tracing::field::Field) -> bool {
        if field.name().starts_with("log.") {
            return false;
        }
        self.line.push(b',');
        json_str(self.line, field.name());
        self.line.push(b':');
        true
    }
}

impl tracing::field::Visit for JsonFields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if self.key(field) {
            // `collect_str`: escaped as it is formatted, no intermediate String.
            let _ = serde_json::to_writer(&mut *self.line, &format_args!("{value:?}"));
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if self.key(field) {
            json_str(self.line, value);
        }
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        if self.key(field) {
            let _ = serde_json::to_writer(&mut *self.line, &value);
        }
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if self.key(field) {
            let _ = serde_json::to_writer(&mut *self.line, &value);
        }
    }

    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        if self.key(field) {
            // JSON has no NaN or infinity: those are written as null.
            let _ = serde_json::to_writer(&mut *self.line, &value);
        }
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        if self.key(field) {
            let _ = serde_json::to_writer(&mut *self.line, &value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn third_party_error_lines_are_limited_per_call_site_and_interval() {
        let limit = ErrorLineLimit::default();
        let t0 = std::time::Instant::now();
        let site = ("pingora_proxy", Some("src/lib.rs"), Some(363));
        assert!(limit.allow(site.0, site.1, site.2, t0));
        for _ in 0..99 {
            assert!(!limit.allow(site.0, site.1, site.2, t0));
        }
        // Another call site has its own interval.
        assert!(limit.allow("h2::server", Some("x.rs"), Some(1), t0));
        let report = limit.take_suppressed(t0);
        assert_eq!(
            report,
            vec![("pingora_proxy src/lib.rs:363".to_owned(), 99)]
        );
        assert!(limit.take_suppressed(t0).is_empty());
        // The next interval writes a line again.
        let later = t0 + ERROR_LINE_INTERVAL;
        assert!(limit.allow(site.0, site.1, site.2, later));
        assert!(!limit.allow(site.0, site.1, site.2, later));
    }

    #[test]
    fn third_party_debug_is_capped_unless_asked_for() {
        assert!(is_keyward("keyward"));
        assert!(is_keyward("keyward::proxy"));
        assert!(!is_keyward("keywardish"));
        assert!(is_keyward("keyward_store::sqlite"));
        assert!(is_keyward("keyward_auth"));
        assert!(!is_keyward("keyward_authx::y"));
        assert!(!is_keyward("keyward_other::y"));
        assert!(!third_party_allows(
            "pingora_proxy::proxy_h1",
            &Level::DEBUG,
            false
        ));
        assert!(!third_party_allows("h2::codec", &Level::TRACE, false));
        assert!(third_party_allows("sqlx::query", &Level::WARN, false));
        assert!(third_party_allows("keyward::auth", &Level::TRACE, false));
        assert!(third_party_allows("hyper::proto", &Level::TRACE, true));
        assert!(!third_party_allows(
            "rustls::msgs::handshake",
            &Level::WARN,
            false
        ));
        assert!(third_party_allows("rustls::conn", &Level::ERROR, false));
    }
}
