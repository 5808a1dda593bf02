//! Where and how the command line logs.

/// Logs to stderr: text by default (colour codes only on a terminal), or one JSON
/// object per line with `RENDERQ_LOG_FORMAT=json`, for log collectors.
pub fn init() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RENDERQ_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("renderq=info,warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match std::env::var("RENDERQ_LOG_FORMAT").as_deref() {
        Ok("json") => builder.json().flatten_event(true).init(),
        Ok("text") | Err(_) => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        Ok(other) => {
            builder.with_ansi(false).init();
            tracing::warn!("RENDERQ_LOG_FORMAT `{other}` is not `text` or `json`; logging text");
        }
    }
}
