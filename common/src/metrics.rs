//! Prometheus metrics through the `metrics` facade. The recorder is process-wide; the
//! services render it at `/metrics` on their own HTTP servers.

use std::sync::OnceLock;

use deadpool_postgres::Pool;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
pub use metrics_exporter_prometheus::PrometheusHandle;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const SIZE_BUCKETS: &[f64] = &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0];

/// Installs the recorder on first use (tests build several apps in one process) and returns
/// the handle that renders it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("bucket list is not empty")
                .set_buckets_for_metric(Matcher::Full("consumer_batch_size".into()), SIZE_BUCKETS)
                .expect("bucket list is not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed")
        })
        .clone()
}

/// The text exposition, with the pool gauges refreshed first.
pub fn render(handle: &PrometheusHandle, pool: &Pool) -> String {
    let status = pool.status();
    let in_use = status.size.saturating_sub(status.available);
    metrics::gauge!("db_pool_connections", "state" => "in_use").set(in_use as f64);
    metrics::gauge!("db_pool_connections", "state" => "idle").set(status.available as f64);
    metrics::gauge!("db_pool_max_connections").set(status.max_size as f64);
    metrics::gauge!("db_pool_waiting").set(status.waiting as f64);
    handle.run_upkeep();
    handle.render()
}
