//! The Prometheus text endpoint (`GET /metrics`) of a long-running command. Counters and
//! histograms are recorded where things happen (the `metrics` crate's macros, no-ops without an
//! endpoint); state that is a level rather than an event (inodes, open handles) is read at each
//! scrape through [`Gauges`].

use std::net::SocketAddr;
use std::sync::Arc;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use super::{HostError, Listener, Shutdown};

/// Latency buckets, in seconds: from a cached lookup (tens of µs) to a call near the timeouts.
const BUCKETS: &[f64] = &[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0];

/// What is read at each scrape; set once the thing it reads exists.
pub type Gauges = Arc<parking_lot::Mutex<Option<Box<dyn Fn() + Send>>>>;

/// Installs this process's metrics recorder and serves it on `addr` in the background until
/// `shutdown`. Binds first, so an address in use is an error now.
pub(super) async fn serve_metrics(addr: SocketAddr, gauges: Gauges, shutdown: Shutdown) -> Result<(), HostError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| HostError::Metrics(format!("cannot serve metrics on {addr}: {e}")))?;
    let listener = Listener::Tcp(listener);
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
        .map_err(|e| HostError::Metrics(format!("metrics buckets: {e}")))?
        .install_recorder()
        .map_err(|e| HostError::Metrics(format!("installing the metrics recorder: {e}")))?;
    let scrape = move || {
        let (gauges, handle) = (gauges.clone(), handle.clone());
        async move {
            if let Some(publish) = gauges.lock().as_ref() {
                publish();
            }
            handle.run_upkeep();
            ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render())
        }
    };
    let app = axum::Router::new().route("/metrics", axum::routing::get(scrape));
    tokio::spawn(async move {
        if let Err(e) = super::serve_http(listener, app, shutdown).await {
            tracing::warn!("the metrics endpoint stopped: {e}");
        }
    });
    eprintln!("metrics on http://{addr}/metrics");
    Ok(())
}
