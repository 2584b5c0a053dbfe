//! The byte streams under the session loop: plain TCP, TLS and WebSocket behind one `Transport`.
//! L1: tokio, rustls and L0 only; nothing above it. Invariants: only `ready` waits, every other
//! call returns at once (`WouldBlock` when it can do nothing now); a transport never holds a
//! whole MQTT packet of its own, it only moves bytes into and out of the session's buffers;
//! plain TCP is the bare `TcpStream` (no buffer, no box), so an idle connection costs nothing more.

pub(crate) mod tcp;
pub(crate) mod tls;
pub(crate) mod tls_client;
pub(crate) mod ws;

use std::future::Future;
use std::io;

use bytes::BytesMut;
use tokio::io::{Interest, Ready};

pub(crate) use tcp::Tcp;
pub(crate) use tls::{HandshakeError, TlsAcceptor};
pub(crate) use tls_client::TlsClient;
pub(crate) use ws::WsAcceptor;

/// Who the transport says the client is, handed to the CONNECT phase. Only a TLS listener with
/// `use_identity_as_username` produces one; elsewhere the CONNECT's credentials decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PeerIdentity {
    /// The verified client certificate's subject CN: it is the client's username, and the
    /// CONNECT's username and password are not used for authentication.
    CertificateCn(String),
    /// The certificate has no CN usable as an MQTT username (none, not UTF-8, a control
    /// character, empty): refused with CONNACK 0x04, as Mosquitto does.
    Unusable,
}

/// A connection's byte stream, as the session loop drives it: wait for readiness, then read and
/// write without waiting. TLS implements it over the same readiness of its TCP socket.
pub(crate) trait Transport: Send + Sync + 'static {
    /// Resolves when an operation of `interest` may make progress, or the socket is closed or
    /// failed (the next read or write then says which). Cancel-safe: holds no data.
    fn ready(&self, interest: Interest) -> impl Future<Output = io::Result<Ready>> + Send + '_;

    /// Reads into the spare capacity of `buf` (the caller reserves it) without waiting. `Ok(0)`
    /// is the end of the stream; `WouldBlock` means nothing is available now.
    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize>;

    /// Takes bytes from the front of `buf` without waiting; returns how many it took (they are
    /// on the socket, or buffered by the transport until `try_flush`). `WouldBlock` means it can
    /// take none now.
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize>;

    /// Writes what the transport itself buffered (TLS records), without waiting. Stopping
    /// because the socket is full is not an error: `has_buffered_output` stays true.
    fn try_flush(&mut self) -> io::Result<()>;

    /// Whether bytes taken by `try_write` (or produced by the transport, such as a TLS alert)
    /// still wait to go out on the socket.
    fn has_buffered_output(&self) -> bool;

    /// Says why the broker ends the stream, before `close`: a WebSocket queues its close frame
    /// with the matching status (unless one was already queued, answering the client's close
    /// or refusing its frames). Nothing for TCP and TLS.
    fn end(&mut self, _why: Ending) {}

    /// Ends the stream as its protocol asks, bounded in time, after the session is over (the
    /// socket closes when the transport is dropped). Nothing for TCP and TLS; a WebSocket whose
    /// close frame was queued (by `end`, the client's close, or refused frames) sends it and
    /// waits briefly for the client's end, so that the close frame is not lost to a reset.
    fn close(&mut self) -> impl Future<Output = ()> + Send + '_ {
        std::future::ready(())
    }
}

/// Why the broker ends a connection, as far as the transport's own close tells the client
/// (WebSocket close status codes, RFC 6455 7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// A normal end: the client's DISCONNECT, a takeover by a new connection with the same
    /// client id, a keep-alive timeout, a refused CONNECT (1000).
    Normal,
    /// The broker is shutting down (1001).
    GoingAway,
    /// The client broke a rule of MQTT (1002).
    ProtocolError,
    /// Refused by a limit or by authentication: `limits.connect_timeout_ms`, a refused login
    /// or client id (1008).
    PolicyViolation,
    /// The broker cannot serve the connection (its store is failing) (1011).
    InternalError,
    /// The client's TCP is gone or failed: no close frame can reach it, none is sent.
    Abort,
}
