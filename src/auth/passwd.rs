//! Mosquitto password files: one `username:hash` line per user, as `mosquitto_passwd` writes
//! them, and the `$7$` entries `brokerd passwd` writes.
//! L0: std, ring, subtle, base64, argon2. Invariants: a `PasswordFile` is immutable once parsed;
//! a line is a known hash or (only with `password_format = "plaintext"`) a plain-text password,
//! anything else is an error naming its line, never a password; no error or log repeats a
//! password or a hash; verification compares in constant time, costs about the same for an
//! unknown user, and is CPU-heavy by design, so callers run it off the async workers.

use std::collections::HashMap;
use std::io::Write as _;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use base64::alphabet::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use ring::rand::SecureRandom as _;
use subtle::ConstantTimeEq as _;

/// Iterations of the `$7$` entries `brokerd passwd` writes by default: 210,000, OWASP's 2023
/// figure for PBKDF2-HMAC-SHA512 and what Mosquitto 2.1 writes for `-H sha512-pbkdf2` (2.0 wrote
/// 101). One verification costs about 0.12 s of one core here (README "Users and passwords");
/// `--iterations` trades that against the login rate, within `MIN_NEW_ITERATIONS..=
/// MAX_PBKDF2_ITERATIONS`.
pub(crate) const NEW_ITERATIONS: u32 = 210_000;
pub(crate) const MIN_NEW_ITERATIONS: u32 = 1_000;
/// Salt bytes of new entries: 64, as Mosquitto 2.1 ("Password salts are now 64 bytes long").
pub(crate) const NEW_SALT_BYTES: usize = 64;

/// Bounds on what a file may ask one login to cost: a larger figure is refused at start-up
/// (a typo in an iteration count must not turn every login into minutes of CPU).
pub(crate) const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;
/// Argon2 memory in KiB (Mosquitto 2.1 uses 47,104); each running verification holds it.
pub(crate) const MAX_ARGON2_MEMORY_KIB: u32 = 262_144;
pub(crate) const MAX_ARGON2_PASSES: u32 = 64;
pub(crate) const MAX_ARGON2_LANES: u32 = 64;
/// Salt and hash sizes accepted (bytes); SHA-512 and PBKDF2 hashes are exactly 64.
const MAX_SALT_BYTES: usize = 1024;
const MAX_ARGON2_HASH_BYTES: usize = 1024;
/// MQTT strings and passwords are at most 65,535 bytes; Mosquitto refuses longer lines too.
const MAX_FIELD_BYTES: usize = 65_535;

/// Mosquitto writes standard base64 with padding (OpenSSL); argon2's PHC strings drop it.
/// Either is accepted on input.
const B64: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// How the lines of a password file are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Only hashes: `$6$`, `$7$`, `$argon2id$`.
    Hashed,
    /// Hashes as above, and any other line's text after the first `:` is a plain-text password
    /// (to migrate an old file user by user with `brokerd passwd`).
    Plaintext,
}

/// One user's stored secret, in the schemes Mosquitto reads (`mosquitto_pw_decode`,
/// libcommon/password_common.c of Mosquitto 2.1; 2.0 has the first two).
#[derive(Clone)]
enum Secret {
    /// `$6$SALT$HASH`: SHA-512 of the password then the salt (Mosquitto 1.x).
    Sha512 { salt: Box<[u8]>, hash: Box<[u8]> },
    /// `$7$ITERATIONS$SALT$HASH`: PBKDF2-HMAC-SHA512 with a 64-byte output (Mosquitto 2.0).
    /// Mosquitto itself reads only 12- or 64-byte salts; any length is accepted here.
    Pbkdf2 {
        iterations: NonZeroU32,
        salt: Box<[u8]>,
        hash: Box<[u8]>,
    },
    /// `$argon2id$v=19$m=M,t=T,p=P$SALT$HASH`, the encoded string of libargon2 that Mosquitto
    /// 2.1 stores as is (its internal type number for it is 8; no `$8$` prefix is ever written).
    Argon2id {
        version: Version,
        params: Params,
        salt: Box<[u8]>,
        hash: Box<[u8]>,
    },
    /// A plain-text password (only with `Format::Plaintext`).
    Plain(Box<[u8]>),
}

