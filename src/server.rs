//! The accept loops, one per listener. L4: hands each accepted socket to the session layer in
//! its own task. Invariants: at most `max_connections` connection tasks exist over all listeners
//! (a permit of one shared semaphore moves into each task); a failing `accept` backs off instead
//! of spinning; on shutdown no new connection is accepted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, field, info_span, warn, Instrument};

use crate::session::{run_connection, run_tls_connection, ConnContext};
use crate::transport::TlsAcceptor;

/// What a listener speaks.
pub(crate) enum Kind {
    Plain,
    Tls(TlsAcceptor),
}

/// `limits.max_connections`, shared by every listener.
#[derive(Clone)]
pub(crate) struct ConnectionLimit {
    permits: Arc<Semaphore>,
    max: usize,
}

impl ConnectionLimit {
    pub(crate) fn new(max: usize) -> ConnectionLimit {
        ConnectionLimit {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }
}

/// Accepts until `closing` is cancelled; connections end when `shutdown` is.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    kind: Kind,
    ctx: Arc<ConnContext>,
    limit: ConnectionLimit,
    closing: CancellationToken,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let max_connections = limit.max;
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
        let Ok(permit) = limit.permits.clone().try_acquire_owned() else {
            let n = refused.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                warn!(%peer, max_connections, refused_total = n, "limits.max_connections reached: connection closed");
            }
            drop(stream);
            continue;
        };
        // Every log line of the connection carries its peer address and (after CONNECT) client id.
        let (ctx, token) = (ctx.clone(), shutdown.clone());
        match &kind {
            Kind::Plain => {
                let span = info_span!("conn", %peer, client_id = field::Empty);
                tracker.spawn(
                    async move {
                        // Called inside the task (not built outside and moved in): a future
                        // captured by value and then awaited would take its room twice in
                        // the task, which every idle connection keeps.
                        run_connection(stream, ctx, token).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            Kind::Tls(tls) => {
                let span = info_span!("conn", %peer, tls = true, client_id = field::Empty);
                let tls = tls.clone();
                tracker.spawn(
                    async move {
                        run_tls_connection(stream, tls, ctx, token).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
        }
    }
}
