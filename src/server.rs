//! The accept loop. L4: hands each accepted socket to `session::run_connection` in its own task.
//! Invariants: at most `max_connections` connection tasks exist (a semaphore permit moves into
//! each task); the accept gate (`limits::accept`) refuses a source over its rate or connection
//! limits by closing the socket at once; a failing `accept` backs off instead of spinning; on
//! shutdown no new connection is accepted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, field, info_span, warn, Instrument};

use crate::config::LimitsConfig;
use crate::limits::accept::AcceptGate;
use crate::limits::log_fold::{folded, Kind};
use crate::session::{run_connection, ConnContext};

/// Accepts until `closing` is cancelled; connections end when `shutdown` is.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ConnContext>,
    limits: &LimitsConfig,
    closing: CancellationToken,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let max_connections = limits.max_connections;
    let limit = Arc::new(Semaphore::new(max_connections));
    let mut gate = AcceptGate::new(limits);
    let refused = AtomicU64::new(0);
    let mut backoff = Duration::from_millis(10);
    // Folded connection log lines are summarized once a second.
    let mut summary = tokio::time::interval(Duration::from_secs(1));
    summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let accepted = tokio::select! {
            _ = closing.cancelled() => return,
            _ = summary.tick() => {
                ctx.limits.log.flush();
                continue;
            }
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
        let admitted = match gate.admit(peer.ip()) {
            Ok(admitted) => admitted,
            Err(why) => {
                let refused_total = ctx.limits.note_refused(why);
                folded!(
                    ctx.limits.log,
                    Kind::Refused,
                    warn,
                    %peer,
                    limit = %why.key(),
                    refused_total,
                    "connection refused at accept: limit reached"
                );
                // Closed at once: nothing is read from it, no task is spawned for it.
                drop(stream);
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
                drop(admitted);
            }
            .instrument(span),
        );
    }
}
