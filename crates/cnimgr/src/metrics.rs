//! CNI metrics: how long each plugin runs, by plugin type and command, and how often it fails.
//! Label values are plugin types from the loaded configs and the five CNI commands, so the
//! cardinality is bounded by the node's configuration, never by pods.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PluginLabels {
    pub plugin: String,
    pub command: String,
}

type HistogramFamily = Family<PluginLabels, Histogram, fn() -> Histogram>;

/// Handles to the CNI metric families; `Default` makes unregistered ones (for tests).
#[derive(Clone, Debug)]
pub struct CniMetrics {
    pub(crate) duration: HistogramFamily,
    pub(crate) errors: Family<PluginLabels, Counter>,
}

fn plugin_histogram() -> Histogram {
    // 1 ms .. ~65 s: loopback takes a few ms, a slow IPAM can take seconds.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Default for CniMetrics {
    fn default() -> Self {
        Self {
            duration: Family::new_with_constructor(plugin_histogram),
            errors: Family::default(),
        }
    }
}

impl CniMetrics {
    /// Registers `cni_plugin_duration_seconds` and `cni_plugin_errors_total` in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "cni_plugin_duration_seconds",
            "Time a CNI plugin process ran, by plugin type and CNI command",
            m.duration.clone(),
        );
        registry.register(
            "cni_plugin_errors",
            "CNI plugin invocations that failed, by plugin type and CNI command",
            m.errors.clone(),
        );
        m
    }
}
