//! Live reload (SIGHUP): re-reads the configuration file, applies the keys that can change
//! while running and reports, in one warn line, every other key that changed (kept as it was
//! until a restart). L5: config (L0), auth (L0), the TLS acceptor (L1) and the connections'
//! shared `ConnContext` (L3). Invariants: a file that does not parse or validate, a password or
//! ACL file that does not load, a certificate that does not build, or a log level that does not
//! apply rejects the reload whole (logged at error) and the broker keeps everything it had;
//! otherwise every new value is built before the first swap. Keys are compared generically
//! (defaults overlaid by the file, per `section.key`), so a section this module does not know
//! is reported as needing a restart, never silently ignored.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::{error, info, warn};

use crate::auth::{Anonymous, Auth};
use crate::config::{Config, DEFAULT_CONFIG_TOML};
use crate::server::Admission;
use crate::session::ConnContext;
use crate::transport::TlsAcceptor;

/// Copies one key's value from the new configuration (second) into the running one (first).
type Take = fn(&mut Config, &Config);

/// The keys a reload applies, each with how it is taken over; everything else that changed
/// needs a restart. One table, so a key cannot be reported as applied without being applied.
pub(crate) const RELOADABLE: &[(&str, Take)] = &[
    ("log.level", |to, from| {
        to.log.level.clone_from(&from.log.level)
    }),
    ("limits.max_connections", |to, from| {
        to.limits.max_connections = from.limits.max_connections
    }),
    ("limits.max_publish_rate", |to, from| {
        to.limits.max_publish_rate = from.limits.max_publish_rate
    }),
    ("limits.max_publish_bytes_rate", |to, from| {
        to.limits.max_publish_bytes_rate = from.limits.max_publish_bytes_rate
    }),
    ("limits.max_conn_log_lines_per_s", |to, from| {
        to.limits.max_conn_log_lines_per_s = from.limits.max_conn_log_lines_per_s
    }),
    ("auth.allow_anonymous", |to, from| {
        to.auth.allow_anonymous = from.auth.allow_anonymous
    }),
    ("auth.password_file", |to, from| {
        to.auth.password_file.clone_from(&from.auth.password_file)
    }),
    ("auth.password_format", |to, from| {
        to.auth.password_format = from.auth.password_format
    }),
    ("auth.acl_file", |to, from| {
        to.auth.acl_file.clone_from(&from.auth.acl_file)
    }),
];

fn is_reloadable(key: &str) -> bool {
    RELOADABLE.iter().any(|(k, _)| *k == key)
}

/// Applies a new `[log] level` (a tracing-subscriber filter) to the running subscriber.
pub type LogLevelHook = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Every key of a configuration with its effective value: the defaults (config/broker.toml)
/// overlaid by the file, as `"section.key" -> value` (nested tables flattened the same way).
pub(crate) type Keys = BTreeMap<String, toml::Value>;

/// `text`'s keys over the defaults' (see `Keys`).
pub(crate) fn effective_keys(text: &str) -> Result<Keys, String> {
    let mut keys = Keys::new();
    for source in [DEFAULT_CONFIG_TOML, text] {
        let table: toml::Table = toml::from_str(source).map_err(|e| e.to_string())?;
        flatten("", &toml::Value::Table(table), &mut keys);
    }
    Ok(keys)
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut Keys) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        v => {
            out.insert(prefix.to_owned(), v.clone());
        }
    }
}

/// What changed between two sets of keys, split by whether a reload may apply it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    pub(crate) applied: Vec<String>,
    pub(crate) need_restart: Vec<String>,
}

pub(crate) fn changes(running: &Keys, new: &Keys) -> Changes {
    let mut out = Changes::default();
    let all: std::collections::BTreeSet<&String> = running.keys().chain(new.keys()).collect();
    for key in all {
        if running.get(key) == new.get(key) {
            continue;
        }
        if is_reloadable(key) {
            out.applied.push(key.clone());
        } else {
            out.need_restart.push(key.clone());
        }
    }
    out
}

/// The running configuration and what a reload swaps.
pub(crate) struct Reloader {
    path: PathBuf,
    /// The configuration in force: restart-only keys keep their start-up values.
    running: Config,
    keys: Keys,
    ctx: Arc<ConnContext>,
    admission: Admission,
    tls: Option<TlsAcceptor>,
    log_level: LogLevelHook,
    /// Where a lowered `max_connections` waits for connections to end.
    runtime: tokio::runtime::Handle,
}

