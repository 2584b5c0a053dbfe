//! brokerd: an MQTT 3.1.1 broker daemon.
//!
//! # Layout
//!
//! The modules form layers; a module only uses the layers below it.
//!
//! | layer | modules | owns |
//! |---|---|---|
//! | L0 | `error`, `config` (`bridge`), `topic`, `message` | typed errors, the TOML schema (with `[[bridge]]` and Mosquitto's bridge `topic` lines), validated topic names/filters, the shared `Message` |
//! | L0 | `auth` (`passwd`, `acl`) | Mosquitto password and ACL files as one immutable `Auth`; the anonymous rule |
//! | L0 | `limits` (`bucket`, `accept`, `publish`, `log_fold`) | limits under attack: accept rates and connections per source address, a client's publish rate, folding connection log lines |
//! | L0 | `cidr` | IP networks as configuration values (`[websocket] trusted_proxies`) |
//! | L1 | `protocol::codec` | decoding client packets with every check mqttbytes lacks; encoding server packets |
//! | L1 | `transport` (`tcp`, `tls`, `tls_client`, `ws`) | one `Transport` under the session loop: plain TCP, TLS (rustls) with its reloadable certificate, and WebSocket (RFC 6455 framing in place in the session's buffers, the HTTP upgrade, `X-Forwarded-For` from trusted proxies); the client side of TLS for bridges |
//! | L1 | `store` (`dir`, `writer`, `sled_backend`, `legacy`, `data_dir`) | the data directory (lock, free space), the writer thread (group commit, atomic groups), the on-disk format |
//! | L2 | `broker` (`trie`, `retained`, `registry`, `queue`, `budget`, `shared`, `dead_letter`) | sessions by client id, the subscription trie, retained messages, per-session bounded queues, the global budget of queued bytes; share groups (`$share/...`) and their strategies in their own trie; the bounded dead-letter path (`$DLQ/...`) |
//! | L3 | `session` | one connection: CONNECT, login and ACL checks (`authorize`), the session loop, keep-alive, will, takeover |
//! | L4 | `server` (`ws`) | the accept loops (one per listener) and the admission they share: `max_connections` and the accept gate; a WebSocket connection's start (upgrade, forwarded address, admission) |
//! | L0 | `admin::metrics`, `admin::bridges` | counters every layer bumps (striped relaxed atomics on the message path), the flush histogram, the Prometheus text; the bridges' figures (`brokerd_bridge_*`, their status-page table) |
//! | L4 | `admin` (`http`, `status`, `sys`) | the admin HTTP port (`/healthz`, `/readyz`, `/metrics`, the status page; `probe` behind `brokerd health`) and the `$SYS` publisher, a client of the broker |
//! | L4 | `bridge` (`link`, `wire`) | bridges to upstream brokers: one task each, a client of the remote; its journal is its own persistent session `$bridge/NAME` (each delivery stamped on entry, for the oldest message's age) |
//! | L5 | `run` and `check` (here), `main.rs` | startup, shutdown, `--check-config`, the binary |
//! | L5 | `ops` (`sd_notify`, `reload`) | readiness for systemd (`$NOTIFY_SOCKET`); SIGHUP reload: build every new value, then swap (auth, TLS, log level, `[limits]` but the global queue budget, `trusted_proxies`, the `$SYS` interval); report restart-only keys |
//!
//! # One PUBLISH, from the publisher's socket to the subscriber's socket
//!
//! 1. The publisher's session task reads into the read buffer it owns and `codec::decode`s a
//!    packet: the payload is copied out once (never a slice pinning the read buffer).
//! 2. `Broker::publish` (a sync fn): updates the retained store if RETAIN is set, walks the
//!    trie (per-node read locks) into a reused per-thread buffer, deduplicated per client at
//!    the highest granted QoS, and offers each subscriber's `Session` an `Arc` of the message.
//!    A full queue drops for that subscriber only, counted and logged at most once a second.
//! 3. The publisher's task appends PUBACK/PUBREC to its write buffer; everything produced in one
//!    turn of its loop goes out in one write.
//! 4. A queue going from empty to non-empty wakes the subscriber's connection (a per-connection
//!    `Notify`). It moves what the in-flight window allows out of the queue under the session
//!    lock, encodes outside it, and writes the batch.
//! 5. PUBACK (or PUBREC, PUBREL, PUBCOMP) frees window credit and the queue drains again.
//!
//! Nothing on this path awaits another client: a slow subscriber only fills its own queue.
//!
//! With persistence on, a persistent subscriber's copy is also submitted to the store (in
//! queue order, under the session lock), and a packet that reveals stored state (PUBACK,
//! PUBREC, PUBREL, PUBCOMP, a QoS 2 PUBLISH, SUBACK, UNSUBACK, CONNACK) waits in its
//! connection's `pending_acks` until the writer reports that state durable
//! (`sync = "always"`; see `store::AckPolicy` for the other modes).

