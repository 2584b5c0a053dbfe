//! TLS (rustls, 1.2 and 1.3) over a TCP socket, driven by that socket's readiness like plain
//! TCP, and the acceptor that holds the listener's current certificate.
//! L1: tokio, rustls, `tls::certs` and `tls::identity`. Invariants: every buffer is rustls's own
//! and bounded (16 KiB of received plaintext, 64 KiB of records to send); a TLS error becomes an
//! error of the call that met it, never a panic; a reload swaps the whole server configuration
//! (one `Arc`) and leaves the connections that started with the old one as they are.

mod certs;
mod identity;

use std::future::Future;
use std::io::{self, IoSlice, Read, Write};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use bytes::BytesMut;
use rustls::{ConnectionCommon, ServerConfig, ServerConnection};
use tokio::io::{Interest, Ready};
use tokio::net::TcpStream;
use tracing::{error, info};

use super::{PeerIdentity, Transport};
use crate::config::TlsConfig;
pub(crate) use certs::TlsError;

/// Plaintext moved out of rustls per read call: bounds the zero-fill of the read buffer.
const MAX_PLAINTEXT_READ: usize = 16 * 1024;

/// A TLS connection whose handshake is complete.
pub(crate) struct Tls {
    tcp: TcpStream,
    /// Boxed: a `ServerConnection` is large, and only TLS connections pay for it.
    conn: Box<ServerConnection>,
    /// Decrypted bytes rustls holds that were not read yet.
    plaintext: usize,
}

/// The socket as the `Read`/`Write` rustls expects, without waiting: `WouldBlock` passes
/// through (and clears the socket's readiness, so `ready` then waits for the next event).
/// Shared with the client side (`tls_client`), as are the record helpers below: both sides
/// drive a rustls `ConnectionCommon` over a `TcpStream` the same way.
pub(super) struct Sock<'a>(pub(super) &'a TcpStream);