impl Reloader {
    /// `running` was loaded from `path` at start-up. Call from within the runtime.
    pub(crate) fn new(
        path: PathBuf,
        running: Config,
        ctx: Arc<ConnContext>,
        admission: Admission,
        tls: Option<TlsAcceptor>,
        log_level: LogLevelHook,
    ) -> Reloader {
        // Unreadable now (it was read a moment ago): compare against the defaults' keys
        // overlaid by nothing; the first reload then reports more keys, never fewer.
        let keys = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| effective_keys(&t).ok())
            .unwrap_or_default();
        Reloader {
            path,
            running,
            keys,
            ctx,
            admission,
            tls,
            log_level,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Reloads (blocking: reads files; run it off the async workers). Logs the outcome: one
    /// info line listing what changed, one warn line naming the keys that need a restart, or
    /// one error line saying why nothing changed.
    pub(crate) fn reload(&mut self) {
        match self.try_reload() {
            Ok(()) => {}
            Err(e) => error!(
                file = %self.path.display(),
                error = %e,
                "config reload rejected; still running on the previous configuration"
            ),
        }
    }

    fn try_reload(&mut self) -> Result<(), String> {
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?;
        let new = Config::parse(&text, &self.path).map_err(|e| e.to_string())?;
        let new_keys = effective_keys(&text)?;
        let changes = changes(&self.keys, &new_keys);
        // The configuration to run on: the running one with the reloadable keys taken over.
        let mut next = self.running.clone();
        for (_, take) in RELOADABLE {
            take(&mut next, &new);
        }
        // Build everything first. The password and ACL files (and the certificate files) are
        // read again even when their names did not change: their content may have.
        let auth = Auth::load(&next.auth, &next.listener_addrs()).map_err(|e| e.to_string())?;
        let tls = match &self.tls {
            Some(acceptor) => Some(acceptor.prepare().map_err(|e| format!("tls: {e}"))?),
            None => None,
        };
        if next.log.level != self.running.log.level {
            // Checked by Config::parse; this only fails if the filter cannot be installed, and
            // nothing has been swapped yet.
            (self.log_level)(&next.log.level)?;
        }
        // Said again when it changes (the start-up log says it once).
        let anonymous = (auth.anonymous()
            != Anonymous::decide(
                self.running.auth.allow_anonymous,
                &self.running.listener_addrs(),
            ))
        .then(|| auth.anonymous().to_string());
        // Swap: none of these can fail.
        self.ctx.authorizer.replace(auth);
        self.ctx.limits.apply(&next.limits);
        if next.limits.max_connections != self.running.limits.max_connections {
            self.admission
                .set_max_connections(next.limits.max_connections, &self.runtime);
        }
        if let (Some(acceptor), Some(prepared)) = (&self.tls, tls) {
            acceptor.install(prepared, "reload request");
        }
        if let Some(rule) = anonymous {
            info!("config reload: {rule}");
        }
        if !changes.need_restart.is_empty() {
            warn!(
                keys = %changes.need_restart.join(", "),
                "config reload: these keys changed but need a restart; their running values are kept"
            );
        }
        let mut keys = new_keys;
        for key in &changes.need_restart {
            match self.keys.get(key) {
                Some(v) => keys.insert(key.clone(), v.clone()),
                None => keys.remove(key),
            };
        }
        self.keys = keys;
        self.running = next;
        let changed = if changes.applied.is_empty() {
            "none".to_owned()
        } else {
            changes.applied.join(", ")
        };
        let reread = if self.tls.is_some() {
            "password, ACL and TLS files"
        } else {
            "password and ACL files"
        };
        info!(
            file = %self.path.display(),
            %changed,
            "config reloaded ({reread} re-read; changed keys applied to new connections)"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Keys {
        effective_keys(text).expect("valid TOML")
    }

    /// issue #10 item 6: a key written with its default value is no change; other keys are
    /// split into reloadable and restart-only, including sections this module never names.
    #[test]
    fn changes_are_classified_per_key() {
        let base = keys("[log]\nlevel = \"info\"\n");
        assert_eq!(changes(&keys(""), &base), Changes::default());
        let new = keys(
            "[log]\nlevel = \"debug\"\n[listener]\nbind = \"0.0.0.0:1\"\n\
             [limits]\nmax_publish_rate = 5\nmax_inflight = 3\n[auth]\nacl_file = \"a\"\n\
             [somefuture]\nkey = 1\n",
        );
        let c = changes(&base, &new);
        assert_eq!(
            c.applied,
            ["auth.acl_file", "limits.max_publish_rate", "log.level"]
        );
        assert_eq!(
            c.need_restart,
            ["limits.max_inflight", "listener.bind", "somefuture.key"]
        );
        // A removed key is a change too (back to its default, or absent).
        let c = changes(&new, &base);
        assert!(c.applied.contains(&"auth.acl_file".to_owned()), "{c:?}");
        assert!(
            c.need_restart.contains(&"somefuture.key".to_owned()),
            "{c:?}"
        );
    }

    /// issue #10 item 6: every reloadable key exists in the schema (a typo would make it
    /// silently restart-only), and its `Take` copies a changed value (none is a no-op).
    #[test]
    fn reloadable_keys_exist_and_are_taken_over() {
        let text = "[log]\nlevel = \"debug\"\n\
             [limits]\nmax_connections = 7\nmax_publish_rate = 7\nmax_publish_bytes_rate = 7\n\
             max_conn_log_lines_per_s = 7\n\
             [auth]\nallow_anonymous = true\npassword_file = \"p\"\npassword_format = \"plaintext\"\n\
             acl_file = \"a\"\n";
        let new = Config::parse(text, std::path::Path::new("x")).expect("schema");
        let c = changes(&keys(""), &keys(text));
        assert!(c.need_restart.is_empty(), "{c:?}");
        for (key, take) in RELOADABLE {
            assert!(
                c.applied.iter().any(|k| k == key),
                "{key} is not in the schema"
            );
            let mut running = Config::default();
            take(&mut running, &new);
            assert_ne!(running, Config::default(), "{key} is not taken over");
        }
        assert_eq!(c.applied.len(), RELOADABLE.len());
    }

    /// issue #10 item 4: the image's configuration (docker/broker.toml) is valid and differs
    /// from the defaults in exactly the keys its header names.
    #[test]
    fn docker_config_is_the_defaults_but_for_its_documented_keys() {
        let text = include_str!("../../docker/broker.toml");
        let docker = Config::parse(text, std::path::Path::new("docker/broker.toml"))
            .expect("docker/broker.toml is valid");
        assert!(docker.persistence.enabled);
        let c = changes(&keys(""), &keys(text));
        let mut all = c.applied;
        all.extend(c.need_restart);
        all.sort();
        assert_eq!(
            all,
            [
                "listener.bind",
                "persistence.enabled",
                "persistence.path",
                "tls.bind",
                "websocket.bind"
            ]
        );
    }
}
