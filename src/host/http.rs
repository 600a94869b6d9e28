//! Serving an HTTP application (nar-bridge, the metrics endpoint) on a listener: HTTP/1.1 and
//! HTTP/2, each request carrying its connection's [`Peer`](super::Peer).

use std::pin::pin;

use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tower::ServiceExt;

use super::{HostError, Listener, Shutdown, conn};

/// Serves `app` on `listener` until `shutdown` resolves; then lets requests in progress finish
/// for [`super::SHUTDOWN_GRACE`] and returns. A unix socket file is removed on return.
pub async fn serve_http(listener: Listener, app: axum::Router, shutdown: Shutdown) -> Result<(), HostError> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper enforces its HTTP/1 header read timeout (30 s) only when it has a timer.
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    {
        let mut incoming = pin!(conn::incoming(&listener));
        let mut stop = pin!(shutdown.clone());
        loop {
            let conn = tokio::select! {
                () = &mut stop => break,
                conn = incoming.next() => conn,
            };
            let Some(Ok(conn)) = conn else { break };
            let peer = conn.peer().clone();
            let service = app.clone().map_request(move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(peer.clone());
                request
            });
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(conn), TowerToHyperService::new(service))
                .into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!("HTTP connection ended: {e}");
                }
            });
        }
    }
    // Accepting stopped (the listener is dropped below): only requests under way are served.
    tokio::select! {
        () = graceful.shutdown() => {}
        () = super::after_grace(shutdown) => {}
    }
    drop(listener);
    Ok(())
}
