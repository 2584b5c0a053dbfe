//! Who may connect: anonymous access and an optional `username:password` file.
//! L3: std only. Invariant: a refused client gets CONNACK 0x05 and nothing else is processed.

use std::collections::HashMap;
use std::path::Path;

use crate::config::AuthConfig;

/// The authentication policy, loaded once at start.
#[derive(Debug, Default)]
pub(crate) struct Auth {
    allow_anonymous: bool,
    /// username -> password, when `auth.password_file` is set.
    passwords: Option<HashMap<String, Vec<u8>>>,
}

/// A password file that could not be used. The message includes the cause; `source()` does
/// not repeat it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("cannot read password file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("password file {path} line {line}: expected \"username:password\"")]
    Format { path: String, line: usize },
}

impl Auth {
    pub(crate) fn load(config: &AuthConfig) -> Result<Auth, AuthError> {
        let passwords = match &config.password_file {
            None => None,
            Some(path) => Some(read_password_file(path)?),
        };
        Ok(Auth {
            allow_anonymous: config.allow_anonymous,
            passwords,
        })
    }

    /// Whether a client presenting these credentials may connect.
    pub(crate) fn permits(&self, username: Option<&str>, password: Option<&[u8]>) -> bool {
        match (username, &self.passwords) {
            (None, _) => self.allow_anonymous,
            (Some(user), Some(table)) => match (table.get(user), password) {
                (Some(expected), Some(given)) => constant_time_eq(expected, given),
                _ => false,
            },
            // A username with no password file to check it against: treated as anonymous.
            (Some(_), None) => self.allow_anonymous,
        }
    }
}

fn read_password_file(path: &Path) -> Result<HashMap<String, Vec<u8>>, AuthError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| AuthError::Read {
        path: shown.clone(),
        error,
    })?;
    let mut table = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (user, pass) = line.split_once(':').ok_or(AuthError::Format {
            path: shown.clone(),
            line: i + 1,
        })?;
        table.insert(user.to_owned(), pass.as_bytes().to_vec());
    }
    Ok(table)
}

/// Compares without an early exit, so timing does not reveal a matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_policy_and_password_table() {
        let open = Auth {
            allow_anonymous: true,
            passwords: None,
        };
        assert!(open.permits(None, None));
        let closed = Auth {
            allow_anonymous: false,
            passwords: Some(HashMap::from([("u".to_owned(), b"p".to_vec())])),
        };
        assert!(!closed.permits(None, None));
        assert!(closed.permits(Some("u"), Some(b"p")));
        assert!(!closed.permits(Some("u"), Some(b"q")));
        assert!(!closed.permits(Some("u"), None));
        assert!(!closed.permits(Some("x"), Some(b"p")));
    }
}
