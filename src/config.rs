//! Broker configuration: the TOML schema, its defaults and its validation.
//! L0: serde and toml only. Invariant: a `Config` that left `load`/`parse` is valid; unknown keys
//! and bad values are errors naming the key and the file, never a panic.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod bridge;
pub use bridge::BridgeConfig;
pub(crate) use bridge::TopicRule;

/// The commented sample configuration; its values are the defaults (a test keeps them equal).
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../config/broker.toml");

/// The largest remaining length the MQTT encoding can carry.
pub const PROTOCOL_MAX_PACKET_SIZE: usize = 268_435_455;

/// A configuration that could not be read or is invalid. The message includes the cause;
/// `source()` does not repeat it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config file {path}: {problems}")]
    Invalid { path: PathBuf, problems: String },
}

/// The whole configuration. Every key is documented in config/broker.toml.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listener: ListenerConfig,
    pub limits: LimitsConfig,
    pub session: SessionConfig,
    pub auth: AuthConfig,
    pub persistence: PersistenceConfig,
    pub log: LogConfig,
    pub tls: TlsConfig,
    pub shared_subscriptions: SharedConfig,
    pub dead_letter: DeadLetterConfig,
    /// `[[bridge]]` tables (issue #11), none by default.
    #[serde(rename = "bridge")]
    pub bridges: Vec<BridgeConfig>,
    pub http: HttpConfig,
    pub sys: SysConfig,
    pub websocket: WebsocketConfig,
}

/// `[listener]`: where to accept MQTT connections.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// Address and port to bind; port 0 picks a free port (printed as `listening on ADDR`).
    pub bind: String,
    /// How long shutdown waits for connections to close before exiting anyway.
    pub shutdown_grace_ms: u64,
}

/// `[limits]`: bounds on what one client, or all of them, may cost.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_connections: usize,
    pub max_inflight: u16,
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
    pub max_packet_size: usize,
    pub connect_timeout_ms: u64,
    pub max_keepalive_s: u16,
    // Limits under attack (src/limits/, broker::budget); a limit of 0 is off.
    pub max_connections_per_ip: usize,
    pub max_accept_rate_per_ip: u64,
    pub accept_burst_per_ip: u64,
    pub max_accept_rate: u64,
    pub accept_burst: u64,
    pub max_publish_rate: u64,
    pub max_publish_bytes_rate: u64,
    pub max_queued_bytes_total: usize,
    pub max_conn_log_lines_per_s: u32,
}

/// `[session]`: session behaviour where the standard leaves a choice.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Queue QoS 0 messages for disconnected persistent sessions (Mosquitto's queue_qos0_messages).
    pub queue_qos0_messages: bool,
    /// Seconds a disconnected persistent session is kept; 0 keeps it forever (3.1.1 has no expiry).
    pub expiry_s: u64,
}

/// `[auth]`: who may connect and what they may touch (see src/auth/).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Allow clients without a username. Not written (None): allowed only while every
    /// listener is on a loopback address (Mosquitto 2's rule), so "absent" differs from "true".
    pub allow_anonymous: Option<bool>,
    /// Optional Mosquitto password file; when set, a client that sends a username must match.
    pub password_file: Option<PathBuf>,
    /// How the password file's lines are read: only hashes, or plain text too.
    pub password_format: PasswordFormat,
    /// Optional Mosquitto ACL file; when set, every publish, subscription and delivery is
    /// checked against it.
    pub acl_file: Option<PathBuf>,
}

/// `[auth] password_format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PasswordFormat {
    /// Mosquitto's hashes only (`$6$`, `$7$`, `$argon2id$`); anything else is refused.
    #[default]
    Hashed,
    /// Lines that are not hashes are plain-text passwords (logged as a warning at start).
    Plaintext,
}

/// When persisted state is flushed to disk before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    Always,
    Periodic,
    Off,
}

impl std::fmt::Display for SyncMode {
    /// The TOML spelling.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SyncMode::Always => "always",
            SyncMode::Periodic => "periodic",
            SyncMode::Off => "off",
        })
    }
}

/// What to do with a data directory that cannot be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnCorrupt {
    MoveAside,
    Refuse,
}