mod admin;
mod auth;
#[doc(hidden)]
pub mod bench_api;
mod bridge;
mod broker;
mod cidr;
pub mod config;
mod error;
mod limits;
mod message;
pub mod ops;
mod protocol;
mod server;
mod session;
mod store;
mod topic;
mod transport;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use admin::http::{probe, ProbeError};
pub use config::{Config, ConfigError};
pub use ops::reload::LogLevelHook;

/// How often keep-alive deadlines are checked: a silent client is closed between 1.5 x its
/// keep-alive and that plus this period.
const KEEP_ALIVE_SWEEP: Duration = Duration::from_millis(250);

/// How often folded connection log lines are summarized (see `limits::log_fold`).
const LOG_FOLD_SUMMARY: Duration = Duration::from_secs(1);

/// How often the TLS certificate, key and CA files are checked for changes (size, modification
/// time, inode); a change is loaded once it has stayed the same for one more check.
const TLS_FILE_POLL: Duration = Duration::from_secs(1);

/// Why the broker could not start.
///
/// Like every error type of the crate, a variant's message includes its cause and `source()`
/// does not return it again: the library logs errors by their message, and `main` prints the
/// whole chain, so a cause in both places would be printed twice.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("{0}")]
    Auth(String),
    #[error("persistence: {0}")]
    Store(String),
    #[error("{0}")]
    Tls(String),
}

/// Where the broker accepts connections: what `run` passes to its `ready` callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    /// The plain MQTT listener (`[listener] bind`).
    pub mqtt: SocketAddr,
    /// The TLS listener (`[tls] bind`), when `[tls] enabled`.
    pub tls: Option<SocketAddr>,
    /// The admin HTTP port (`[http] bind`), when `[http] enabled`.
    pub http: Option<SocketAddr>,
    /// The WebSocket listener (`[websocket] bind`), when `[websocket] enabled`.
    pub ws: Option<SocketAddr>,
}

/// Asks a running broker to reload what it can without a restart. Clone it into a signal
/// handler (SIGHUP) and call `reload`. Made `with_config_file`, a reload re-reads that file and
/// applies what can change while running (`ops::reload::RELOADABLE`: the log level, most
/// limits, `[auth]` and the password and ACL files; and the TLS files); made with `new`, it
/// reloads the TLS certificate, key and CA files only. A request made before `run` is ready
/// is not kept.
#[derive(Clone)]
pub struct ReloadHandle {
    requests: Arc<tokio::sync::watch::Sender<u64>>,
    source: Option<(std::path::PathBuf, LogLevelHook)>,
}

impl std::fmt::Debug for ReloadHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadHandle")
            .field("config_file", &self.source.as_ref().map(|(p, _)| p))
            .finish_non_exhaustive()
    }
}

impl Default for ReloadHandle {
    fn default() -> Self {
        ReloadHandle {
            requests: Arc::new(tokio::sync::watch::Sender::new(0)),
            source: None,
        }
    }
}

