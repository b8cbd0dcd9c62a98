//! Image metrics: pulls by result, bytes downloaded, pull duration. The `result` label is
//! `success` or the error kind (`NotFound`, `Unauthenticated`, `Unavailable`, ...), a bounded
//! set; image names never become labels.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabels {
    pub result: String,
}

/// Handles to the image metric families; `Default` makes unregistered ones.
#[derive(Clone, Debug)]
pub struct ImageMetrics {
    pub(crate) pulls: Family<ResultLabels, Counter>,
    pub(crate) pulled_bytes: Counter,
    pub(crate) duration: Histogram,
}

impl Default for ImageMetrics {
    fn default() -> Self {
        Self {
            pulls: Family::default(),
            pulled_bytes: Counter::default(),
            // 10 ms .. ~11 min
            duration: Histogram::new(exponential_buckets(0.01, 2.0, 17)),
        }
    }
}

impl ImageMetrics {
    /// Registers `image_pulls_total`, `image_pulled_bytes_total` and
    /// `image_pull_duration_seconds`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "image_pulls",
            "Image pulls that ran (joined duplicates excluded), by result",
            m.pulls.clone(),
        );
        registry.register(
            "image_pulled_bytes",
            "Compressed layer bytes downloaded from registries",
            m.pulled_bytes.clone(),
        );
        registry.register(
            "image_pull_duration_seconds",
            "Time from the start of a pull to the image being recorded",
            m.duration.clone(),
        );
        m
    }
}
