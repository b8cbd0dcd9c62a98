//! Streaming metrics: sessions by operation and transport, how many are open, and refused
//! requests by HTTP status. Registered by the daemon; a default instance counts into nothing
//! anyone scrapes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SessionLabels {
    operation: &'static str,
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    code: u16,
}

/// Counters of the streaming server (cheap to clone; clones share the values).
#[derive(Debug, Clone, Default)]
pub struct StreamMetrics {
    sessions: Family<SessionLabels, Counter>,
    active: Family<OperationLabels, Gauge>,
    refused: Family<RefusedLabels, Counter>,
}

impl StreamMetrics {
    /// Registers `sluice_streaming_*` in `registry` (which carries the `sluice` prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "streaming_sessions",
            "Streaming sessions started, by operation (exec, attach, port_forward) and transport (spdy, websocket)",
            m.sessions.clone(),
        );
        registry.register(
            "streaming_sessions_active",
            "Streaming sessions open now, by operation",
            m.active.clone(),
        );
        registry.register(
            "streaming_refused",
            "Streaming requests refused before an upgrade, by HTTP status (404 unknown/used/expired URL, 400 bad request, 403 protocol)",
            m.refused.clone(),
        );
        m
    }

    pub(crate) fn refused(&self, code: u16) {
        self.refused.get_or_create(&RefusedLabels { code }).inc();
    }

    /// Counts a session and keeps it in the active gauge until the guard drops.
    pub(crate) fn session(&self, operation: &'static str, transport: &'static str) -> ActiveGuard {
        self.sessions
            .get_or_create(&SessionLabels {
                operation,
                transport,
            })
            .inc();
        let gauge = self
            .active
            .get_or_create(&OperationLabels { operation })
            .clone();
        gauge.inc();
        ActiveGuard(gauge)
    }
}

/// Decrements the active-sessions gauge when the session ends.
#[derive(Debug)]
pub(crate) struct ActiveGuard(Gauge);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_and_refusals_are_counted() {
        let mut registry = Registry::with_prefix("sluice");
        let m = StreamMetrics::register(&mut registry);
        let guard = m.session("exec", "spdy");
        m.refused(404);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                "sluice_streaming_sessions_total{operation=\"exec\",transport=\"spdy\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("sluice_streaming_sessions_active{operation=\"exec\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sluice_streaming_refused_total{code=\"404\"} 1"),
            "{text}"
        );
        drop(guard);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("sluice_streaming_sessions_active{operation=\"exec\"} 0"),
            "{text}"
        );
    }
}