impl ReloadHandle {
    pub fn new() -> ReloadHandle {
        ReloadHandle::default()
    }

    /// A handle whose reloads re-read `path` (the file `run`'s configuration came from);
    /// `log_level` installs a new `[log] level` in the process's subscriber.
    pub fn with_config_file(path: std::path::PathBuf, log_level: LogLevelHook) -> ReloadHandle {
        ReloadHandle {
            source: Some((path, log_level)),
            ..ReloadHandle::default()
        }
    }

    /// Requests a reload; requests made while one runs are merged into one more.
    pub fn reload(&self) {
        self.requests.send_modify(|n| *n += 1);
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.requests.subscribe()
    }
}

/// Checks what `run` loads besides the configuration file, without starting anything: the
/// password and ACL files (loaded exactly as `run` loads them), the TLS certificate, key and CA
/// files when `[tls]` is enabled, and, with persistence on, that the data directory is usable
/// (see `store::data_dir::check`). Opens no database and takes no lock, so it also passes while
/// a broker runs on the same directory.
pub fn check(config: &Config) -> Result<(), Error> {
    load_auth(config)?;
    if config.tls.enabled {
        transport::TlsAcceptor::load(&config.tls).map_err(|e| Error::Tls(e.to_string()))?;
    }
    if config.persistence.enabled {
        store::data_dir::check(&config.persistence.path)
            .map_err(|e| Error::Store(e.to_string()))?;
    }
    for b in &config.bridges {
        bridge::tls_config(b).map_err(Error::Tls)?;
    }
    Ok(())
}

/// Loads the password and ACL files `config` names.
fn load_auth(config: &Config) -> Result<auth::Auth, Error> {
    auth::Auth::load(&config.auth, &config.listener_addrs()).map_err(|e| Error::Auth(e.to_string()))
}

/// One line saying whether anonymous clients are accepted and why (Mosquitto 2's rule over
/// every listener address; see `[auth] allow_anonymous`).
pub fn anonymous_rule(config: &Config) -> String {
    auth::Anonymous::decide(config.auth.allow_anonymous, &config.listener_addrs()).to_string()
}

/// `brokerd passwd`: sets `user`'s password in the Mosquitto password file at `path` (created
/// with mode 0600 if missing) to a new `$7$` entry with `iterations` (default 210,000); other
/// lines are kept. Returns whether the user was added (false: replaced).
pub fn set_password(
    path: &std::path::Path,
    user: &str,
    password: &[u8],
    iterations: Option<u32>,
) -> Result<bool, Error> {
    let iterations = iterations.unwrap_or(auth::passwd::NEW_ITERATIONS);
    auth::passwd::write_entry(path, user, password, iterations)
        .map(|w| w == auth::passwd::Written::Added)
        .map_err(|e| Error::Auth(e.to_string()))
}

