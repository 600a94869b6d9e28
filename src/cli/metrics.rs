//! `--metrics-listen ADDR`: a Prometheus text endpoint (`GET /metrics`) beside the daemon, a
//! mount, virtiofs or nar-bridge. The counters and histograms are recorded where things happen
//! (the `metrics` crate's macros, no-ops without an endpoint); state that is a level rather
//! than an event (inodes, open handles) is read at each scrape.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// The metrics flag every long-running command takes.
#[derive(clap::Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9100).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
}

/// Latency buckets, in seconds: from a cached lookup (tens of µs) to a call near the timeouts.
const BUCKETS: &[f64] = &[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0];

/// What is read at each scrape; set once the thing it reads exists.
pub type Gauges = Arc<parking_lot::Mutex<Option<Box<dyn Fn() + Send>>>>;

impl MetricsArgs {
    /// Starts the endpoint when asked for: binds first, so an address in use is an error at
    /// start. The returned slot takes the function that publishes gauges before each scrape.
    pub async fn start(&self) -> anyhow::Result<Gauges> {
        let gauges: Gauges = Default::default();
        let Some(addr) = self.metrics_listen else {
            return Ok(gauges);
        };
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot serve metrics on {addr}"))?;
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
            .context("metrics buckets")?
            .install_recorder()
            .context("installing the metrics recorder")?;
        let scrape = {
            let gauges = gauges.clone();
            move || {
                let (gauges, handle) = (gauges.clone(), handle.clone());
                async move {
                    if let Some(publish) = gauges.lock().as_ref() {
                        publish();
                    }
                    handle.run_upkeep();
                    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render())
                }
            }
        };
        let router = axum::Router::new().route("/metrics", axum::routing::get(scrape));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::warn!("the metrics endpoint stopped: {e}");
            }
        });
        eprintln!("metrics on http://{addr}/metrics");
        Ok(gauges)
    }
}