/// `[persistence]`: durable sessions and retained messages on disk.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PersistenceConfig {
    pub enabled: bool,
    pub path: PathBuf,
    pub sync: SyncMode,
    pub flush_interval_ms: u64,
    pub on_corrupt: OnCorrupt,
    /// Bound of the storage engine's page cache in bytes (sled's default is 1 GiB).
    pub cache_bytes: u64,
    /// Free space kept on the data directory's file system: below it, persisted traffic
    /// pauses (acknowledgements withheld) instead of the storage engine meeting a full disk.
    pub min_free_bytes: u64,
}

/// `[tls]`: a second listener, MQTT over TLS (1.2 and 1.3), off unless `enabled`. The
/// certificate, key and CA files are reloaded when they change and on SIGHUP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub enabled: bool,
    /// Address and port of the TLS listener; port 0 picks a free port (printed as
    /// `listening tls on ADDR`).
    pub bind: String,
    /// PEM: the server certificate, then its chain.
    pub cert_file: Option<PathBuf>,
    /// PEM: the private key of `cert_file` (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// PEM: the CAs that sign client certificates (used with `require_certificate`).
    pub ca_file: Option<PathBuf>,
    /// Clients must present a certificate signed by `ca_file` (mutual TLS).
    pub require_certificate: bool,
    /// The client certificate's subject CN is the MQTT username, and the CONNECT's username and
    /// password are not used for authentication (Mosquitto's `use_identity_as_username`).
    pub use_identity_as_username: bool,
}

/// `[websocket]`: a listener for MQTT over WebSocket (RFC 6455), off unless `enabled`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebsocketConfig {
    pub enabled: bool,
    /// Address and port of the WebSocket listener; port 0 picks a free port (printed as
    /// `listening ws on ADDR`).
    pub bind: String,
    /// The only HTTP path upgraded (others get 404).
    pub path: String,
    /// Addresses or CIDR networks whose `X-Forwarded-For` header is believed.
    pub trusted_proxies: Vec<String>,
}

/// `[http]`: the admin HTTP port (`/healthz`, `/readyz`, `/metrics`, the status page; see
/// src/admin/).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub enabled: bool,
    /// Address and port; port 0 picks a free port (printed as `listening http on ADDR`).
    pub bind: String,
}

/// `[sys]`: the `$SYS/broker/...` topics (Mosquitto's `sys_interval`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SysConfig {
    /// Seconds between two publications of the `$SYS` tree; 0 = off.
    pub interval_s: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            bind: "127.0.0.1:8081".into(),
        }
    }
}

impl Default for SysConfig {
    fn default() -> Self {
        SysConfig { interval_s: 10 }
    }
}

/// `[log]`: tracing output.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing-subscriber filter such as "info" or "brokerd=debug"; RUST_LOG overrides it.
    pub level: String,
    /// How each line is written: text for people, one JSON object for log shippers.
    pub format: LogFormat,
}

/// `[log] format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `TIMESTAMP LEVEL span: target: message key=value ...`
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, fields (with message), span(s).
    Json,
}

/// How a share group picks the member that receives a message (`[shared_subscriptions]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShareStrategy {
    /// Each member in turn (Mosquitto's way).
    #[default]
    RoundRobin,
    /// A member at random.
    Random,
    /// The online member with the fewest messages in flight and queued, skipping full ones.
    LeastInflight,
    /// Rendezvous hash of the topic: one topic, one member, in order.
    HashTopic,
    /// Rendezvous hash of the publisher's client id: one publisher, one member, in order.
    HashClient,
}

/// `[shared_subscriptions]`: `$share/{group}/{filter}` subscriptions.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SharedConfig {
    /// The strategy of every group not named in `groups`.
    pub strategy: ShareStrategy,
    /// Per-group overrides: `[shared_subscriptions.groups] NAME = "hash_topic"`.
    pub groups: std::collections::BTreeMap<String, ShareStrategy>,
}

