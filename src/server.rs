//! The accept loop. L4: hands each accepted socket to `session::run_connection` in its own task.
//! Invariants: at most `max_connections` connection tasks exist (a semaphore permit moves into
//! each task); a failing `accept` backs off instead of spinning; on shutdown no new connection
//! is accepted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, field, info_span, warn, Instrument};

use crate::session::{run_connection, ConnContext};

/// Accepts until `closing` is cancelled; connections end when `shutdown` is.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ConnContext>,
    max_connections: usize,
    closing: CancellationToken,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let limit = Arc::new(Semaphore::new(max_connections));
    let refused = AtomicU64::new(0);
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = closing.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                backoff = Duration::from_millis(10);
                x
            }
            Err(e) => {
                // EMFILE and friends: wait instead of spinning; connections ending free fds.
                error!(error = %e, "accept failed; retrying in {backoff:?}");
                tokio::select! {
                    _ = closing.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            let n = refused.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                warn!(%peer, max_connections, refused_total = n, "limits.max_connections reached: connection closed");
            }
            drop(stream);
            continue;
        };
        // Every log line of the connection carries its peer address and (after CONNECT) client id.
        let span = info_span!("conn", %peer, client_id = field::Empty);
        let (ctx, token) = (ctx.clone(), shutdown.clone());
        tracker.spawn(
            async move {
                run_connection(stream, ctx, token).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}
