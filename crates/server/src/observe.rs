//! The CRI observability layer: one tower layer around both services that, for every call,
//! opens the root span named after the CRI method (parented on the caller's W3C `traceparent`,
//! so a kubelet trace continues into sluice) and records the operation count, errors by gRPC
//! code and latency histogram. It sees every RPC, including the `Unimplemented` stubs.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    operation: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    operation: String,
}

type Latency = Family<OpLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(telemetry::metrics::latency_buckets())
}

/// CRI operation metrics; `Default` makes unregistered ones.
#[derive(Clone, Debug)]
pub struct CriMetrics {
    calls: Family<CallLabels, Counter>,
    errors: Family<CallLabels, Counter>,
    latency: Latency,
    /// The CRI method names; anything else is counted as `unknown` (bounded cardinality).
    known: Arc<HashSet<String>>,
}

impl Default for CriMetrics {
    fn default() -> Self {
        Self {
            calls: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            known: Arc::new(known_methods()),
        }
    }
}

/// Method names of both CRI services, from the compiled schema.
fn known_methods() -> HashSet<String> {
    use prost::Message;
    let Ok(fds) = prost_types::FileDescriptorSet::decode(cri_api::FILE_DESCRIPTOR_SET) else {
        return HashSet::new();
    };
    fds.file
        .iter()
        .flat_map(|f| f.service.iter())
        .flat_map(|s| s.method.iter().map(|m| m.name().to_string()))
        .collect()
}

impl CriMetrics {
    /// Registers `cri_operations_total`, `cri_operations_errors_total` and
    /// `cri_operation_duration_seconds`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "cri_operations",
            "CRI calls by operation and gRPC status code",
            m.calls.clone(),
        );
        registry.register(
            "cri_operations_errors",
            "CRI calls that returned a status other than OK, by operation and code",
            m.errors.clone(),
        );
        registry.register(
            "cri_operation_duration_seconds",
            "CRI call latency by operation",
            m.latency.clone(),
        );
        m
    }

    /// `/runtime.v1.RuntimeService/RunPodSandbox` → `RunPodSandbox`; foreign paths → `unknown`.
    fn operation(&self, path: &str) -> String {
        let service_ok = path.starts_with("/runtime.v1.RuntimeService/")
            || path.starts_with("/runtime.v1.ImageService/");
        match path.rsplit('/').next() {
            Some(m) if service_ok && self.known.contains(m) => m.to_string(),
            _ => "unknown".to_string(),
        }
    }

    fn observe(&self, operation: String, code: tonic::Code, seconds: f64) {
        let labels = CallLabels {
            operation: operation.clone(),
            code: format!("{code:?}"),
        };
        self.calls.get_or_create(&labels).inc();
        if code != tonic::Code::Ok {
            self.errors.get_or_create(&labels).inc();
        }
        self.latency
            .get_or_create(&OpLabels { operation })
            .observe(seconds);
    }
}

/// The tower layer; add it to the tonic server builder.
#[derive(Clone, Debug)]
pub struct CriLayer {
    metrics: CriMetrics,
}

impl CriLayer {
    pub fn new(metrics: CriMetrics) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for CriLayer {
    type Service = CriService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CriService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct CriService<S> {
    inner: S,
    metrics: CriMetrics,
}

/// The status code of a unary gRPC response: tonic puts errors in the headers of a
/// trailers-only response; a response without one is a success whose `grpc-status: 0` comes
/// in the trailers.
fn response_code<B>(res: &http::Response<B>) -> tonic::Code {
    res.headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32)
}

impl<S, ReqB, ResB> tower::Service<http::Request<ReqB>> for CriService<S>
where
    S: tower::Service<http::Request<ReqB>, Response = http::Response<ResB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResB: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        let operation = self.metrics.operation(req.uri().path());
        let span = tracing::info_span!(
            "cri",
            otel.name = %operation,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.method = %operation,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let _ = span.set_parent(telemetry::trace::extract_context(req.headers()));
        let fut = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let record_span = span.clone();
        Box::pin(
            async move {
                let res = fut.await;
                let code = match &res {
                    Ok(r) => response_code(r),
                    Err(_) => tonic::Code::Unknown,
                };
                record_span.record("rpc.grpc.status_code", code as i32);
                if code != tonic::Code::Ok {
                    record_span.record("otel.status_code", "ERROR");
                }
                metrics.observe(operation, code, started.elapsed().as_secs_f64());
                res
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_bounded_to_cri_methods() {
        let m = CriMetrics::default();
        assert_eq!(
            m.operation("/runtime.v1.RuntimeService/RunPodSandbox"),
            "RunPodSandbox"
        );
        assert_eq!(
            m.operation("/runtime.v1.ImageService/PullImage"),
            "PullImage"
        );
        assert_eq!(m.operation("/runtime.v1.RuntimeService/Nope"), "unknown");
        assert_eq!(m.operation("/evil.Service/RunPodSandbox"), "unknown");
    }

    #[test]
    fn codes_come_from_trailers_only_headers() {
        let ok = http::Response::new(());
        assert_eq!(response_code(&ok), tonic::Code::Ok);
        let mut err = http::Response::new(());
        err.headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("12"));
        assert_eq!(response_code(&err), tonic::Code::Unimplemented);
    }

    #[test]
    fn observations_land_in_the_registry() {
        let mut r = telemetry::metrics::registry();
        let m = CriMetrics::register(&mut r);
        m.observe("Version".into(), tonic::Code::Ok, 0.001);
        m.observe("RunPodSandbox".into(), tonic::Code::InvalidArgument, 0.002);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        assert!(
            out.contains(r#"sluice_cri_operations_total{operation="Version",code="Ok"} 1"#),
            "{out}"
        );
        assert!(out.contains(r#"sluice_cri_operations_errors_total{operation="RunPodSandbox",code="InvalidArgument"} 1"#), "{out}");
        assert!(
            out.contains(
                r#"sluice_cri_operation_duration_seconds_bucket{le="0.001",operation="Version"} 1"#
            ) || out
                .contains("sluice_cri_operation_duration_seconds_count{operation=\"Version\"} 1"),
            "{out}"
        );
    }
}