/// Runs the broker until `shutdown` resolves: binds `config.listener.bind` (and `config.tls.bind`
/// when TLS is enabled, `config.websocket.bind` when WebSocket is), calls `ready` with the bound addresses once connections are accepted,
/// reloads what it can each time `reload` asks, and on shutdown stops accepting, closes every
/// connection (their wills are published) and waits at most `listener.shutdown_grace_ms` for
/// them.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    reload: ReloadHandle,
    ready: impl FnOnce(Listening),
) -> Result<(), Error> {
    let auth = load_auth(&config)?;
    log_auth(&auth);
    let tls = if config.tls.enabled {
        let acceptor = transport::TlsAcceptor::load(&config.tls);
        Some(acceptor.map_err(|e| Error::Tls(e.to_string()))?)
    } else {
        None
    };
    // Up before the store loads: /healthz answers and /readyz says 503 during a long load.
    let admin = admin::AdminServer::start(&config).await?;
    // Persistent state loads before the listener exists, so no client sees a half-loaded broker.
    let (store, snapshot) = if config.persistence.enabled {
        store::Store::open(&config.persistence).map_err(|e| Error::Store(e.to_string()))?
    } else {
        (store::Store::disabled(), store::Snapshot::default())
    };
    let broker = broker::Broker::new(&config, store.clone());
    broker.restore(snapshot);
    let addr = config.bind_addr();
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|error| Error::Bind { addr, error })?;
    let local = listener
        .local_addr()
        .map_err(|error| Error::Bind { addr, error })?;
    let tls_listener = match tls {
        Some(acceptor) => {
            let addr = config.tls_bind_addr();
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|error| Error::Bind { addr, error })?;
            let local = listener
                .local_addr()
                .map_err(|error| Error::Bind { addr, error })?;
            Some((listener, local, acceptor))
        }
        None => None,
    };
    let ws_listener = if config.websocket.enabled {
        let addr = config.ws_bind_addr();
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|error| Error::Bind { addr, error })?;
        let local = listener
            .local_addr()
            .map_err(|error| Error::Bind { addr, error })?;
        Some((
            listener,
            local,
            transport::WsAcceptor::new(&config.websocket),
        ))
    } else {
        None
    };
    let closing = CancellationToken::new();
    let metrics = Arc::new(admin::metrics::Metrics::new());
    let ctx = Arc::new(session::ConnContext {
        broker: broker.clone(),
        authorizer: session::Authorizer::new(auth),
        limits: limits::ConnLimits::new(&config.limits),
        closing: closing.clone(),
        metrics: metrics.clone(),
    });
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    if let Some(task) = broker.dead_letter_task(token.clone().cancelled_owned()) {
        tracker.spawn(task);
    }
    {
        // [MQTT-3.1.2-24] one sweep for every connection's keep-alive, instead of a timer each.
        let (broker, token) = (broker.clone(), token.clone());
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(KEEP_ALIVE_SWEEP);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tick.tick() => broker.sweep_keep_alive(),
                }
            }
        });
    }
    {
        // Connection log lines folded above limits.max_conn_log_lines_per_s (from every
        // listener, the TLS handshakes and the logins) are summarized once a second, here
        // rather than in an accept loop, so that two listeners still make one summary line.
        let (ctx, closing) = (ctx.clone(), closing.clone());
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(LOG_FOLD_SUMMARY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = closing.cancelled() => return,
                    _ = tick.tick() => ctx.limits.log.flush(),
                }
            }
        });
    }
    if config.session.expiry_s > 0 {
        let (broker, token) = (broker.clone(), token.clone());
        let max_age = Duration::from_secs(config.session.expiry_s);
        tracker.spawn(async move {
            let period = (max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(period) => { broker.expire_sessions(max_age); }
                }
            }
        });
    }
    log_listening(local, &config.persistence);
    // Bridges subscribe their journals before any client is accepted (issue #11).
    let bridges = bridge::start(
        &config.bridges,
        &broker,
        config.limits.max_packet_size,
        &token,
        &tracker,
    )
    .map_err(Error::Tls)?;
    // One admission for both listeners: max_connections, the accept rates and the connections
    // per source address count plain and TLS connections together.
    let admission = server::Admission::new(&config.limits);
    let (sys_interval, sys_interval_rx) = tokio::sync::watch::channel(config.sys.interval_s);
    if let Some((path, log_level)) = reload.source.clone() {
        let acceptor = tls_listener.as_ref().map(|(_, _, a)| a.clone());
        let reloader = ops::reload::Reloader::new(
            path,
            config.clone(),
            ctx.clone(),
            admission.clone(),
            (acceptor, ws_listener.as_ref().map(|(_, _, a)| a.clone())),
            log_level,
            sys_interval,
        );
        spawn_config_reloader(reloader, reload.subscribe(), &token, &tracker);
    }
    // One accept loop per listener, over the same context and shared admission.
    let accept = |listener, kind| {
        server::accept_loop(
            listener,
            kind,
            ctx.clone(),
            admission.clone(),
            closing.clone(),
            token.clone(),
            tracker.clone(),
        )
    };
    let tls_local = match tls_listener {
        Some((listener, addr, acceptor)) => {
            info!(%addr, "listening (tls)");
            // With a configuration file, SIGHUP reloads the TLS files as part of the whole
            // configuration (the reloader above); the poller keeps watching them for changes.
            let signals = reload.source.is_none().then(|| reload.subscribe());
            spawn_tls_reloader(acceptor.clone(), signals, &token, &tracker);
            tracker.spawn(accept(listener, server::Kind::Tls(acceptor)));
            Some(addr)
        }
        None => None,
    };
    let ws_local = match ws_listener {
        Some((listener, addr, acceptor)) => {
            info!(%addr, path = %config.websocket.path, "listening (websocket)");
            tracker.spawn(accept(listener, server::Kind::Ws(acceptor)));
            Some(addr)
        }
        None => None,
    };
    if let Some(a) = &admin {
        a.admin.set_ready(admin::Sources {
            broker: broker.clone(),
            metrics: metrics.clone(),
            bridges: bridges.clone(),
        });
    }
    {
        // Always running (idle while `[sys] interval_s` is 0): a reload may turn it on.
        let src = admin::Sources {
            broker: broker.clone(),
            metrics: metrics.clone(),
            bridges: bridges.clone(),
        };
        tracker.spawn(admin::sys::run(src, sys_interval_rx, closing.clone()));
    }
    ready(Listening {
        mqtt: local,
        tls: tls_local,
        http: admin.as_ref().map(|a| a.addr),
        ws: ws_local,
    });
    let accept = accept(listener, server::Kind::Plain);
    tokio::select! {
        _ = accept => {}
        _ = shutdown => info!("shutdown requested"),
    }
    // Phase 1: stop accepting and publish every will while all connections are still up, and
    // give their deliveries a moment to go out. Phase 2: close every connection.
    closing.cancel();
    broker.wake_all();
    let grace = Duration::from_millis(config.listener.shutdown_grace_ms);
    tokio::time::sleep((grace / 10).min(Duration::from_millis(200))).await;
    token.cancel();
    broker.wake_all();
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!(
            remaining = tracker.len(),
            "connections still closing after listener.shutdown_grace_ms; exiting anyway"
        );
    }
    ctx.limits.log_summary();
    bridge::log_summary(&bridges);
    // The writer thread flushes what is pending; join it off the async workers. A store that
    // cannot finish makes the exit non-zero: a supervisor must not read it as a clean stop.
    let closed = tokio::task::spawn_blocking(move || store.close(grace))
        .await
        .unwrap_or(Ok(()));
    broker.log_summary();
    if let Some(a) = admin {
        a.stop().await;
    }
    closed.map_err(|e| {
        tracing::error!(error = %e, "persistent state not fully written at shutdown");
        Error::Store(e.to_string())
    })
}

