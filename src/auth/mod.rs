//! Who may connect and what they may touch: the anonymous rule, Mosquitto password files
//! (`passwd`) and ACL files (`acl`), loaded into one immutable `Auth`.
//! L0: std, config, topic, and the hashing crates; nothing above. Invariants: an `Auth` is built
//! whole by `load` (every file checked, any problem an error naming the file and line) and never
//! changes: a reload builds a new one and swaps it whole. Sessions ask it; the broker never does.

pub(crate) mod acl;
pub(crate) mod passwd;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::warn;

use crate::config::{AuthConfig, PasswordFormat};
use crate::topic::ClientId;

pub(crate) use acl::ClientAcl;
pub(crate) use passwd::PasswordFile;

/// Bigger password or ACL files are refused: a file must not make start-up read without bound.
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Whether clients without a username may connect, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Anonymous {
    /// `allow_anonymous` is written in the configuration.
    Explicit(bool),
    /// Not written, and every listener is on a loopback address: allowed.
    LoopbackOnly,
    /// Not written, and this listener address is not loopback: refused (Mosquitto 2's rule:
    /// a broker reachable from other hosts does not accept anonymous clients unless told to).
    NotLoopback(SocketAddr),
}

impl Anonymous {
    /// The rule over every configured MQTT listener address (each transport's listener adds
    /// its address to the list).
    pub(crate) fn decide(explicit: Option<bool>, listeners: &[SocketAddr]) -> Anonymous {
        if let Some(allowed) = explicit {
            return Anonymous::Explicit(allowed);
        }
        // `to_canonical`: an IPv4-mapped IPv6 loopback (::ffff:127.0.0.1) is loopback too.
        match listeners
            .iter()
            .find(|a| !a.ip().to_canonical().is_loopback())
        {
            Some(addr) => Anonymous::NotLoopback(*addr),
            None => Anonymous::LoopbackOnly,
        }
    }

    pub(crate) fn allowed(self) -> bool {
        matches!(self, Anonymous::Explicit(true) | Anonymous::LoopbackOnly)
    }
}

impl std::fmt::Display for Anonymous {
    /// One sentence for the start-up log and `--check-config`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Anonymous::Explicit(true) => f.write_str("anonymous clients allowed ([auth] allow_anonymous = true)"),
            Anonymous::Explicit(false) => f.write_str("anonymous clients refused ([auth] allow_anonymous = false)"),
            Anonymous::LoopbackOnly => f.write_str(
                "anonymous clients allowed (every listener is on loopback and [auth] allow_anonymous is not set)",
            ),
            Anonymous::NotLoopback(addr) => write!(
                f,
                "anonymous clients refused: listener {addr} is not on loopback and [auth] allow_anonymous is not set (write allow_anonymous = true to accept them)"
            ),
        }
    }
}