/// Never shows the secret.
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.scheme())
    }
}

impl Secret {
    fn scheme(&self) -> &'static str {
        match self {
            Secret::Sha512 { .. } => "$6$",
            Secret::Pbkdf2 { .. } => "$7$",
            Secret::Argon2id { .. } => "$argon2id$",
            Secret::Plain(_) => "plaintext",
        }
    }

    /// Whether `password` is this secret's password; constant-time comparison.
    fn verify(&self, password: &[u8]) -> bool {
        match self {
            Secret::Sha512 { salt, hash } => {
                let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
                ctx.update(password);
                ctx.update(salt);
                bool::from(ctx.finish().as_ref().ct_eq(hash))
            }
            // ring compares in constant time.
            Secret::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => ring::pbkdf2::verify(
                ring::pbkdf2::PBKDF2_HMAC_SHA512,
                *iterations,
                salt,
                password,
                hash,
            )
            .is_ok(),
            Secret::Argon2id {
                version,
                params,
                salt,
                hash,
            } => {
                let mut out = vec![0u8; hash.len()];
                Argon2::new(Algorithm::Argon2id, *version, params.clone())
                    .hash_password_into(password, salt, &mut out)
                    .is_ok()
                    && bool::from(out.ct_eq(hash))
            }
            Secret::Plain(p) => bool::from(p.ct_eq(password)),
        }
    }

    /// Parses the text after `user:`. The error says what is wrong without repeating the text.
    fn parse(text: &str, format: Format) -> Result<Secret, String> {
        if let Some(rest) = text.strip_prefix("$6$") {
            let [salt, hash] = fields(rest, "$6$SALT$HASH")?;
            return Ok(Secret::Sha512 {
                salt: salt_bytes(salt)?,
                hash: sha_hash(hash, "$6$")?,
            });
        }
        if let Some(rest) = text.strip_prefix("$7$") {
            let [iterations, salt, hash] = fields(rest, "$7$ITERATIONS$SALT$HASH")?;
            let iterations = iterations
                .parse::<u32>()
                .ok()
                .and_then(NonZeroU32::new)
                .filter(|n| n.get() <= MAX_PBKDF2_ITERATIONS)
                .ok_or_else(|| {
                    format!("$7$ iteration count must be 1..={MAX_PBKDF2_ITERATIONS}")
                })?;
            return Ok(Secret::Pbkdf2 {
                iterations,
                salt: salt_bytes(salt)?,
                hash: sha_hash(hash, "$7$")?,
            });
        }
        if let Some(rest) = text.strip_prefix("$argon2id$") {
            return argon2id(rest);
        }
        if format == Format::Plaintext {
            return Ok(Secret::Plain(text.as_bytes().into()));
        }
        let scheme = text
            .strip_prefix('$')
            .and_then(|r| r.split_once('$'))
            .map(|(id, _)| id)
            .filter(|id| id.len() <= 16 && id.bytes().all(|b| b.is_ascii_alphanumeric()));
        Err(match scheme {
            Some(id) => format!(
                "unknown hash scheme ${id}$ (known: $6$, $7$, $argon2id$, as Mosquitto writes them)"
            ),
            None => "not a Mosquitto password hash (a plain-text password? hash it with \
                 `brokerd passwd FILE USER`, or set [auth] password_format = \"plaintext\")"
                .to_owned(),
        })
    }
}

/// Splits `$`-separated fields; exactly `N` of them, each non-empty.
fn fields<'a, const N: usize>(s: &'a str, shape: &str) -> Result<[&'a str; N], String> {
    let mut out = [""; N];
    let mut parts = s.split('$');
    for slot in &mut out {
        match parts.next() {
            Some(p) if !p.is_empty() => *slot = p,
            _ => return Err(format!("expected {shape}")),
        }
    }
    if parts.next().is_some() {
        return Err(format!("expected {shape}"));
    }
    Ok(out)
}

