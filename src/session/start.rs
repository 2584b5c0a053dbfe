//! How a connection starts, per listener: plain TCP goes straight to CONNECT, TLS completes its
//! handshake first; then both run the one session loop (`Connection<T>`, any `Transport`).
//! L3: the transports and the CONNECT phase. Invariants: `limits.connect_timeout_ms` bounds
//! everything before CONNACK (the TLS handshake included); a failed handshake is one log line,
//! folded like the other connection lines (`limits::log_fold`); what the task keeps while a
//! connection idles is the session loop, not the start-up state.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{connect, ConnContext};
use crate::limits::log_fold::{folded, Kind};
use crate::transport::{HandshakeError, PeerIdentity, Tcp, TlsAcceptor, Transport};

/// Serves one accepted plain TCP connection from `peer` until it ends. Never panics on client
/// input.
pub(crate) fn run_connection(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ConnContext>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send {
    let _ = stream.set_nodelay(true);
    let deadline = Instant::now() + ctx.connect_timeout;
    serve(Tcp(stream), peer, None, deadline, ctx, shutdown)
}

/// Serves one accepted connection of the TLS listener: the handshake, then the same session as
/// plain TCP. `limits.connect_timeout_ms` bounds the handshake and CONNECT together.
pub(crate) async fn run_tls_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: TlsAcceptor,
    ctx: Arc<ConnContext>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let deadline = Instant::now() + ctx.connect_timeout;
    // Boxed like the CONNECT phase: its state is freed before the session loop runs.
    let accepted = tokio::select! {
        _ = shutdown.cancelled() => return,
        r = timeout_at(deadline, Box::pin(tls.accept(stream))) => r,
    };
    // One line per failed handshake, never per record; folded like the other connection lines
    // above limits.max_conn_log_lines_per_s, so a handshake flood cannot drive the log.
    let log = &ctx.limits.log;
    let (transport, identity) = match accepted {
        Ok(Ok(accepted)) => accepted,
        Err(_) => {
            folded!(
                log,
                Kind::Disconnected,
                info,
                "closed: TLS handshake not done within limits.connect_timeout_ms"
            );
            return;
        }
        // A TLS error (a refused certificate or version, not TLS at all) breaks the protocol.
        Ok(Err(HandshakeError::Tls(e))) => {
            folded!(log, Kind::ProtocolError, warn, error = %e, "TLS handshake failed: closed");
            return;
        }
        // Like a plain connection closed before CONNECT.
        Ok(Err(HandshakeError::Silent)) => {
            debug!("closed before the TLS handshake");
            return;
        }
        Ok(Err(e)) => {
            folded!(log, Kind::Disconnected, info, error = %e, "TLS handshake failed: closed");
            return;
        }
    };
    serve(transport, peer, identity, deadline, ctx, shutdown).await;
}

/// Serves a connection whose transport a listener already set up (a WebSocket after its
/// upgrade): the same CONNECT phase and session loop, by `deadline`. `peer` is the client's
/// address (behind a trusted proxy, the forwarded one).
pub(crate) fn run_upgraded<T: Transport>(
    transport: T,
    peer: SocketAddr,
    deadline: Instant,
    ctx: Arc<ConnContext>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send {
    serve(transport, peer, None, deadline, ctx, shutdown)
}

/// One connection over any transport: CONNECT (by `deadline`), the session loop, the end.
/// `peer` is the client's address (the login's refusal delay counts per address).
/// Not an `async fn`: the CONNECT phase (which owns the transport until the client is
/// connected) is boxed before the returned future exists, so that future, which an idle
/// connection keeps for its whole life, holds only the session loop.
fn serve<T: Transport>(
    transport: T,
    peer: SocketAddr,
    identity: Option<PeerIdentity>,
    deadline: Instant,
    ctx: Arc<ConnContext>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send {
    let connect = Box::pin(connect::handshake(
        transport,
        peer,
        identity,
        deadline,
        ctx,
        shutdown.clone(),
    ));
    async move {
        let Some(mut conn) = connect.await else {
            return;
        };
        let reason = conn.serve(&shutdown).await;
        Box::pin(conn.finish(reason)).await;
    }
}