/// `[dead_letter]`: what the broker drops for a subscriber, republished on
/// `$DLQ/{reason}/{client_id}/{topic}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterConfig {
    pub enabled: bool,
    /// QoS cap of a dead letter (0..=2).
    pub max_qos: u8,
    /// Dead letters waiting to be published; beyond this they are counted and dropped.
    pub max_queued_messages: usize,
    /// Payload bytes of the dead letters waiting to be published (0 = no byte bound).
    pub max_queued_bytes: usize,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig {
            enabled: false,
            max_qos: 1,
            max_queued_messages: 1_000,
            max_queued_bytes: 16 * 1024 * 1024,
        }
    }
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            bind: "127.0.0.1:1883".into(),
            shutdown_grace_ms: 5_000,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 100_000,
            max_inflight: 20,
            max_queued_messages: 1_000,
            max_queued_bytes: 16 * 1024 * 1024,
            max_packet_size: 1_048_576,
            connect_timeout_ms: 10_000,
            max_keepalive_s: 65_535,
            max_connections_per_ip: 0,
            max_accept_rate_per_ip: 1_000,
            accept_burst_per_ip: 10_000,
            max_accept_rate: 0,
            accept_burst: 10_000,
            max_publish_rate: 0,
            max_publish_bytes_rate: 0,
            max_queued_bytes_total: 1 << 30,
            max_conn_log_lines_per_s: 100,
        }
    }
}

impl Default for PersistenceConfig {
    fn default() -> Self {
        PersistenceConfig {
            enabled: false,
            path: PathBuf::from("data"),
            sync: SyncMode::Always,
            flush_interval_ms: 1_000,
            on_corrupt: OnCorrupt::MoveAside,
            cache_bytes: 16 * 1024 * 1024,
            min_free_bytes: 16 * 1024 * 1024,
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            enabled: false,
            bind: "127.0.0.1:8883".into(),
            cert_file: None,
            key_file: None,
            ca_file: None,
            require_certificate: false,
            use_identity_as_username: false,
        }
    }
}

