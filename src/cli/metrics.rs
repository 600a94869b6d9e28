//! `--metrics-listen ADDR`: a Prometheus text endpoint (`GET /metrics`) beside the daemon, a
//! mount, virtiofs or nar-bridge (served by the host layer).

use std::net::SocketAddr;

/// The metrics flag every long-running command takes.
#[derive(clap::Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9100).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}
