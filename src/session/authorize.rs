//! Authentication and authorization of one connection: password checks on a few blocking
//! threads, a growing delay before each refusal per peer address, and the client's ACL as
//! the session's read gate and as the check of its PUBLISHes, SUBSCRIBEs and will.
//! L3: auth (L0), the broker's `ReadGate` (L2), tokio. Invariants: no password is verified on
//! an async worker and at most `Authorizer::slots` at once; the failure table is bounded; with
//! no `acl_file` nothing here runs per message.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::auth::{Auth, ClientAcl};
use crate::broker::registry::ReadGate;
use crate::limits::log_fold::{folded, Kind, LogFold};
use crate::protocol::codec::Connect;
use crate::topic::{ClientId, TopicFilter, TopicName};

/// The delay before the first refusal from an address; it doubles with each further refusal
/// counted for that address, up to `FAIL_DELAY_MAX`.
const FAIL_DELAY_FIRST: Duration = Duration::from_millis(100);
const FAIL_DELAY_MAX: Duration = Duration::from_secs(2);
/// An address's count is forgotten this long after its last refusal.
const FAIL_FORGET_AFTER: Duration = Duration::from_secs(60);
/// Addresses remembered at most; see `Failures::record` for what happens when it is full.
const FAIL_TABLE_MAX: usize = 10_000;
/// Password verifications running at most at once (each is ~0.1 s of one core by design):
/// the number of cores, at most this many, so logins never take every core.
const MAX_VERIFY_SLOTS: usize = 4;

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// CONNACK 0x05: wrong credentials, or anonymous when anonymous clients are refused.
    NotAuthorized,
    /// CONNACK 0x03: no verification slot freed within `limits.connect_timeout_ms`.
    Unavailable,
}

/// The loaded `Auth` plus what logins share at run time.
#[derive(Debug)]
pub(crate) struct Authorizer {
    /// Replaced whole by a reload (SIGHUP); read once or twice per login, never per message.
    auth: RwLock<Arc<Auth>>,
    slots: Semaphore,
    failures: Failures,
}

impl Authorizer {
    pub(crate) fn new(auth: Auth) -> Authorizer {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Authorizer {
            auth: RwLock::new(Arc::new(auth)),
            slots: Semaphore::new(cores.clamp(1, MAX_VERIFY_SLOTS)),
            failures: Failures::default(),
        }
    }

