//! The TLS listener's files: reading the PEM certificate chain, private key and client CA,
//! building a rustls server configuration from them, and noticing when they change.
//! L1: rustls and std::fs. Invariants: a configuration is built whole or not at all (a key
//! that does not belong to its certificate is refused here, not at the first handshake); every
//! error names the key and the file; files are read with a size bound.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::crypto::ring as provider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::TlsConfig;

/// Largest PEM file read (a CA bundle of a few hundred certificates fits).
const MAX_PEM_BYTES: u64 = 4 * 1024 * 1024;

/// A `[tls]` file that cannot be used. The message names the key and the file and includes
/// the cause; `source()` does not repeat it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("{key} is not set")]
    Missing { key: &'static str },
    #[error("{key} {}: {error}", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("{key} {}: larger than {MAX_PEM_BYTES} bytes", path.display())]
    TooLarge { key: &'static str, path: PathBuf },
    #[error("{key} {}: not valid PEM: {error}", path.display())]
    Pem {
        key: &'static str,
        path: PathBuf,
        error: pem::Error,
    },
    #[error("{key} {}: no certificate found (PEM \"BEGIN CERTIFICATE\")", path.display())]
    NoCertificate { key: &'static str, path: PathBuf },
    #[error(
        "tls.key_file {}: no private key found (PEM \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\")",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error(
        "tls.key_file {} is not the key of tls.cert_file {} (their public keys differ)",
        key.display(),
        cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("tls.ca_file {}: {error}", path.display())]
    Ca { path: PathBuf, error: String },
    #[error("tls.cert_file {} / tls.key_file {}: {error}", cert.display(), key.display())]
    Config {
        cert: PathBuf,
        key: PathBuf,
        error: rustls::Error,
    },
}

/// The files of `[tls]` and what they are for.
#[derive(Debug, Clone)]
pub(super) struct Files {
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    /// Set exactly when client certificates are required (the config checks that).
    pub(super) ca: Option<PathBuf>,
}

impl Files {
    pub(super) fn from_config(config: &TlsConfig) -> Result<Files, TlsError> {
        let cert = config.cert_file.clone().ok_or(TlsError::Missing {
            key: "tls.cert_file",
        })?;
        let key = config.key_file.clone().ok_or(TlsError::Missing {
            key: "tls.key_file",
        })?;
        let ca = match (&config.ca_file, config.require_certificate) {
            (Some(ca), true) => Some(ca.clone()),
            (None, true) => return Err(TlsError::Missing { key: "tls.ca_file" }),
            (_, false) => None,
        };
        Ok(Files { cert, key, ca })
    }

    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.ca.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }

    fn config_error(&self, error: rustls::Error) -> TlsError {
        match error {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                TlsError::KeyMismatch {
                    cert: self.cert.clone(),
                    key: self.key.clone(),
                }
            }
            error => TlsError::Config {
                cert: self.cert.clone(),
                key: self.key.clone(),
                error,
            },
        }
    }
}

/// The ring crypto provider. rustls 0.23.48 deprecates it for offering no post-quantum key
/// exchange (aws-lc-rs has one); it is our choice anyway: it builds with cargo alone (aws-lc-rs
/// needs cmake and a C toolchain), and ECDHE with X25519/P-256/P-384 is what MQTT clients
/// offer today.
#[allow(deprecated)]
fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(provider::default_provider())
}

/// Builds the server configuration: TLS 1.3 and 1.2 only, the certificate chain and its key
/// (rustls checks they belong together), and with `ca` a verifier that requires a client
/// certificate signed by it.
pub(super) fn build(files: &Files) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_certs("tls.cert_file", &files.cert)?;
    let key = read_key(&files.key)?;
    let provider = ring_provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| files.config_error(e))?;
    let builder = match &files.ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs("tls.ca_file", ca)? {
                roots.add(cert).map_err(|e| TlsError::Ca {
                    path: ca.clone(),
                    error: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Ca {
                    path: ca.clone(),
                    error: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| files.config_error(e))?;
    Ok(Arc::new(config))
}

/// Reads a file of at most `MAX_PEM_BYTES`.
fn read_bounded(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let read = |error| TlsError::Read {
        key,
        path: path.to_owned(),
        error,
    };
    let mut data = Vec::new();
    File::open(path)
        .map_err(read)?
        .take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(read)?;
    if data.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge {
            key,
            path: path.to_owned(),
        });
    }
    Ok(data)
}

/// Every certificate of a PEM file, in order; at least one.
fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = read_bounded(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Pem {
            key,
            path: path.to_owned(),
            error,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            key,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = read_bounded("tls.key_file", path)?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|error| match error {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_owned(),
        },
        error => TlsError::Pem {
            key: "tls.key_file",
            path: path.to_owned(),
            error,
        },
    })
}

/// What identifies a version of a file without reading it: size, modification time, inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode,
    })
}

fn stamps(files: &Files) -> Vec<Option<Stamp>> {
    files.paths().map(stamp).collect()
}

/// Change detection for the files: what was last loaded (or tried) and what the last poll saw.
#[derive(Debug)]
pub(super) struct Watch {
    loaded: Vec<Option<Stamp>>,
    seen: Vec<Option<Stamp>>,
}

impl Watch {
    /// Call before the first `build`: a file that changes while it is read is seen as changed.
    pub(super) fn new(files: &Files) -> Watch {
        let now = stamps(files);
        Watch {
            loaded: now.clone(),
            seen: now,
        }
    }

    /// Records the files' current versions as loaded (a reload is about to read them).
    pub(super) fn mark_loaded(&mut self, files: &Files) {
        self.loaded = stamps(files);
        self.seen = self.loaded.clone();
    }

    /// Whether the files differ from what was loaded and have not changed since the previous
    /// poll; if so they are recorded as loaded, so a bad file is reported once, not every poll.
    pub(super) fn poll(&mut self, files: &Files) -> bool {
        let now = stamps(files);
        let settled = now != self.loaded && now == self.seen;
        self.seen = now;
        if settled {
            self.loaded = self.seen.clone();
        }
        settled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Files {
        Files {
            cert: dir.join("c.pem"),
            key: dir.join("k.pem"),
            ca: None,
        }
    }

    /// issue #9 item 3: a changed file is reported once it has stayed the same for one more
    /// poll, and only once; a reload request marks the current files as loaded.
    #[test]
    fn a_change_is_reported_once_it_has_settled() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        std::fs::write(&f.cert, "one").unwrap();
        std::fs::write(&f.key, "key").unwrap();
        let mut watch = Watch::new(&f);
        assert!(!watch.poll(&f), "nothing changed");
        std::fs::write(&f.cert, "two, longer").unwrap();
        assert!(!watch.poll(&f), "just changed: not settled yet");
        assert!(watch.poll(&f), "settled");
        assert!(!watch.poll(&f), "already reported");
        // A file that disappears is a change too (its reload then fails and is logged).
        std::fs::remove_file(&f.key).unwrap();
        assert!(!watch.poll(&f));
        assert!(watch.poll(&f));
        std::fs::write(&f.key, "key").unwrap();
        watch.mark_loaded(&f);
        assert!(!watch.poll(&f) && !watch.poll(&f), "loaded by request");
    }
}