impl Default for WebsocketConfig {
    fn default() -> Self {
        WebsocketConfig {
            enabled: false,
            bind: "127.0.0.1:8083".into(),
            path: "/mqtt".into(),
            trusted_proxies: Vec::new(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates TOML text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        config.validate().map_err(|problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })?;
        Ok(config)
    }

    /// Checks every value; returns all problems at once, each naming its key.
    fn validate(&self) -> Result<(), String> {
        let mut problems = String::new();
        let mut bad = |key: &str, why: &str| {
            if !problems.is_empty() {
                problems.push_str("; ");
            }
            let _ = write!(problems, "{key}: {why}");
        };
        if self.listener.bind.parse::<SocketAddr>().is_err() {
            bad(
                "listener.bind",
                "must be an IP:port such as \"127.0.0.1:1883\"",
            );
        }
        let l = &self.limits;
        if l.max_connections == 0 {
            bad("limits.max_connections", "must be at least 1");
        }
        if l.max_inflight == 0 {
            bad("limits.max_inflight", "must be 1..=65535");
        }
        if l.max_queued_messages == 0 {
            bad("limits.max_queued_messages", "must be at least 1");
        }
        if !(2..=PROTOCOL_MAX_PACKET_SIZE).contains(&l.max_packet_size) {
            bad("limits.max_packet_size", "must be 2..=268435455 bytes");
        }
        if l.connect_timeout_ms == 0 {
            bad("limits.connect_timeout_ms", "must be at least 1");
        }
        if l.max_keepalive_s == 0 {
            bad("limits.max_keepalive_s", "must be 1..=65535");
        }
        if l.accept_burst_per_ip == 0 {
            bad("limits.accept_burst_per_ip", "must be at least 1");
        }
        if l.accept_burst == 0 {
            bad("limits.accept_burst", "must be at least 1");
        }
        if self.auth.password_format == PasswordFormat::Plaintext
            && self.auth.password_file.is_none()
        {
            bad(
                "auth.password_format",
                "\"plaintext\" needs auth.password_file",
            );
        }
        if self.persistence.enabled && self.persistence.path.as_os_str().is_empty() {
            bad("persistence.path", "must not be empty");
        }
        if self.persistence.cache_bytes < 1024 * 1024 {
            bad(
                "persistence.cache_bytes",
                "must be at least 1048576 (1 MiB)",
            );
        }
        if self.persistence.flush_interval_ms == 0 {
            bad("persistence.flush_interval_ms", "must be at least 1");
        }
        self.tls.validate(&mut bad);
        for group in self.shared_subscriptions.groups.keys() {
            if group.is_empty() || group.contains(['/', '+', '#']) {
                bad(
                    "shared_subscriptions.groups",
                    "a group name is one non-empty level without '/', '+' or '#'",
                );
            }
        }
        if self.dead_letter.max_qos > 2 {
            bad("dead_letter.max_qos", "must be 0, 1 or 2");
        }
        if self.dead_letter.max_queued_messages == 0 {
            bad("dead_letter.max_queued_messages", "must be at least 1");
        }
        for (i, b) in self.bridges.iter().enumerate() {
            b.validate(i, &mut bad);
            if self.bridges[..i].iter().any(|o| o.name == b.name) {
                bad(
                    &format!("bridge[{}].name", b.name),
                    "is used by another bridge",
                );
            }
        }
        if self.http.bind.parse::<SocketAddr>().is_err() {
            bad("http.bind", "must be an IP:port such as \"127.0.0.1:8081\"");
        }
        self.websocket.validate(&mut bad);
        if self
            .log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            bad(
                "log.level",
                "is not a valid filter (e.g. \"info\", \"brokerd=debug\")",
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The TLS listener address (validated).
    pub fn tls_bind_addr(&self) -> SocketAddr {
        self.tls.bind.parse().expect("validate() checked tls.bind")
    }

    /// The WebSocket listener address (validated).
    pub fn ws_bind_addr(&self) -> SocketAddr {
        self.websocket
            .bind
            .parse()
            .expect("validate() checked websocket.bind")
    }

    /// The admin HTTP address (validated).
    pub fn http_bind_addr(&self) -> SocketAddr {
        self.http
            .bind
            .parse()
            .expect("validate() checked http.bind")
    }

    /// The listener address (validated).
    pub fn bind_addr(&self) -> SocketAddr {
        self.listener
            .bind
            .parse()
            .expect("validate() checked listener.bind")
    }

    /// Every address an MQTT listener binds (each listener kind adds its own), for rules over
    /// all of them such as the anonymous rule of `[auth]`: `[listener] bind`, `[tls] bind`
    /// when TLS is enabled, and `[websocket] bind` when WebSocket is.
    pub fn listener_addrs(&self) -> Vec<SocketAddr> {
        let mut addrs = vec![self.bind_addr()];
        if self.tls.enabled {
            addrs.push(self.tls_bind_addr());
        }
        if self.websocket.enabled {
            addrs.push(self.ws_bind_addr());
        }
        addrs
    }
}

impl WebsocketConfig {
    /// The `[websocket]` problems, each reported through `bad(key, why)` (checked when
    /// disabled too: `enabled = true` must not reveal a typo later).
    fn validate(&self, bad: &mut impl FnMut(&str, &str)) {
        if self.bind.parse::<SocketAddr>().is_err() {
            bad(
                "websocket.bind",
                "must be an IP:port such as \"127.0.0.1:8083\"",
            );
        }
        let path_ok = self.path.starts_with('/')
            && self.path.len() <= 1024
            && self.path.bytes().all(|b| b.is_ascii_graphic());
        if !path_ok {
            bad(
                "websocket.path",
                "must start with '/' and be printable ASCII without spaces (at most 1024 bytes)",
            );
        }
        if self
            .trusted_proxies
            .iter()
            .any(|p| crate::cidr::IpNet::parse(p).is_none())
        {
            bad(
                "websocket.trusted_proxies",
                "each entry must be an IP address or a CIDR network such as \"10.0.0.0/8\"",
            );
        }
    }
}

impl TlsConfig {
    /// The `[tls]` problems, each reported through `bad(key, why)`. The files themselves are
    /// read (and their errors reported) when the listener starts, by `--check-config` too.
    fn validate(&self, bad: &mut impl FnMut(&str, &str)) {
        if self.bind.parse::<SocketAddr>().is_err() {
            bad("tls.bind", "must be an IP:port such as \"127.0.0.1:8883\"");
        }
        if !self.enabled {
            return;
        }
        if self.cert_file.is_none() {
            bad("tls.cert_file", "is required when tls.enabled = true");
        }
        if self.key_file.is_none() {
            bad("tls.key_file", "is required when tls.enabled = true");
        }
        if self.require_certificate && self.ca_file.is_none() {
            bad(
                "tls.ca_file",
                "is required with require_certificate = true (it signs the client certificates)",
            );
        }
        if !self.require_certificate && self.ca_file.is_some() {
            bad(
                "tls.ca_file",
                "is only used with require_certificate = true (otherwise client certificates are not requested)",
            );
        }
        if self.use_identity_as_username && !self.require_certificate {
            bad(
                "tls.use_identity_as_username",
                "needs require_certificate = true (the username comes from the client certificate)",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// config/broker.toml documents the defaults: parsing it gives `Config::default()`.
    #[test]
    fn sample_config_equals_defaults() {
        let parsed = Config::parse(DEFAULT_CONFIG_TOML, Path::new("config/broker.toml")).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(
            Config::parse("", Path::new("x")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn unknown_key_is_named_with_the_file() {
        let err =
            Config::parse("[limits]\nmax_inflite = 3\n", Path::new("/etc/b.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("max_inflite") && msg.contains("/etc/b.toml"),
            "{msg}"
        );
    }

    #[test]
    fn bad_values_are_all_reported() {
        let err = Config::parse(
            "[listener]\nbind = \"nope\"\n[limits]\nmax_packet_size = 300000000\nmax_inflight = 0\n",
            Path::new("b.toml"),
        )
        .unwrap_err()
        .to_string();
        for key in [
            "listener.bind",
            "limits.max_packet_size",
            "limits.max_inflight",
        ] {
            assert!(err.contains(key), "{err}");
        }
    }

    /// issue #10 item 1: `[websocket]` keys are checked, every problem named; the WebSocket
    /// bind joins the anonymous rule's listener addresses only when enabled.
    #[test]
    fn websocket_keys_are_checked() {
        let err = Config::parse(
            "[websocket]\nbind = \"nope\"\npath = \"mqtt\"\ntrusted_proxies = [\"10.0.0.0/99\"]\n",
            Path::new("x"),
        )
        .unwrap_err()
        .to_string();
        for key in [
            "websocket.bind",
            "websocket.path",
            "websocket.trusted_proxies",
        ] {
            assert!(err.contains(key), "{key} missing: {err}");
        }
        let off = Config::parse("[websocket]\nbind = \"0.0.0.0:8083\"\n", Path::new("x")).unwrap();
        assert_eq!(off.listener_addrs().len(), 1);
        let on = Config::parse(
            "[websocket]\nenabled = true\nbind = \"0.0.0.0:8083\"\ntrusted_proxies = [\"127.0.0.1\", \"fd00::/8\"]\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(
            on.listener_addrs(),
            vec![on.bind_addr(), "0.0.0.0:8083".parse().unwrap()]
        );
    }

    /// issue #9 item 3: an enabled `[tls]` without what it needs is refused, every problem named.
    #[test]
    fn tls_requirements_are_all_reported() {
        let err = Config::parse(
            "[tls]\nenabled = true\nbind = \"nope\"\nuse_identity_as_username = true\n",
            Path::new("b.toml"),
        )
        .unwrap_err()
        .to_string();
        for key in [
            "tls.bind",
            "tls.cert_file",
            "tls.key_file",
            "tls.use_identity_as_username",
        ] {
            assert!(err.contains(key), "{key} missing in: {err}");
        }
        let err = Config::parse(
            "[tls]\nenabled = true\ncert_file = \"c\"\nkey_file = \"k\"\nrequire_certificate = true\n",
            Path::new("b.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("tls.ca_file"), "{err}");
        let err = Config::parse(
            "[tls]\nenabled = true\ncert_file = \"c\"\nkey_file = \"k\"\nca_file = \"a\"\n",
            Path::new("b.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("tls.ca_file"), "{err}");
        // Off: the file keys may stay in place, unchecked.
        let off = Config::parse(
            "[tls]\nenabled = false\nrequire_certificate = true\n",
            Path::new("b.toml"),
        )
        .expect("disabled [tls] is not checked");
        assert!(!off.tls.enabled);
        let ok = Config::parse(
            "[tls]\nenabled = true\nbind = \"127.0.0.1:0\"\ncert_file = \"c\"\nkey_file = \"k\"\nca_file = \"a\"\nrequire_certificate = true\nuse_identity_as_username = true\n",
            Path::new("b.toml"),
        )
        .expect("complete [tls]");
        assert_eq!(ok.tls_bind_addr().port(), 0);
    }

    #[test]
    fn wrong_type_is_an_error() {
        let err = Config::parse("[limits]\nmax_inflight = \"x\"\n", Path::new("b.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_inflight"), "{err}");
    }
}
