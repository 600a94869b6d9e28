//! Serving the gRPC services ([`crate::server`]) on a listener.

use super::{HostError, Listener, Shutdown, conn};
use crate::server::{self, Handlers};

/// Serves `handlers` on `listener` until `shutdown` resolves; then lets calls in progress finish
/// for [`super::SHUTDOWN_GRACE`] and returns. A unix socket file is removed on return.
pub async fn serve_grpc(listener: Listener, handlers: Handlers, shutdown: Shutdown) -> Result<(), HostError> {
    let router = server::router(handlers).await?;
    let stopping = shutdown.clone();
    tokio::select! {
        result = router.serve_with_incoming_shutdown(conn::incoming(&listener), shutdown) => result?,
        () = super::after_grace(stopping) => {}
    }
    drop(listener);
    Ok(())
}