    /// The password file and ACL in force now.
    fn auth(&self) -> Arc<Auth> {
        self.auth
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Swaps in a newly loaded `Auth` (a reload): logins from now on use it; connected clients
    /// keep the ACL they got at CONNECT.
    pub(crate) fn replace(&self, auth: Auth) {
        *self.auth.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(auth);
    }

    /// Decides a CONNECT's credentials. A refusal is logged (through `log`, folded above
    /// `limits.max_conn_log_lines_per_s`) and answered only after a delay that grows with the
    /// refusals counted for the peer's address (`None` when shutting down meanwhile: close
    /// without answering).
    pub(super) async fn login(
        &self,
        peer: Option<IpAddr>,
        c: &Connect,
        wait: Duration,
        shutdown: &CancellationToken,
        log: &LogFold,
    ) -> Result<(), Option<Refusal>> {
        let auth = self.auth();
        let accepted = match auth.quick_decision(c.username.as_deref()) {
            Some(ok) => ok,
            None => {
                // Off the async workers, a bounded number at a time.
                let permit = tokio::select! {
                    _ = shutdown.cancelled() => return Err(None),
                    p = tokio::time::timeout(wait, self.slots.acquire()) => p,
                };
                let Ok(Ok(permit)) = permit else {
                    folded!(
                        log,
                        Kind::Refused,
                        warn,
                        "password verification busy for limits.connect_timeout_ms: refused (0x03)"
                    );
                    return Err(Some(Refusal::Unavailable));
                };
                let user = c.username.clone().unwrap_or_default();
                let password = c.password.clone();
                let ok = tokio::task::spawn_blocking(move || {
                    auth.verify_password(&user, password.as_deref())
                })
                .await
                .unwrap_or(false);
                drop(permit);
                ok
            }
        };
        if accepted {
            return Ok(());
        }
        let (failures, delay) = self.failures.record(peer, Instant::now());
        // [MQTT-3.2.2-4, -5] 0x05 as Mosquitto answers; nothing else is processed, no will.
        let username = c.username.as_deref().map(tracing::field::display);
        folded!(
            log,
            Kind::Refused,
            warn,
            username,
            failures,
            delay_ms = delay.as_millis() as u64,
            "not authorized: refused (0x05)"
        );
        tokio::select! {
            _ = shutdown.cancelled() => Err(None),
            _ = tokio::time::sleep(delay) => Err(Some(Refusal::NotAuthorized)),
        }
    }

    /// The ACL of an accepted client, or `None` without an `acl_file`.
    pub(super) fn session_acl(
        &self,
        client_id: &ClientId,
        username: Option<&str>,
    ) -> Option<Arc<SessionAcl>> {
        self.auth()
            .client_acl(client_id, username)
            .map(|acl| Arc::new(SessionAcl::new(acl)))
    }
}

/// Refused logins per peer address, to delay the next refusal.
#[derive(Debug, Default)]
struct Failures {
    /// Address (IPv6: its /64) -> (refusals counted, last refusal). One mutex: only refused
    /// logins take it, never the message path.
    table: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// The key of an address: IPv4 as is (also when IPv4-mapped), IPv6 by its /64, the block one
/// host usually has (counting single IPv6 addresses would let a host reset its count at will).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

/// The delay for the `n`th refusal (n >= 1) counted for an address.
fn delay_for(n: u32) -> Duration {
    let doublings = n.saturating_sub(1).min(16);
    (FAIL_DELAY_FIRST * (1u32 << doublings)).min(FAIL_DELAY_MAX)
}

impl Failures {
    /// Counts a refusal from `peer` at `now`; returns the count and the delay to apply.
    /// Bounded: at `FAIL_TABLE_MAX` addresses, entries older than `FAIL_FORGET_AFTER` are
    /// dropped first, then the one whose last refusal is oldest.
    fn record(&self, peer: Option<IpAddr>, now: Instant) -> (u32, Duration) {
        let Some(ip) = peer else {
            return (1, FAIL_DELAY_FIRST);
        };
        let key = address_key(ip);
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if !table.contains_key(&key) && table.len() >= FAIL_TABLE_MAX {
            table.retain(|_, (_, last)| now.saturating_duration_since(*last) < FAIL_FORGET_AFTER);
            if table.len() >= FAIL_TABLE_MAX {
                if let Some(oldest) = table
                    .iter()
                    .min_by_key(|(_, (_, last))| *last)
                    .map(|(k, _)| *k)
                {
                    table.remove(&oldest);
                }
            }
        }
        let entry = table.entry(key).or_insert((0, now));
        if now.saturating_duration_since(entry.1) >= FAIL_FORGET_AFTER {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        (entry.0, delay_for(entry.0))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().unwrap().len()
    }
}

/// One connection's ACL: the read gate its session asks for every delivery, and the checks of
/// its PUBLISHes, SUBSCRIBEs and will, which log denials.
#[derive(Debug)]
pub(crate) struct SessionAcl {
    acl: ClientAcl,
    created: Instant,
    /// Denials are logged at info at most once a second per connection (the rest at debug,
    /// counted into the next info line): a client must not drive the log at its message rate.
    last_info_s: AtomicU64,
    unlogged: AtomicU64,
}

impl ReadGate for SessionAcl {
    fn may_read(&self, topic: &TopicName) -> bool {
        self.acl.may_read(topic)
    }
}

impl SessionAcl {
    fn new(acl: ClientAcl) -> SessionAcl {
        SessionAcl {
            acl,
            created: Instant::now(),
            last_info_s: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        }
    }