/// Reloads the configuration each time `requests` asks (SIGHUP), one reload at a time, off
/// the async workers.
fn spawn_config_reloader(
    reloader: ops::reload::Reloader,
    mut requests: tokio::sync::watch::Receiver<u64>,
    token: &CancellationToken,
    tracker: &TaskTracker,
) {
    let token = token.clone();
    let reloader = Arc::new(std::sync::Mutex::new(reloader));
    tracker.spawn(async move {
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                r = requests.changed() => {
                    if r.is_err() {
                        return; // no handle left: no reload can be asked for
                    }
                    let reloader = reloader.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        reloader
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .reload();
                    })
                    .await;
                }
            }
        }
    });
}

/// Reloads the TLS files when they change (checked every `TLS_FILE_POLL`) and, given
/// `reload`, when it asks (SIGHUP without a configuration file). File system access runs off
/// the async workers.
fn spawn_tls_reloader(
    acceptor: transport::TlsAcceptor,
    reload: Option<tokio::sync::watch::Receiver<u64>>,
    token: &CancellationToken,
    tracker: &TaskTracker,
) {
    let token = token.clone();
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(TLS_FILE_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut signals = reload.is_some();
        let mut reload = reload.unwrap_or_else(|| tokio::sync::watch::channel(0).1);
        loop {
            let acceptor = acceptor.clone();
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tick.tick() => {
                    let _ = tokio::task::spawn_blocking(move || acceptor.reload_if_changed()).await;
                }
                r = reload.changed(), if signals => {
                    if r.is_err() {
                        signals = false; // no handle left: only file changes from now on
                        continue;
                    }
                    let _ = tokio::task::spawn_blocking(move || acceptor.reload("reload request")).await;
                }
            }
        }
    });
}