/// A password or ACL file that cannot be used. The message includes the cause; `source()`
/// does not repeat it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    #[error(
        "cannot read {kind} {path}: {error}{}",
        crate::error::access_hint(error, path, "readable")
    )]
    Read {
        kind: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{kind} {path} is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { kind: &'static str, path: PathBuf },
    #[error("password file {path} is accessible by group or others (mode {mode:04o}): run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("password file {path} line {line}: {why}")]
    Password {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("acl file {path} line {line}: {why}")]
    Acl {
        path: PathBuf,
        line: usize,
        why: String,
    },
}

/// The authentication and authorization policy, loaded once (and again, whole, on reload).
#[derive(Debug)]
pub(crate) struct Auth {
    anonymous: Anonymous,
    passwords: Option<PasswordFile>,
    acl: Option<Arc<acl::Acl>>,
}

impl Auth {
    /// Loads every file `config` names; `listeners` are all configured MQTT listener
    /// addresses (for the anonymous rule). Warnings (plain-text passwords, patterns without
    /// `%c`/`%u`) are logged here, once.
    pub(crate) fn load(config: &AuthConfig, listeners: &[SocketAddr]) -> Result<Auth, AuthError> {
        let passwords = match &config.password_file {
            None => None,
            Some(path) => Some(load_passwords(path, config.password_format)?),
        };
        let acl = match &config.acl_file {
            None => None,
            Some(path) => Some(Arc::new(load_acl(path)?)),
        };
        Ok(Auth {
            anonymous: Anonymous::decide(config.allow_anonymous, listeners),
            passwords,
            acl,
        })
    }

    pub(crate) fn anonymous(&self) -> Anonymous {
        self.anonymous
    }

    pub(crate) fn has_password_file(&self) -> bool {
        self.passwords.is_some()
    }

    /// Whether a client presenting these credentials may connect; `None` when a password
    /// must be verified (slow by design: call `verify_password` off the async workers).
    pub(crate) fn quick_decision(&self, username: Option<&str>) -> Option<bool> {
        match (username, &self.passwords) {
            (None, _) => Some(self.anonymous.allowed()),
            (Some(_), Some(_)) => None,
            // A username with no password file to check it against: treated as anonymous.
            (Some(_), None) => Some(self.anonymous.allowed()),
        }
    }

    /// Verifies a username and password against the password file (false without one).
    /// CPU-heavy: run it on a blocking thread.
    pub(crate) fn verify_password(&self, username: &str, password: Option<&[u8]>) -> bool {
        match (&self.passwords, password) {
            (Some(p), Some(pw)) => p.verify(username, pw),
            // Mosquitto: a known user without a password is refused; cost the same as a check.
            (Some(p), None) => {
                let _ = p.verify(username, b"");
                false
            }
            (None, _) => false,
        }
    }

    /// The ACL view of one client, or `None` when no `acl_file` is set (everything allowed).
    pub(crate) fn client_acl(
        &self,
        client_id: &ClientId,
        username: Option<&str>,
    ) -> Option<ClientAcl> {
        self.acl
            .as_ref()
            .map(|acl| acl.for_client(client_id, username))
    }
}

/// Reads a file of at most `MAX_FILE_BYTES`.
fn read_bounded(kind: &'static str, path: &Path) -> Result<String, AuthError> {
    let read_err = |error| AuthError::Read {
        kind,
        path: path.to_owned(),
        error,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(AuthError::TooLarge {
            kind,
            path: path.to_owned(),
        });
    }
    check_private(kind, path, &meta)?;
    std::fs::read_to_string(path).map_err(read_err)
}

/// A password file must not be accessible by group or others (Mosquitto 2.1 warns and plans to
/// refuse; brokerd refuses now, naming the fix).
#[cfg(unix)]
fn check_private(
    kind: &'static str,
    path: &Path,
    meta: &std::fs::Metadata,
) -> Result<(), AuthError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    if kind == PASSWORD_FILE && mode & 0o077 != 0 {
        return Err(AuthError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &'static str, _: &Path, _: &std::fs::Metadata) -> Result<(), AuthError> {
    Ok(())
}

const PASSWORD_FILE: &str = "password file";
const ACL_FILE: &str = "acl file";

fn load_passwords(path: &Path, format: PasswordFormat) -> Result<PasswordFile, AuthError> {
    let text = read_bounded(PASSWORD_FILE, path)?;
    let format = match format {
        PasswordFormat::Hashed => passwd::Format::Hashed,
        PasswordFormat::Plaintext => passwd::Format::Plaintext,
    };
    let file = PasswordFile::parse(&text, format).map_err(|e| AuthError::Password {
        path: path.to_owned(),
        line: e.line,
        why: e.why,
    })?;
    if file.plaintext_entries > 0 {
        warn!(
            path = %path.display(),
            entries = file.plaintext_entries,
            "password file holds plain-text passwords ([auth] password_format = \"plaintext\"); hash them with `brokerd passwd FILE USER`"
        );
    }
    Ok(file)
}

fn load_acl(path: &Path) -> Result<acl::Acl, AuthError> {
    let text = read_bounded(ACL_FILE, path)?;
    let (acl, warnings) = acl::Acl::parse(&text).map_err(|e| AuthError::Acl {
        path: path.to_owned(),
        line: e.line,
        why: e.why,
    })?;
    for w in warnings {
        warn!(path = %path.display(), "acl file {w}");
    }
    Ok(acl)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// issue #9 item 4: no `allow_anonymous` in the file: allowed while every listener is on
    /// loopback, refused as soon as one is not (naming it); an explicit value always wins.
    #[test]
    fn anonymous_rule_over_every_listener_address() {
        let lo = addr("127.0.0.1:1883");
        let lo6 = addr("[::1]:1883");
        let mapped = addr("[::ffff:127.0.0.1]:1883");
        let any = addr("0.0.0.0:1883");
        let lan = addr("192.168.1.10:8883");
        assert_eq!(
            Anonymous::decide(None, &[lo, lo6, mapped]),
            Anonymous::LoopbackOnly
        );
        assert!(Anonymous::decide(None, &[lo]).allowed());
        assert_eq!(Anonymous::decide(None, &[any]), Anonymous::NotLoopback(any));
        assert_eq!(
            Anonymous::decide(None, &[lo, lan]),
            Anonymous::NotLoopback(lan)
        );
        assert!(!Anonymous::decide(None, &[lo, lan]).allowed());
        assert!(!Anonymous::decide(None, &[addr("[::]:1883")]).allowed());
        assert!(Anonymous::decide(Some(true), &[any]).allowed());
        assert!(!Anonymous::decide(Some(false), &[lo]).allowed());
        let shown = Anonymous::decide(None, &[any]).to_string();
        assert!(
            shown.contains("0.0.0.0:1883") && shown.contains("allow_anonymous = true"),
            "{shown}"
        );
    }

    /// issue #9 item 4: a configuration that binds a non-loopback address and does not write
    /// `allow_anonymous` refuses anonymous clients (and names no password file: nobody else).
    #[test]
    fn parsed_config_on_a_public_address_refuses_anonymous() {
        let c = crate::Config::parse("[listener]\nbind = \"0.0.0.0:1883\"\n", Path::new("b.toml"))
            .unwrap();
        let auth = Auth::load(&c.auth, &c.listener_addrs()).unwrap();
        assert_eq!(auth.quick_decision(None), Some(false));
        assert_eq!(auth.quick_decision(Some("u")), Some(false));
        let c = crate::Config::parse(
            "[listener]\nbind = \"0.0.0.0:1883\"\n[auth]\nallow_anonymous = true\n",
            Path::new("b.toml"),
        )
        .unwrap();
        let auth = Auth::load(&c.auth, &c.listener_addrs()).unwrap();
        assert_eq!(auth.quick_decision(None), Some(true));
        let auth = Auth::load(
            &crate::Config::default().auth,
            &crate::Config::default().listener_addrs(),
        )
        .unwrap();
        assert_eq!(auth.quick_decision(None), Some(true));
    }

    /// issue #9 items 3 and 4: the anonymous rule looks at the TLS listener too: a `[tls]`
    /// bound to a public address refuses anonymous clients while `[listener]` stays on
    /// loopback, and the `bind` of a disabled `[tls]` does not count.
    #[test]
    fn public_tls_listener_refuses_anonymous_too() {
        let tls = |enabled: bool| {
            format!(
                "[listener]\nbind = \"127.0.0.1:1883\"\n[tls]\nenabled = {enabled}\nbind = \"0.0.0.0:8883\"\ncert_file = \"c\"\nkey_file = \"k\"\n"
            )
        };
        let c = crate::Config::parse(&tls(true), Path::new("b.toml")).unwrap();
        let rule = Anonymous::decide(c.auth.allow_anonymous, &c.listener_addrs());
        assert_eq!(
            rule,
            Anonymous::NotLoopback("0.0.0.0:8883".parse().unwrap())
        );
        let auth = Auth::load(&c.auth, &c.listener_addrs()).unwrap();
        assert_eq!(auth.quick_decision(None), Some(false));
        let c = crate::Config::parse(&tls(false), Path::new("b.toml")).unwrap();
        let auth = Auth::load(&c.auth, &c.listener_addrs()).unwrap();
        assert_eq!(auth.quick_decision(None), Some(true));
    }

    /// issue #9 items 1 and 4: `allow_anonymous` absent is not `true` (the key is an Option),
    /// `password_format` must be "hashed" or "plaintext", and "plaintext" needs a password file.
    #[test]
    fn auth_keys_parse_strictly() {
        let parse = |t: &str| crate::Config::parse(t, Path::new("b.toml"));
        assert_eq!(parse("").unwrap().auth.allow_anonymous, None);
        assert_eq!(
            parse("[auth]\nallow_anonymous = true\n")
                .unwrap()
                .auth
                .allow_anonymous,
            Some(true)
        );
        let e = parse("[auth]\npassword_format = \"md5\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("password_format"), "{e}");
        let e = parse("[auth]\npassword_format = \"plaintext\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("auth.password_format") && e.contains("password_file"),
            "{e}"
        );
        let ok = parse(
            "[auth]\npassword_format = \"plaintext\"\npassword_file = \"p\"\nacl_file = \"a\"\n",
        );
        assert_eq!(ok.unwrap().auth.password_format, PasswordFormat::Plaintext);
    }

    /// issue #9 item 4: a password file readable by group or others is refused with the
    /// `chmod 600` that fixes it; 0600 and 0400 load.
    #[cfg(unix)]
    #[test]
    fn password_file_open_to_others_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        std::fs::write(&path, "").unwrap();
        let config = AuthConfig {
            password_file: Some(path.clone()),
            ..AuthConfig::default()
        };
        for mode in [0o644, 0o640, 0o604, 0o660, 0o606] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = Auth::load(&config, &[]).unwrap_err().to_string();
            assert!(
                e.contains(&format!("chmod 600 {}", path.display())),
                "{mode:o}: {e}"
            );
            assert!(e.contains(&format!("{mode:04o}")), "{e}");
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            Auth::load(&config, &[]).unwrap();
        }
    }
}
