//! Telemetry for sluice: structured logs on stderr (text for people, JSON for log shippers),
//! OpenTelemetry traces over OTLP ([`trace`]), and the Prometheus registry and `/metrics`
//! server ([`metrics`]). The daemon calls [`init`] once, inside its tokio runtime and before
//! anything else logs, and keeps the returned [`Guard`] to flush spans at shutdown.

#![forbid(unsafe_code)]

pub mod metrics;
pub mod trace;

use std::fmt;
use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// Log output format, `[log] format` in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable single lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Log verbosity, `[log] level` in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub const ALL: [&'static str; 5] = ["trace", "debug", "info", "warn", "error"];

    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "trace" => LogLevel::Trace,
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warn" => LogLevel::Warn,
            "error" => LogLevel::Error,
            other => {
                return Err(format!(
                    "unknown log level {other:?}, expected one of {}",
                    LogLevel::ALL.join(", ")
                ));
            }
        })
    }
}

impl LogFormat {
    pub const ALL: [&'static str; 2] = ["text", "json"];

    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?}, expected one of {}",
                LogFormat::ALL.join(", ")
            )),
        }
    }
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled(#[source] tracing_subscriber::util::TryInitError),
    #[error("building the OTLP trace exporter: {0}")]
    Exporter(String),
}

/// Keeps the trace pipeline alive; [`Guard::shutdown`] flushes buffered spans.
#[derive(Debug, Default)]
pub struct Guard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Guard {
    /// Exports what is buffered and stops the exporter (bounded by the SDK's timeout).
    pub fn shutdown(&self) {
        if let Some(p) = &self.provider
            && let Err(e) = p.shutdown()
        {
            tracing::warn!(error = %e, "flushing traces at shutdown failed");
        }
    }
}

/// Installs the process-wide subscriber. `level` applies to sluice's own crates; dependencies
/// (h2, hyper, tower) stay at `warn` unless the level is `trace`, so `debug` stays readable.
/// With a tracer `provider`, sluice's spans are also exported as OpenTelemetry spans (only
/// sluice's own crates: exporting the exporter's own h2/tonic spans would feed back).
pub fn init(
    level: LogLevel,
    format: LogFormat,
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
) -> Result<Guard, Error> {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let deps = if level == LogLevel::Trace {
        "trace"
    } else {
        "warn"
    };
    let filter = EnvFilter::new(format!(
        "{deps},{SLUICE_TARGETS}",
        SLUICE_TARGETS = own_targets(level)
    ));
    let otel = provider.as_ref().map(|p| {
        let own = CRATES
            .iter()
            .fold(tracing_subscriber::filter::Targets::new(), |t, c| {
                t.with_target(*c, tracing::Level::TRACE)
            });
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("sluice"))
            .with_filter(own)
    });
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(true);
    match format {
        LogFormat::Text => registry.with(fmt.with_ansi(false)).try_init(),
        LogFormat::Json => registry
            .with(fmt.json().flatten_event(true).with_current_span(true))
            .try_init(),
    }
    .map_err(Error::AlreadyInstalled)?;
    Ok(Guard { provider })
}

/// sluice's crates (their `tracing` targets).
const CRATES: [&str; 12] = [
    "sluice",
    "server",
    "telemetry",
    "pods",
    "nsmgr",
    "cnimgr",
    "hostport",
    "images",
    "oci",
    "streaming",
    "netpolicy",
    "cri_api",
];

/// The tracing targets of sluice's crates, all at `level`.
fn own_targets(level: LogLevel) -> String {
    CRATES
        .iter()
        .map(|c| format!("{c}={level}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_formats_round_trip() {
        for l in LogLevel::ALL {
            assert_eq!(l.parse::<LogLevel>().map(|v| v.as_str()), Ok(l));
        }
        for f in LogFormat::ALL {
            assert_eq!(f.parse::<LogFormat>().map(|v| v.as_str()), Ok(f));
        }
        let err = "loud".parse::<LogLevel>().unwrap_err();
        assert!(err.contains("trace, debug, info, warn, error"), "{err}");
    }

    #[test]
    fn filter_names_every_own_crate_at_the_level() {
        let t = own_targets(LogLevel::Debug);
        assert!(
            t.contains("sluice=debug") && t.contains("cnimgr=debug"),
            "{t}"
        );
        // The filter text must be accepted by EnvFilter.
        EnvFilter::try_new(format!("warn,{t}")).expect("valid filter");
    }
}
