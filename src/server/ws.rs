//! How a WebSocket connection starts: the HTTP upgrade, the client's address (forwarded by a
//! trusted proxy or the TCP peer's), admission by that address, then the one session loop.
//! L4: the WebSocket transport, the session layer and the shared `Admission`. Invariants:
//! `limits.connect_timeout_ms` bounds the handshake and CONNECT together; a refused handshake
//! is answered (HTTP status) and logged once at warn with its reason, folded like the other
//! connection lines; every line after the handshake carries the client's address as `peer`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, field, info_span, Instrument, Span};

use super::Admission;
use crate::limits::accept::Admitted;
use crate::limits::log_fold::{folded, Kind as LogKind};
use crate::session::{run_upgraded, ConnContext};
use crate::transport::ws::HandshakeError;
use crate::transport::ws::Ws;
use crate::transport::WsAcceptor;

/// Serves one accepted connection of the WebSocket listener from `peer`. `admitted` is `None`
/// when `peer` is a trusted proxy: the client is then admitted here, by its forwarded address.
pub(super) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: WsAcceptor,
    admitted: Option<Admitted>,
    admission: Admission,
    ctx: Arc<ConnContext>,
    shutdown: CancellationToken,
) {
    let deadline = Instant::now() + ctx.connect_timeout;
    // Boxed, like the TLS handshake: its state (and its span) is freed before the session
    // loop runs, so an idle WebSocket connection keeps only what a TCP one keeps, plus `Ws`.
    let upgraded = Box::pin(upgrade(
        stream,
        peer,
        acceptor,
        admitted,
        admission,
        ctx.clone(),
        shutdown.clone(),
        deadline,
    ));
    let Some((transport, client, span, admitted)) = upgraded.await else {
        return;
    };
    run_upgraded(transport, client, deadline, ctx, shutdown)
        .instrument(span)
        .await;
    drop(admitted);
}

/// The handshake up to the 101: returns the connection, the client's address, the span its
/// session runs in and its admission; `None` when it ended here (answered and logged).
#[allow(clippy::too_many_arguments)] // the accept loop's state, passed through once
async fn upgrade(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: WsAcceptor,
    admitted: Option<Admitted>,
    admission: Admission,
    ctx: Arc<ConnContext>,
    shutdown: CancellationToken,
    deadline: Instant,
) -> Option<(Ws, SocketAddr, Span, Admitted)> {
    let _ = stream.set_nodelay(true);
    let hs_span = info_span!("conn", %peer, ws = true);
    let log = &ctx.limits.log;
    let request = tokio::select! {
        _ = shutdown.cancelled() => return None,
        r = timeout_at(deadline, acceptor.read_request(stream, peer)).instrument(hs_span.clone()) => r,
    };
    let upgrade = match request {
        Ok(Ok(upgrade)) => upgrade,
        Err(_) => {
            folded!(
                log,
                LogKind::Disconnected,
                info,
                parent: &hs_span,
                "closed: WebSocket handshake not done within limits.connect_timeout_ms"
            );
            return None;
        }
        Ok(Err(HandshakeError::Refused { status, reason })) => {
            folded!(
                log,
                LogKind::ProtocolError,
                warn,
                parent: &hs_span,
                status,
                reason,
                "WebSocket handshake refused"
            );
            return None;
        }
        Ok(Err(HandshakeError::Silent)) => {
            debug!(parent: &hs_span, "closed before the WebSocket handshake");
            return None;
        }
        Ok(Err(e)) => {
            folded!(log, LogKind::Disconnected, info, parent: &hs_span, error = %e, "WebSocket handshake failed: closed");
            return None;
        }
    };
    drop(hs_span);
    let client_ip = upgrade.client();
    // Behind a proxy the client's port is unknown: the span shows the address alone.
    let (client, span) = if upgrade.forwarded() {
        let span = info_span!("conn", peer = %client_ip, proxy = %peer, ws = true, client_id = field::Empty);
        (SocketAddr::new(client_ip, 0), span)
    } else {
        let span = info_span!("conn", %peer, ws = true, client_id = field::Empty);
        (peer, span)
    };
    let admitted = match admitted {
        Some(admitted) => admitted,
        None => match admission.admit_logged(client_ip, &Shown(client_ip, peer), &ctx) {
            Ok(admitted) => admitted,
            Err(why) => {
                let _ = timeout_at(deadline, upgrade.refuse_limited(why.key())).await;
                return None;
            }
        },
    };
    debug!(parent: &span, protocol = upgrade.protocol(), "websocket upgrade accepted");
    let transport = match timeout_at(deadline, upgrade.accept()).await {
        Ok(Ok(transport)) => transport,
        Ok(Err(e)) => {
            folded!(log, LogKind::Disconnected, info, parent: &span, error = %e, "WebSocket handshake failed: closed");
            return None;
        }
        Err(_) => {
            folded!(
                log,
                LogKind::Disconnected,
                info,
                parent: &span,
                "closed: WebSocket handshake not done within limits.connect_timeout_ms"
            );
            return None;
        }
    };
    Some((transport, client, span, admitted))
}

/// A forwarded client's address with the proxy it came through, for the refusal line.
struct Shown(IpAddr, SocketAddr);

impl std::fmt::Display for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (via {})", self.0, self.1)
    }
}
