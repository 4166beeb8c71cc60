//! Logging setup shared by `ternd` and `tern-controller`: `--log-format
//! text` (the default, coloured on a terminal) or `--log-format json`, one
//! JSON object per line for journald/Loki/Elasticsearch pipelines, both on
//! standard error and filtered by an environment variable (`TERND_LOG`,
//! `TERN_CONTROLLER_LOG`) in `tracing`'s `EnvFilter` syntax.

use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, fields.
    Json,
}

/// Installs the global subscriber; `filter_var` names the variable holding
/// the filter (default `info`).
pub fn init(format: LogFormat, filter_var: &str) {
    let filter = EnvFilter::try_from_env(filter_var).unwrap_or_else(|_| "info".into());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => b.json().flatten_event(true).init(),
    }
}
