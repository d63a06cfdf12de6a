//! The process's metrics registry: one Prometheus recorder that every role of the node
//! records into through the `metrics` macros, rendered by the admin endpoint's `/metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The handle of the process-wide Prometheus recorder, installed on the first call (every
/// role asks; the first installs it). `None` when another recorder was installed before
/// (a test harness): metrics then go there and `/metrics` has nothing to render.
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().install_recorder().ok())
        .clone()
}
