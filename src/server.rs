//! The accept loops, one per listener. L4: hands each accepted socket to the session layer in
//! its own task. Invariants: at most `max_connections` connection tasks exist over all listeners
//! (a permit of one shared semaphore moves into each task); one accept gate (`limits::accept`),
//! shared by every listener, refuses a source over its rate or connection limits by closing the
//! socket at once, before any TLS handshake (a WebSocket connection from a trusted proxy is
//! admitted after its handshake, by the forwarded address: `server::ws`); a failing `accept`
//! backs off instead of spinning; on shutdown no new connection is accepted.

mod ws;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, field, info_span, warn, Instrument};

use crate::admin::metrics::Refused;
use crate::config::LimitsConfig;
use crate::limits::accept::{AcceptGate, Admitted, Refusal};
use crate::limits::log_fold::{folded, Kind as LogKind};
use crate::session::{run_connection, run_tls_connection, ConnContext};
use crate::transport::{TlsAcceptor, WsAcceptor};

/// What a listener speaks.
pub(crate) enum Kind {
    Plain,
    Tls(TlsAcceptor),
    Ws(WsAcceptor),
}

/// The limits every listener shares, so that a client gains nothing by using both:
/// `limits.max_connections` and the accept gate (accept rates, connections per source address).
#[derive(Clone)]
pub(crate) struct Admission {
    permits: Arc<Semaphore>,
    /// `limits.max_connections`; the semaphore's permits add up to it (changed by a reload,
    /// see `set_max_connections`).
    max_connections: Arc<AtomicUsize>,
    /// Connections refused for `max_connections`, over all listeners (logged at powers of two).
    refused: Arc<AtomicU64>,
    /// One gate, one per-address table: a plain and a TLS connection from one address count
    /// against the same `max_connections_per_ip` and the same rates. Locked only to decide
    /// on one accepted socket, never across an await.
    gate: Arc<Mutex<AcceptGate>>,
}

impl Admission {
    pub(crate) fn new(limits: &LimitsConfig) -> Admission {
        Admission {
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            max_connections: Arc::new(AtomicUsize::new(limits.max_connections)),
            refused: Arc::new(AtomicU64::new(0)),
            gate: Arc::new(Mutex::new(AcceptGate::new(limits))),
        }
    }

    /// A reload: from now on at most `max` connections. Raising adds permits at once. Lowering
    /// takes the free permits away at once and the rest as connections end (a task on
    /// `runtime` waits for them): connected clients are never closed for it, and new ones are
    /// refused until the count is below the new limit. Calls must not overlap (the reloader
    /// runs one reload at a time).
    pub(crate) fn set_max_connections(&self, max: usize, runtime: &tokio::runtime::Handle) {
        let old = self.max_connections.swap(max, Ordering::Relaxed);
        if max > old {
            self.permits.add_permits(max - old);
        } else if max < old {
            let owed = (old - max) - self.permits.forget_permits(old - max);
            if owed > 0 {
                let permits = self.permits.clone();
                // More than u32::MAX cannot be owed in practice (connections are fds).
                let owed = u32::try_from(owed).unwrap_or(u32::MAX);
                runtime.spawn(async move {
                    if let Ok(p) = permits.acquire_many_owned(owed).await {
                        p.forget();
                    }
                });
            }
        }
    }

    fn admit(&self, ip: IpAddr) -> Result<Admitted, Refusal> {
        // A poisoned lock is recovered: the gate is plain data every call leaves consistent.
        self.gate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(ip)
    }

    /// Admits `ip` or logs (folded) and counts the refusal; `peer` is what the log shows.
    fn admit_logged(
        &self,
        ip: IpAddr,
        peer: &dyn std::fmt::Display,
        ctx: &ConnContext,
    ) -> Result<Admitted, Refusal> {
        self.admit(ip).inspect_err(|why| {
            let refused_total = ctx.limits.note_refused(*why);
            ctx.metrics.refused(match why {
                Refusal::ConnectionsPerIp => Refused::MaxConnectionsPerIp,
                Refusal::RatePerIp => Refused::MaxAcceptRatePerIp,
                Refusal::Rate => Refused::MaxAcceptRate,
            });
            folded!(
                ctx.limits.log,
                LogKind::Refused,
                warn,
                %peer,
                limit = %why.key(),
                refused_total,
                "connection refused at accept: limit reached"
            );
        })
    }
}

/// Accepts until `closing` is cancelled; connections end when `shutdown` is.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    kind: Kind,
    ctx: Arc<ConnContext>,
    admission: Admission,
    closing: CancellationToken,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
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
        // A trusted proxy's WebSocket connections count against the address it forwards,
        // known after the handshake.
        let deferred = matches!(&kind, Kind::Ws(ws) if ws.is_trusted(peer.ip()));
        let admitted = if deferred {
            None
        } else {
            match admission.admit_logged(peer.ip(), &peer, &ctx) {
                Ok(admitted) => Some(admitted),
                // Closed at once: nothing is read from it, no task is spawned for it.
                Err(_) => continue,
            }
        };
        let Ok(permit) = admission.permits.clone().try_acquire_owned() else {
            let n = admission.refused.fetch_add(1, Ordering::Relaxed) + 1;
            ctx.metrics.refused(Refused::MaxConnections);
            if n.is_power_of_two() {
                let max_connections = admission.max_connections.load(Ordering::Relaxed);
                warn!(%peer, max_connections, refused_total = n, "limits.max_connections reached: connection closed");
            }
            drop(stream);
            continue;
        };
        ctx.metrics.sockets_accepted.fetch_add(1, Ordering::Relaxed);
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
                        run_connection(stream, peer, ctx, token).await;
                        drop(permit);
                        drop(admitted);
                    }
                    .instrument(span),
                );
            }
            Kind::Tls(tls) => {
                let span = info_span!("conn", %peer, tls = true, client_id = field::Empty);
                let tls = tls.clone();
                tracker.spawn(
                    async move {
                        run_tls_connection(stream, peer, tls, ctx, token).await;
                        drop(permit);
                        drop(admitted);
                    }
                    .instrument(span),
                );
            }
            Kind::Ws(acceptor) => {
                // Not instrumented here: `ws::serve` logs under the client's address, which
                // behind a trusted proxy is known after the handshake.
                let (acceptor, admission) = (acceptor.clone(), admission.clone());
                tracker.spawn(async move {
                    ws::serve(stream, peer, acceptor, admitted, admission, ctx, token).await;
                    drop(permit);
                });
            }
        }
    }
}