fn salt_bytes(b64: &str) -> Result<Box<[u8]>, String> {
    match B64.decode(b64) {
        Ok(s) if !s.is_empty() && s.len() <= MAX_SALT_BYTES => Ok(s.into()),
        Ok(_) => Err(format!("salt must be 1..={MAX_SALT_BYTES} bytes")),
        Err(_) => Err("salt is not base64".to_owned()),
    }
}

/// A SHA-512 or PBKDF2-HMAC-SHA512 hash: 64 bytes, as Mosquitto requires.
fn sha_hash(b64: &str, scheme: &str) -> Result<Box<[u8]>, String> {
    match B64.decode(b64) {
        Ok(h) if h.len() == 64 => Ok(h.into()),
        Ok(_) => Err(format!("{scheme} hash must be 64 bytes")),
        Err(_) => Err("hash is not base64".to_owned()),
    }
}

/// The rest of `$argon2id$[v=V$]m=M,t=T,p=P$SALT$HASH` (libargon2's `encode_string`).
fn argon2id(rest: &str) -> Result<Secret, String> {
    let shape = "$argon2id$v=19$m=M,t=T,p=P$SALT$HASH";
    let (version, rest) = match rest.strip_prefix("v=") {
        Some(r) => {
            let (v, r) = r
                .split_once('$')
                .ok_or_else(|| format!("expected {shape}"))?;
            let v = match v {
                "19" => Version::V0x13,
                "16" => Version::V0x10,
                _ => return Err("argon2 version must be 19 or 16".to_owned()),
            };
            (v, r)
        }
        // libargon2 omits v= only for version 0x10.
        None => (Version::V0x10, rest),
    };
    let [params, salt, hash] = fields(rest, shape)?;
    let (mut m, mut t, mut p) = (None, None, None);
    for kv in params.split(',') {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("expected {shape}"))?;
        let v: u32 = v
            .parse()
            .map_err(|_| format!("argon2 parameter {k} is not a number"))?;
        match k {
            "m" => m = Some(v),
            "t" => t = Some(v),
            "p" => p = Some(v),
            _ => return Err(format!("expected {shape}")),
        }
    }
    let (Some(m), Some(t), Some(p)) = (m, t, p) else {
        return Err(format!("expected {shape}"));
    };
    if m > MAX_ARGON2_MEMORY_KIB || t > MAX_ARGON2_PASSES || p > MAX_ARGON2_LANES {
        return Err(format!(
            "argon2 cost above the accepted bounds (m <= {MAX_ARGON2_MEMORY_KIB}, t <= \
             {MAX_ARGON2_PASSES}, p <= {MAX_ARGON2_LANES})"
        ));
    }
    let salt = match B64.decode(salt) {
        Ok(s) if (argon2::MIN_SALT_LEN..=MAX_SALT_BYTES).contains(&s.len()) => s,
        Ok(_) => {
            return Err(format!(
                "argon2 salt must be {}..={MAX_SALT_BYTES} bytes",
                argon2::MIN_SALT_LEN
            ))
        }
        Err(_) => return Err("salt is not base64".to_owned()),
    };
    let hash = match B64.decode(hash) {
        Ok(h) if (Params::MIN_OUTPUT_LEN..=MAX_ARGON2_HASH_BYTES).contains(&h.len()) => h,
        Ok(_) => return Err("argon2 hash length out of range".to_owned()),
        Err(_) => return Err("hash is not base64".to_owned()),
    };
    let params = Params::new(m, t, p, Some(hash.len()))
        .map_err(|e| format!("invalid argon2 parameters: {e}"))?;
    Ok(Secret::Argon2id {
        version,
        params,
        salt: salt.into(),
        hash: hash.into(),
    })
}

/// A parse error: the 1-based line and what is wrong (never the line's text).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct LineError {
    pub(crate) line: usize,
    pub(crate) why: String,
}

