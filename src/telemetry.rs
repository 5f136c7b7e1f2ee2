//! Logs and process signals: JSON logs in a cluster, readable text on a
//! terminal (colours only when stderr is one), and the termination signal.

use std::io::IsTerminal;

/// How log lines are written.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs at `level` (a `RUST_LOG`-style filter such as `info` or
/// `distroless_guard=debug`); `RUST_LOG` wins when `level` is `None`; `info`
/// when neither parses.
pub(crate) fn init_logging(format: LogFormat, level: Option<&str>) {
    let colours = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    init_logging_to(format, level, std::io::stderr, colours);
}

/// [`init_logging`] to another writer: the benches log what the binary
/// logs, formatted the same way, to a writer that drops it.
pub fn init_logging_to<W>(format: LogFormat, level: Option<&str>, writer: W, colours: bool)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = match level {
        Some(l) => {
            tracing_subscriber::EnvFilter::try_new(l).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        }
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(colours);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Completes on SIGTERM or Ctrl-C.
pub(crate) async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    let ctrl_c = tokio::signal::ctrl_c();
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

/// The multi-threaded runtime every command that needs one runs on.
pub(crate) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

/// An error and its causes on one line (reqwest's own message hides the
/// cause of a timeout or a TLS failure).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