impl Read for Sock<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Sock<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes the records rustls has ready until they are all out or the socket is full.
pub(super) fn flush_records<D>(conn: &mut ConnectionCommon<D>, tcp: &TcpStream) -> io::Result<()> {
    while conn.wants_write() {
        match conn.write_tls(&mut Sock(tcp)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Handles the records read so far; returns how many decrypted bytes rustls now holds. On a TLS
/// error the alert rustls queued is sent (best effort, without waiting) so the peer learns why.
pub(super) fn process<D>(
    conn: &mut ConnectionCommon<D>,
    tcp: &TcpStream,
) -> Result<usize, rustls::Error> {
    match conn.process_new_packets() {
        Ok(state) => Ok(state.plaintext_bytes_to_read()),
        Err(e) => {
            let _ = flush_records(conn, tcp);
            Err(e)
        }
    }
}

/// Moves up to `available` decrypted bytes into the spare capacity of `buf`. With none
/// available, rustls says why: `WouldBlock` (it needs records), `Ok(0)` (close_notify) or
/// `UnexpectedEof` (TCP closed without it).
pub(super) fn read_plaintext<D>(
    conn: &mut ConnectionCommon<D>,
    buf: &mut BytesMut,
    available: usize,
) -> io::Result<usize> {
    if available == 0 {
        // A one-byte probe: had the count been short, the byte is kept, not lost.
        let mut probe = [0u8; 1];
        let n = conn.reader().read(&mut probe)?;
        buf.extend_from_slice(&probe[..n]);
        return Ok(n);
    }
    if buf.capacity() == buf.len() {
        buf.reserve(MAX_PLAINTEXT_READ);
    }
    let start = buf.len();
    let len = (buf.capacity() - start)
        .min(available)
        .min(MAX_PLAINTEXT_READ);
    // Zero-filled rather than read into uninitialised memory: no unsafe code, and only as many
    // bytes as are there to read.
    buf.resize(start + len, 0);
    let r = conn.reader().read(&mut buf[start..]);
    buf.truncate(start + r.as_ref().map_or(0, |n| *n));
    r
}

impl Transport for Tls {
    fn ready(&self, interest: Interest) -> impl Future<Output = io::Result<Ready>> + Send + '_ {
        // Records already decrypted (or a close_notify) wait inside rustls, not on the socket.
        let buffered = interest.is_readable() && !self.conn.wants_read();
        async move {
            if buffered {
                return Ok(Ready::READABLE);
            }
            self.tcp.ready(interest).await
        }
    }

    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            match read_plaintext(&mut self.conn, buf, self.plaintext) {
                Ok(n) => {
                    self.plaintext = self.plaintext.saturating_sub(n);
                    return Ok(n);
                }
                // rustls needs more records from the socket.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // TCP closed without close_notify: the end of the stream, as for plain TCP (the
                // session decides whether it cut a packet; MQTT has its own DISCONNECT).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            // At EOF (`Ok(0)`) the reader reports it on the next turn.
            self.conn.read_tls(&mut Sock(&self.tcp))?;
            self.plaintext = process(&mut self.conn, &self.tcp)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
    }

    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Records already made go first, so rustls has room for the new ones.
        flush_records(&mut self.conn, &self.tcp)?;
        let n = self.conn.writer().write(buf)?;
        flush_records(&mut self.conn, &self.tcp)?;
        if n == 0 && !buf.is_empty() {
            // rustls's buffer is full because the socket is (flush_records stopped on
            // WouldBlock): wait for writability like plain TCP.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn try_flush(&mut self) -> io::Result<()> {
        flush_records(&mut self.conn, &self.tcp)
    }

    fn has_buffered_output(&self) -> bool {
        self.conn.wants_write()
    }
}

/// Why a TLS handshake failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    /// The client broke TLS or was refused by it (unsupported version, bad certificate...).
    #[error("{0}")]
    Tls(rustls::Error),
    #[error("{0}")]
    Io(io::Error),
    #[error("connection closed during the TLS handshake")]
    Eof,
    /// Closed before sending anything (a port probe or a health check).
    #[error("connection closed before the TLS handshake")]
    Silent,
}

impl From<io::Error> for HandshakeError {
    fn from(e: io::Error) -> Self {
        HandshakeError::Io(e)
    }
}

/// A server configuration built from the files, not yet in use (see `TlsAcceptor::prepare`).
pub(crate) struct PreparedTls(Arc<ServerConfig>);

/// The TLS listener's server configuration, replaced whole by a reload.
#[derive(Clone)]
pub(crate) struct TlsAcceptor {
    inner: Arc<AcceptorInner>,
}

struct AcceptorInner {
    files: certs::Files,
    use_identity_as_username: bool,
    /// Read once per accepted connection, written by a reload: a plain lock is enough.
    current: RwLock<Arc<ServerConfig>>,
    watch: Mutex<certs::Watch>,
}

impl TlsAcceptor {
    /// Loads the certificate, key and (for mutual TLS) CA files of `[tls]`.
    pub(crate) fn load(config: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
        let files = certs::Files::from_config(config)?;
        let watch = certs::Watch::new(&files);
        let current = certs::build(&files)?;
        Ok(TlsAcceptor {
            inner: Arc::new(AcceptorInner {
                files,
                use_identity_as_username: config.use_identity_as_username,
                current: RwLock::new(current),
                watch: Mutex::new(watch),
            }),
        })
    }

    fn current(&self) -> Arc<ServerConfig> {
        self.inner
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs the server side of the handshake (the caller bounds it in time). Returns the
    /// connection and, with `use_identity_as_username`, what the client certificate says.
    pub(crate) async fn accept(
        &self,
        tcp: TcpStream,
    ) -> Result<(Tls, Option<PeerIdentity>), HandshakeError> {
        let mut conn =
            Box::new(ServerConnection::new(self.current()).map_err(HandshakeError::Tls)?);
        let (mut received, mut plaintext) = (false, 0);
        loop {
            // Handshake messages first (at the end: the last flight, TLS 1.3 tickets).
            while conn.wants_write() {
                match conn.write_tls(&mut Sock(&tcp)) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        tcp.ready(Interest::WRITABLE).await?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if !conn.is_handshaking() {
                break;
            }
            match conn.read_tls(&mut Sock(&tcp)) {
                Ok(0) if received => return Err(HandshakeError::Eof),
                Ok(0) => return Err(HandshakeError::Silent),
                Ok(_) => {
                    received = true;
                    // Application data may come with the client's last flight (its CONNECT).
                    plaintext = process(&mut conn, &tcp).map_err(HandshakeError::Tls)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tcp.ready(Interest::READABLE).await?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let identity = self
            .inner
            .use_identity_as_username
            .then(|| identity::from_certificates(conn.peer_certificates()));
        Ok((
            Tls {
                tcp,
                conn,
                plaintext,
            },
            identity,
        ))
    }

    /// Builds a new configuration from the files and swaps it in; on failure logs an error
    /// naming the file and keeps the current one. `trigger` says why, for the log.
    pub(crate) fn reload(&self, trigger: &'static str) {
        self.inner
            .watch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .mark_loaded(&self.inner.files);
        self.rebuild(trigger);
    }

    /// Reloads when a file changed and has then stayed the same for one more call (so a file
    /// still being written, or a certificate whose key is not written yet, is not loaded
    /// half-way). Called every second.
    pub(crate) fn reload_if_changed(&self) {
        let settled = self
            .inner
            .watch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .poll(&self.inner.files);
        if settled {
            self.rebuild("file change");
        }
    }

    /// Reads the files into a new server configuration without using it (the first half of a
    /// configuration reload, which swaps everything or nothing).
    pub(crate) fn prepare(&self) -> Result<PreparedTls, TlsError> {
        certs::build(&self.inner.files).map(PreparedTls)
    }

    /// Swaps in what `prepare` built: new connections use it.
    pub(crate) fn install(&self, prepared: PreparedTls, trigger: &'static str) {
        self.inner
            .watch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .mark_loaded(&self.inner.files);
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = prepared.0;
        info!(
            trigger,
            cert_file = %self.inner.files.cert.display(),
            "tls: certificate reloaded; new connections use it"
        );
    }

    fn rebuild(&self, trigger: &'static str) {
        match certs::build(&self.inner.files) {
            Ok(config) => {
                *self
                    .inner
                    .current
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = config;
                info!(
                    trigger,
                    cert_file = %self.inner.files.cert.display(),
                    "tls: certificate reloaded; new connections use it"
                );
            }
            Err(e) => error!(
                trigger,
                error = %e,
                "tls: reload failed; the previous certificate stays in use"
            ),
        }
    }
}