/// A loaded password file.
#[derive(Debug)]
pub(crate) struct PasswordFile {
    users: HashMap<String, Secret>,
    /// Verified instead when the user is unknown, so the answer takes about as long as for
    /// a known user (the first entry's scheme and cost).
    decoy: Option<Secret>,
    /// How many entries are plain text (logged as a warning at start-up).
    pub(crate) plaintext_entries: usize,
}

impl PasswordFile {
    /// Parses a whole file. Blank lines and lines starting with `#` are skipped; every other
    /// line is `user:secret` (user and a hashed secret trimmed of blanks, as Mosquitto does; a
    /// plain-text password is taken verbatim). A user listed twice is an error: Mosquitto keeps
    /// the first silently, which hides which password is in force.
    pub(crate) fn parse(text: &str, format: Format) -> Result<PasswordFile, LineError> {
        let mut users = HashMap::new();
        let mut first_line = HashMap::new();
        let mut decoy = None;
        let mut plaintext_entries = 0;
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let err = |why: String| LineError { line: n, why };
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let Some((user, secret)) = line.split_once(':') else {
                return Err(err("expected \"username:password-hash\"".to_owned()));
            };
            let user = user.trim();
            if user.is_empty() {
                return Err(err("empty username".to_owned()));
            }
            if user.len() > MAX_FIELD_BYTES || secret.len() > MAX_FIELD_BYTES {
                return Err(err(format!("longer than {MAX_FIELD_BYTES} bytes")));
            }
            let trimmed_secret = secret.trim();
            let secret = if trimmed_secret.starts_with('$') || format == Format::Hashed {
                Secret::parse(trimmed_secret, format)
            } else {
                Secret::parse(secret, format)
            }
            .map_err(|why| err(format!("user {user:?}: {why}")))?;
            if let Some(first) = first_line.get(user) {
                return Err(err(format!(
                    "user {user:?} is listed again (first on line {first})"
                )));
            }
            if matches!(secret, Secret::Plain(_)) {
                plaintext_entries += 1;
            }
            if decoy.is_none() {
                decoy = Some(secret.clone());
            }
            first_line.insert(user.to_owned(), n);
            users.insert(user.to_owned(), secret);
        }
        Ok(PasswordFile {
            users,
            decoy,
            plaintext_entries,
        })
    }

    /// Whether `user` exists and `password` is theirs. An unknown user costs a decoy
    /// verification, so timing does not tell which users exist.
    pub(crate) fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(secret) => secret.verify(password),
            None => {
                if let Some(d) = &self.decoy {
                    let _ = d.verify(password);
                }
                false
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.users.len()
    }
}

/// Why `brokerd passwd` could not write an entry. The message includes the cause.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteError {
    #[error("invalid username: {0}")]
    User(&'static str),
    #[error("invalid password: {0}")]
    Password(&'static str),
    #[error("iterations must be {MIN_NEW_ITERATIONS}..={MAX_PBKDF2_ITERATIONS}")]
    Iterations,
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot write {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the system random generator failed")]
    Random,
}

/// What `write_entry` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    Added,
    Replaced,
}

/// A username `brokerd passwd` accepts: what Mosquitto and the parser above read back as the
/// same name (no `:`, no surrounding blanks, no control characters, not a comment).
fn check_username(user: &str) -> Result<(), WriteError> {
    if user.is_empty() {
        return Err(WriteError::User("empty"));
    }
    if user.len() > MAX_FIELD_BYTES {
        return Err(WriteError::User("longer than 65535 bytes"));
    }
    if user.contains(':') {
        return Err(WriteError::User("contains ':'"));
    }
    if user.trim() != user {
        return Err(WriteError::User("starts or ends with a blank"));
    }
    if user.starts_with('#') {
        return Err(WriteError::User("starts with '#'"));
    }
    if user.chars().any(char::is_control) {
        return Err(WriteError::User("contains a control character"));
    }
    Ok(())
}

/// A new `$7$` entry's secret (without `user:`): PBKDF2-HMAC-SHA512, `NEW_ITERATIONS`
/// iterations, a random `NEW_SALT_BYTES`-byte salt, in Mosquitto's encoding.
pub(crate) fn new_pbkdf2_secret(password: &[u8], iterations: u32) -> Result<String, WriteError> {
    let iterations = NonZeroU32::new(iterations).ok_or(WriteError::Random)?;
    let mut salt = [0u8; NEW_SALT_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| WriteError::Random)?;
    let mut hash = [0u8; 64];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA512,
        iterations,
        &salt,
        password,
        &mut hash,
    );
    Ok(format!(
        "$7${iterations}${}${}",
        B64.encode(salt),
        B64.encode(hash)
    ))
}