    /// Whether the client may publish to `topic`; a denial is logged.
    pub(super) fn may_publish(&self, topic: &TopicName) -> bool {
        let ok = self.acl.may_write(topic);
        if !ok {
            self.log_denied(
                "PUBLISH denied by the ACL: acknowledged and dropped",
                topic.as_str(),
            );
        }
        ok
    }

    /// Whether a SUBSCRIBE to `filter` is granted (else SUBACK 0x80); a denial is logged.
    /// For `$share/{group}/{filter}` the ACL checks `{filter}`: what the subscription reads.
    pub(super) fn may_subscribe(&self, filter: &TopicFilter) -> bool {
        let ok = self.acl.may_subscribe(&filter.match_filter());
        if !ok {
            self.log_denied("SUBSCRIBE denied by the ACL: 0x80", &filter.to_string());
        }
        ok
    }

    /// Whether the will may be published (Mosquitto checks write access on the will topic).
    pub(super) fn may_publish_will(&self, topic: &TopicName) -> bool {
        let ok = self.acl.may_write(topic);
        if !ok {
            info!(topic = %topic, "will topic denied by the ACL: the will is discarded");
        }
        ok
    }

    fn log_denied(&self, what: &'static str, topic: &str) {
        let now_s = self.created.elapsed().as_secs() + 1;
        let last = self.last_info_s.load(Ordering::Relaxed);
        if now_s > last {
            self.last_info_s.store(now_s, Ordering::Relaxed);
            let unlogged = self.unlogged.swap(0, Ordering::Relaxed);
            if unlogged > 0 {
                info!(topic, denials_not_logged = unlogged, "{what}");
            } else {
                info!(topic, "{what}");
            }
        } else {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            debug!(topic, "{what}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// issue #9 item 1: the refusal delay starts small, doubles per refusal counted for the
    /// address and is capped; IPv6 addresses of one /64 share a count; a count is forgotten
    /// after FAIL_FORGET_AFTER.
    #[test]
    fn refusal_delay_grows_per_address_and_is_capped() {
        let f = Failures::default();
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let delays: Vec<u128> = (0..8)
            .map(|i| {
                f.record(Some(a), t0 + Duration::from_millis(i))
                    .1
                    .as_millis()
            })
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(f.record(Some(other), t0).1, FAIL_DELAY_FIRST);
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        f.record(Some(v6a), t0);
        assert_eq!(f.record(Some(v6b), t0).0, 2);
        let later = t0 + FAIL_FORGET_AFTER + Duration::from_secs(1);
        assert_eq!(f.record(Some(a), later), (1, FAIL_DELAY_FIRST));
        assert_eq!(delay_for(u32::MAX), FAIL_DELAY_MAX);
    }

    /// issue #9 item 1: The failure table stays within FAIL_TABLE_MAX addresses: stale entries go
    /// first, then the oldest one.
    #[test]
    fn failure_table_is_bounded() {
        let f = Failures::default();
        let t0 = Instant::now();
        for i in 0..(FAIL_TABLE_MAX as u32 + 500) {
            let ip = IpAddr::from(i.to_be_bytes());
            f.record(Some(ip), t0 + Duration::from_micros(u64::from(i)));
        }
        assert_eq!(f.len(), FAIL_TABLE_MAX);
        // The newest address kept its count; the first ones were evicted.
        let newest = IpAddr::from((FAIL_TABLE_MAX as u32 + 499).to_be_bytes());
        assert_eq!(f.record(Some(newest), t0 + Duration::from_secs(1)).0, 2);
        assert_eq!(
            f.record(
                Some(IpAddr::from(0u32.to_be_bytes())),
                t0 + Duration::from_secs(1)
            )
            .0,
            1
        );
        // Once everything is stale, a new address clears the table.
        let late = t0 + FAIL_FORGET_AFTER * 2;
        f.record(Some("198.51.100.1".parse().unwrap()), late);
        assert_eq!(f.len(), 1);
    }
}