/// The start-up line that says whether anonymous clients are accepted, and why.
fn log_auth(auth: &auth::Auth) {
    let rule = auth.anonymous();
    if matches!(rule, auth::Anonymous::NotLoopback(_)) && !auth.has_password_file() {
        warn!("{rule}; no password_file is set either: no client can connect");
    } else {
        info!("{rule}");
    }
}

/// The start-up line that says where the broker listens and how it persists.
fn log_listening(addr: SocketAddr, p: &config::PersistenceConfig) {
    if !p.enabled {
        info!(%addr, persistence = %"off", "listening");
        return;
    }
    // Relative to the working directory, which the log reader may not know.
    let path = std::path::absolute(&p.path).unwrap_or_else(|_| p.path.clone());
    let path = path.display();
    if p.sync == config::SyncMode::Periodic {
        info!(
            %addr,
            persistence = %"on",
            %path,
            sync = %p.sync,
            flush_interval_ms = p.flush_interval_ms,
            "listening"
        );
    } else {
        info!(%addr, persistence = %"on", %path, sync = %p.sync, "listening");
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as StdError;

    use super::*;

    /// What `main` prints (`{:#}` of anyhow): the message, then each `source()` below it.
    fn chain(e: &dyn StdError) -> String {
        let mut out = e.to_string();
        let mut next = e.source();
        while let Some(cause) = next {
            out.push_str(": ");
            out.push_str(&cause.to_string());
            next = cause.source();
        }
        out
    }

    fn cause() -> std::io::Error {
        std::io::Error::other("THE-CAUSE")
    }

    /// issue #8 item 4: every error type that wraps a cause prints it exactly once in the chain.
    #[test]
    fn every_cause_appears_once_in_the_printed_chain() {
        let missing = std::path::Path::new("/nonexistent-brokerd-test/file");
        let auth = auth::Auth::load(
            &config::AuthConfig {
                password_file: Some(missing.to_owned()),
                ..config::AuthConfig::default()
            },
            &[],
        )
        .expect_err("missing password file");
        let errors: Vec<(Box<dyn StdError>, String)> = vec![
            (
                Box::new(Error::Bind {
                    addr: "127.0.0.1:1".parse().expect("address"),
                    error: cause(),
                }),
                "THE-CAUSE".into(),
            ),
            (
                Box::new(Config::load(missing).expect_err("missing config")),
                "No such file or directory".into(),
            ),
            (Box::new(auth), "No such file or directory".into()),
            (
                Box::new(store::StoreError::Dir {
                    path: missing.to_owned(),
                    error: cause(),
                }),
                "THE-CAUSE".into(),
            ),
            (
                Box::new(store::StoreError::from(sled::Error::Io(cause()))),
                "THE-CAUSE".into(),
            ),
            (
                Box::new(error::ProtocolError::from(topic::TopicError::Empty)),
                "empty topic".into(),
            ),
        ];
        for (e, needle) in errors {
            let printed = chain(&*e);
            assert_eq!(printed.matches(needle.as_str()).count(), 1, "{printed}");
        }
    }
}