/// `existing` with `user`'s line set to `user:secret`: the first line of that user is
/// replaced (later ones removed), or the entry is appended; every other line is kept as is.
fn upsert(existing: &str, user: &str, secret: &str) -> (String, Written) {
    let mut out = String::with_capacity(existing.len() + user.len() + secret.len() + 2);
    let mut written = None;
    for line in existing.lines() {
        let is_user = !line.trim_start().starts_with('#')
            && line.split_once(':').is_some_and(|(u, _)| u.trim() == user);
        if is_user {
            if written.is_none() {
                out.push_str(user);
                out.push(':');
                out.push_str(secret);
                out.push('\n');
                written = Some(Written::Replaced);
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if written.is_none() {
        out.push_str(user);
        out.push(':');
        out.push_str(secret);
        out.push('\n');
    }
    (out, written.unwrap_or(Written::Added))
}

/// Sets `user`'s password in the file at `path` to a new `$7$` entry with `iterations`
/// (creating the file), keeping every other line. The file is replaced atomically by a new one
/// with mode 0600.
pub(crate) fn write_entry(
    path: &Path,
    user: &str,
    password: &[u8],
    iterations: u32,
) -> Result<Written, WriteError> {
    if !(MIN_NEW_ITERATIONS..=MAX_PBKDF2_ITERATIONS).contains(&iterations) {
        return Err(WriteError::Iterations);
    }
    check_username(user)?;
    if password.is_empty() {
        return Err(WriteError::Password("empty"));
    }
    if password.len() > MAX_FIELD_BYTES {
        return Err(WriteError::Password("longer than 65535 bytes"));
    }
    let existing = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes).map_err(|_| WriteError::Read {
            path: path.to_owned(),
            error: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => {
            return Err(WriteError::Read {
                path: path.to_owned(),
                error,
            })
        }
    };
    let secret = new_pbkdf2_secret(password, iterations)?;
    let (text, written) = upsert(&existing, user, &secret);
    replace_file(path, text.as_bytes()).map_err(|error| WriteError::Write {
        path: path.to_owned(),
        error,
    })?;
    Ok(written)
}

/// Writes `bytes` to a new file with mode 0600 beside `path`, flushes it, and renames it over
/// `path`: a reader sees the old file or the new one, never a half-written one.
fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let result = (|| {
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable once the directory is flushed (best effort).
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    // Entries for the password "secret", each produced by an independent tool:
    /// `mosquitto_passwd -H sha512 -c -b FILE bob secret` (Debian mosquitto 2.0.11).
    const SHA512: &str = "$6$3wHI3ypZxnTP80A5$gnJtYIkFWKZb2bo04UtffHwXfR4oA+HswnXRcZCsNvHWoysIx914jFE3uP4p2izKq+GLfPqc+eGauVsMcw91Vg==";
    /// `mosquitto_passwd -c -b FILE alice secret` (Debian mosquitto 2.0.11: 101 iterations,
    /// 12-byte salt).
    const PBKDF2: &str = "$7$101$mCaslsJP8VKS6dfw$8Yz8aeAaC8X5jgJG3Xa7qwyHPXAgGRUxiVTVNQigjw2W8G7zNPTIpgMCMqr23wb30De826ZEyu7EcuyqOu2qyw==";
    /// `echo -n secret | argon2 "$(printf 's%.0s' {1..64})" -id -t 1 -k 47104 -p 1 -l 64 -e`
    /// (Debian's argon2 CLI, the libargon2 that Mosquitto 2.1 links; its parameters and its
    /// 64-byte salt and hash).
    const ARGON2ID: &str = "$argon2id$v=19$m=47104,t=1,p=1$c3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzcw$4/WcQL1Z1bt0Az9Mg7t5Km8tgr/0CVETh730g+tuz2RyQYI7Z2vQ4e7Qh0breeaJJETloXCgeKll/j4FunSDCw";

    fn one(secret: &str) -> PasswordFile {
        PasswordFile::parse(&format!("u:{secret}\n"), Format::Hashed).expect("parses")
    }

    /// issue #9 item 1: `$6$`, `$7$` and `$argon2id$` entries from real tools verify the right
    /// password and refuse others.
    #[test]
    fn each_scheme_verifies_the_right_password_only() {
        for s in [SHA512, PBKDF2, ARGON2ID] {
            let f = one(s);
            assert!(f.verify("u", b"secret"), "{s}");
            assert!(!f.verify("u", b"secret "), "{s}");
            assert!(!f.verify("u", b"Secret"), "{s}");
            assert!(!f.verify("u", b""), "{s}");
            assert!(!f.verify("nobody", b"secret"), "{s}");
        }
    }

    /// issue #9 item 1: any salt length and iteration count, not only Mosquitto 2.0's 12 bytes
    /// and 101; the entries `brokerd passwd` writes have a 64-byte salt.
    #[test]
    fn pbkdf2_with_any_salt_length_and_iterations() {
        for (salt_len, iterations) in [(1usize, 1u32), (12, 101), (64, 1000), (200, 3)] {
            let salt = vec![7u8; salt_len];
            let mut hash = [0u8; 64];
            ring::pbkdf2::derive(
                ring::pbkdf2::PBKDF2_HMAC_SHA512,
                NonZeroU32::new(iterations).unwrap(),
                &salt,
                b"pw",
                &mut hash,
            );
            let s = format!("$7${iterations}${}${}", B64.encode(&salt), B64.encode(hash));
            assert!(one(&s).verify("u", b"pw"), "{s}");
        }
        let new = new_pbkdf2_secret(b"pw", 1000).unwrap();
        let [iterations, salt, _] = fields::<3>(new.strip_prefix("$7$").unwrap(), "").unwrap();
        assert_eq!(iterations, "1000");
        assert_eq!(B64.decode(salt).unwrap().len(), NEW_SALT_BYTES);
        assert!(one(&new).verify("u", b"pw"));
        // Two entries for one password differ (random salt).
        assert_ne!(new, new_pbkdf2_secret(b"pw", 1000).unwrap());
    }

    /// issue #9 item 1: a plain `user:password` line, an unknown scheme or a broken hash is
    /// refused with its line number, and the error never repeats the secret.
    #[test]
    fn unknown_or_plain_lines_are_refused_with_their_line() {
        let cases = [
            ("alice:s3cret", "plain-text"),
            ("alice:$5$abc$def", "unknown hash scheme $5$"),
            ("alice:$8$abc$def", "unknown hash scheme $8$"),
            ("alice:$1$abc$def", "unknown hash scheme $1$"),
            (
                "alice:$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",
                "unknown hash scheme",
            ),
            ("alice:$7$0$c2FsdA==$aGFzaA==", "iteration count"),
            ("alice:$7$99999999999$c2FsdA==$aGFzaA==", "iteration count"),
            ("alice:$7$x$c2FsdA==$aGFzaA==", "iteration count"),
            ("alice:$7$101$c2FsdA==$aGFzaA==", "64 bytes"),
            ("alice:$7$101$!!!$aGFzaA==", "not base64"),
            ("alice:$7$101$c2FsdA==", "expected $7$"),
            ("alice:$6$c2FsdA==$aGFzaA==$x", "expected $6$"),
            (
                "alice:$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",
                "bounds",
            ),
            (
                "alice:$argon2id$v=18$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",
                "version",
            ),
            (
                "alice:$argon2id$v=19$m=8,t=1$c2FsdHNhbHQ$aGFzaGhhc2g",
                "expected",
            ),
            ("no-colon-here", "expected \"username:password-hash\""),
            (":$6$c2FsdA==$aGFzaA==", "empty username"),
        ];
        for (line, want) in cases {
            let text = format!("# header\n\nu:{PBKDF2}\n{line}\n");
            let e = PasswordFile::parse(&text, Format::Hashed).expect_err(line);
            assert_eq!(e.line, 4, "{line}");
            assert!(e.why.contains(want), "{line}: {}", e.why);
            assert!(
                !e.why.contains("s3cret") && !e.why.contains("aGFzaA"),
                "{}",
                e.why
            );
        }
    }

    /// issue #9 item 1: `password_format = "plaintext"` reads other lines as plain-text
    /// passwords (verbatim, binary-safe) next to hashed ones, and counts them.
    #[test]
    fn plaintext_opt_in_reads_plain_lines_beside_hashes() {
        let text = format!("text:p@ss w0rd:x\nnul:a\0b\nhashed:{PBKDF2}\n");
        let f = PasswordFile::parse(&text, Format::Plaintext).unwrap();
        assert_eq!((f.len(), f.plaintext_entries), (3, 2));
        assert!(f.verify("text", b"p@ss w0rd:x"));
        assert!(f.verify("nul", b"a\0b"));
        assert!(!f.verify("nul", b"a"));
        assert!(f.verify("hashed", b"secret"));
        assert!(!f.verify("hashed", PBKDF2.as_bytes()));
        // A malformed hash is still an error, not a password.
        let e = PasswordFile::parse("x:$7$1$!$!\n", Format::Plaintext).unwrap_err();
        assert_eq!(e.line, 1);
    }

    /// issue #9 item 1: A user listed twice is refused, naming both lines; blanks around fields are
    /// trimmed as Mosquitto does; CRLF files load.
    #[test]
    fn duplicates_refused_blanks_trimmed_crlf_accepted() {
        let e = PasswordFile::parse(&format!("a:{PBKDF2}\n\na:{SHA512}\n"), Format::Hashed)
            .unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.why.contains("line 1"), "{}", e.why);
        let f = PasswordFile::parse(&format!(" a : {PBKDF2} \r\nb:{SHA512}\r\n"), Format::Hashed)
            .unwrap();
        assert!(f.verify("a", b"secret") && f.verify("b", b"secret"));
    }

    /// issue #9 item 1: `brokerd passwd`'s file update: replaces the user's line in place, keeps
    /// the others (comments included), appends a new user.
    #[test]
    fn upsert_replaces_in_place_and_appends() {
        let (t, w) = upsert("# c\nalice:old\nbob:x\nalice:dup\n", "alice", "NEW");
        assert_eq!(
            (t.as_str(), w),
            ("# c\nalice:NEW\nbob:x\n", Written::Replaced)
        );
        let (t, w) = upsert("bob:x", "carol", "NEW");
        assert_eq!((t.as_str(), w), ("bob:x\ncarol:NEW\n", Written::Added));
        for bad in ["", "a:b", " a", "a ", "#a", "a\nb", "a\tb"] {
            assert!(check_username(bad).is_err(), "{bad:?}");
        }
        check_username("dev-01@site").unwrap();
    }

    /// issue #9 item 1: Bad input is normal input: arbitrary lines never panic.
    #[test]
    fn arbitrary_lines_never_panic() {
        let pieces = [
            "$",
            "$7$",
            "$6$",
            "$argon2id$",
            "v=19",
            "m=8,t=1,p=1",
            "==",
            ":",
            "A",
            "\u{ff}",
        ];
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    let line = format!("u:{a}{b}{c}{a}");
                    let _ = PasswordFile::parse(&line, Format::Hashed);
                    let _ = PasswordFile::parse(&line, Format::Plaintext);
                }
            }
        }
    }
}
