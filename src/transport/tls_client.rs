//! TLS to a remote broker (a bridge's link): a rustls client connection over a `TcpStream`,
//! driven like the listener's `Tls` (readiness of the socket, then reads and writes that never
//! wait). L1: tokio, rustls, std::fs. Invariants: TLS 1.2/1.3 only; the server is verified
//! against `ca_file` and the host name of its address; files are read with a size bound and
//! every error names the key and the file.

use std::future::Future;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use bytes::BytesMut;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use tokio::io::{Interest, Ready};
use tokio::net::TcpStream;

use super::tls::{flush_records, process, read_plaintext, Sock};
use super::Transport;

/// PEM files larger than this are refused (a certificate chain is a few KiB).
const MAX_PEM_BYTES: u64 = 1 << 20;

fn read_pem(key: &str, path: &Path) -> Result<Vec<u8>, String> {
    let mut data = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM_BYTES + 1).read_to_end(&mut data))
        .map_err(|e| format!("{key} {}: {e}", path.display()))?;
    if data.len() as u64 > MAX_PEM_BYTES {
        return Err(format!("{key} {}: larger than 1 MiB", path.display()));
    }
    Ok(data)
}

fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let data = read_pem(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{key} {}: no certificate", path.display()));
    }
    Ok(certs)
}

/// The client configuration of a bridge: servers verified against `ca_file`; with
/// `cert_file` and `key_file`, a client certificate for mutual TLS. Errors name `key_prefix`
/// plus the key (e.g. `bridge[cloud].ca_file`) and the file.
pub(crate) fn client_config(
    key_prefix: &str,
    ca_file: &Path,
    cert_and_key: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, String> {
    let ca_key = format!("{key_prefix}.ca_file");
    let mut roots = RootCertStore::empty();
    for cert in read_certs(&ca_key, ca_file)? {
        roots
            .add(cert)
            .map_err(|e| format!("{ca_key} {}: {e}", ca_file.display()))?;
    }
    #[allow(deprecated)] // ring, as the listener (see transport/tls/certs.rs)
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("{key_prefix}: {e}"))?
        .with_root_certificates(roots);
    let config = match cert_and_key {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let cert_key = format!("{key_prefix}.cert_file");
            let key_key = format!("{key_prefix}.key_file");
            let chain = read_certs(&cert_key, cert)?;
            let data = read_pem(&key_key, key)?;
            let private = PrivateKeyDer::from_pem_slice(&data)
                .map_err(|e| format!("{key_key} {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| format!("{cert_key} {}: {e}", cert.display()))?
        }
    };
    Ok(Arc::new(config))
}

/// A TLS client connection.
pub(crate) struct TlsClient {
    tcp: TcpStream,
    conn: Box<ClientConnection>,
    /// Plaintext bytes rustls holds that were not read yet.
    plaintext: usize,
}

/// A TLS error as the `io::Error` the link reports (the alert was sent by `process`).
fn invalid_data(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsClient {
    /// The TLS handshake on `tcp` with `server_name` (a host name or an IP address).
    pub(crate) async fn connect(
        tcp: TcpStream,
        config: Arc<ClientConfig>,
        server_name: &str,
    ) -> io::Result<TlsClient> {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut conn = Box::new(
            ClientConnection::new(config, name)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
        );
        let mut plaintext = 0;
        loop {
            while conn.wants_write() {
                match conn.write_tls(&mut Sock(&tcp)) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        tcp.ready(Interest::WRITABLE).await?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if !conn.is_handshaking() {
                break;
            }
            match conn.read_tls(&mut Sock(&tcp)) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => plaintext = process(&mut conn, &tcp).map_err(invalid_data)?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tcp.ready(Interest::READABLE).await?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(TlsClient {
            tcp,
            conn,
            plaintext,
        })
    }
}

impl Transport for TlsClient {
    fn ready(&self, interest: Interest) -> impl Future<Output = io::Result<Ready>> + Send + '_ {
        // Plaintext rustls already holds gets no socket readiness.
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
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The socket closed without close_notify: the end of the stream here too.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            // Nothing decrypted is waiting: take records from the socket (`WouldBlock` ends
            // the call when it has none).
            self.conn.read_tls(&mut Sock(&self.tcp))?;
            self.plaintext = process(&mut self.conn, &self.tcp).map_err(invalid_data)?;
        }
    }

    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        flush_records(&mut self.conn, &self.tcp)?;
        let n = self.conn.writer().write(buf)?;
        flush_records(&mut self.conn, &self.tcp)?;
        if n == 0 && !buf.is_empty() {
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
