//! Pod metrics: network setup and teardown time by step, pods by state, published host-port
//! mappings. Labels are fixed step and state names, never pod ids.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StepLabels {
    pub step: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StateLabels {
    pub state: &'static str,
}

type Steps = Family<StepLabels, Histogram, fn() -> Histogram>;

fn step_histogram() -> Histogram {
    // 0.1 ms .. ~6.5 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// Handles to the pod metric families; `Default` makes unregistered ones (for tests).
#[derive(Clone, Debug)]
pub struct PodMetrics {
    pub(crate) setup: Steps,
    pub(crate) teardown: Steps,
    pub(crate) pods: Family<StateLabels, Gauge>,
    pub(crate) hostport_mappings: Gauge,
    pub(crate) containers: Family<StateLabels, Gauge>,
    pub(crate) oom_kills: prometheus_client::metrics::counter::Counter,
}

impl Default for PodMetrics {
    fn default() -> Self {
        Self {
            setup: Family::new_with_constructor(step_histogram),
            teardown: Family::new_with_constructor(step_histogram),
            pods: Family::default(),
            hostport_mappings: Gauge::default(),
            containers: Family::default(),
            oom_kills: Default::default(),
        }
    }
}

impl PodMetrics {
    /// Registers the pod families in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "pod_network_setup_duration_seconds",
            "Time RunPodSandbox spent per network step (netns, cni, hostport)",
            m.setup.clone(),
        );
        registry.register(
            "pod_network_teardown_duration_seconds",
            "Time pod teardown spent per network step (hostport, cni, netns)",
            m.teardown.clone(),
        );
        registry.register("pods", "Pod sandboxes by state", m.pods.clone());
        registry.register(
            "hostport_mappings",
            "Host-port mappings published for ready pods",
            m.hostport_mappings.clone(),
        );
        registry.register("containers", "Containers by state", m.containers.clone());
        registry.register(
            "containers_oom",
            "Containers seen ending with an OOM kill",
            m.oom_kills.clone(),
        );
        m
    }

    pub(crate) fn setup_step(&self, step: &'static str, d: std::time::Duration) {
        self.setup
            .get_or_create(&StepLabels { step })
            .observe(d.as_secs_f64());
    }

    pub(crate) fn teardown_step(&self, step: &'static str, d: std::time::Duration) {
        self.teardown
            .get_or_create(&StepLabels { step })
            .observe(d.as_secs_f64());
    }
}
