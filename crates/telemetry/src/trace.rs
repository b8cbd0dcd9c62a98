//! OpenTelemetry trace export over OTLP/gRPC (Jaeger ingests OTLP on 4317).
//!
//! `tracing` spans of sluice's own crates become OTel spans through `tracing-opentelemetry`.
//! Sampling is parent-based: a sampled W3C `traceparent` from the kubelet is always honoured,
//! and root spans are sampled at `sampling_rate_per_million`. Export runs on the SDK's batch
//! processor thread and never blocks or fails an RPC: when the collector is unreachable the
//! batch is dropped and a warning is logged at most once a minute.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opentelemetry::propagation::Extractor;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};

/// How often an export failure is logged.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// Upper bound of one export call.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// `[tracing]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracingConfig {
    /// OTLP gRPC endpoint, e.g. `http://127.0.0.1:4317`.
    pub endpoint: String,
    /// Share of root spans (those without a sampled parent) to keep, per million.
    pub sampling_rate_per_million: u32,
}

/// The sampler for `rate` per million: parent-based, ratio for roots.
pub fn sampler(rate_per_million: u32) -> Sampler {
    let ratio = f64::from(rate_per_million.min(1_000_000)) / 1_000_000.0;
    Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
}

/// Builds the tracer provider. Must run inside a tokio runtime (the tonic channel is created
/// lazily on it).
pub fn provider(config: &TracingConfig) -> Result<SdkTracerProvider, crate::Error> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(config.endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| crate::Error::Exporter(e.to_string()))?;
    Ok(provider_with(
        WarnOnFailure::new(exporter, config.endpoint.clone()),
        config.sampling_rate_per_million,
    ))
}

/// A provider around any exporter (tests use an in-memory one).
pub fn provider_with<E: SpanExporter + 'static>(
    exporter: E,
    rate_per_million: u32,
) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler(rate_per_million))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("sluice")
                .build(),
        )
        .build()
}

/// Wraps an exporter: failures drop the batch (the SDK does) and are logged, rate-limited.
#[derive(Debug)]
pub struct WarnOnFailure<E> {
    inner: E,
    endpoint: String,
    last_warn: Mutex<Option<Instant>>,
    dropped: AtomicU64,
}

impl<E> WarnOnFailure<E> {
    pub fn new(inner: E, endpoint: String) -> Self {
        Self {
            inner,
            endpoint,
            last_warn: Mutex::new(None),
            dropped: AtomicU64::new(0),
        }
    }

    /// Spans dropped because an export failed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn note_failure(&self, spans: usize, error: &dyn std::fmt::Display) {
        let total = self.dropped.fetch_add(spans as u64, Ordering::Relaxed) + spans as u64;
        let mut last = self
            .last_warn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(
                endpoint = %self.endpoint,
                error = %error,
                dropped_spans_total = total,
                "trace export failed; spans dropped (next warning in at most 60s)"
            );
        }
    }
}

impl<E: SpanExporter> SpanExporter for WarnOnFailure<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let n = batch.len();
        let fut = self.inner.export(batch);
        async move {
            let r = fut.await;
            if let Err(e) = &r {
                self.note_failure(n, e);
            }
            r
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// Reads W3C trace context from HTTP/2 (gRPC metadata) headers.
#[derive(Debug)]
pub struct HeaderExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The OTel context carried by `headers` (`traceparent`, `tracestate`), empty if none.
pub fn extract_context(headers: &http::HeaderMap) -> opentelemetry::Context {
    use opentelemetry::propagation::TextMapPropagator;
    opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    #[test]
    fn traceparent_is_extracted() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        let cx = extract_context(&h);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_sampled() && sc.is_remote());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(
            !extract_context(&http::HeaderMap::new())
                .span()
                .span_context()
                .is_valid()
        );
    }
}
