//! Bridges to upstream brokers (issue #11): one task per `[[bridge]]`, each a client of its
//! remote and, locally, a client of the broker like any other. L4: uses the broker (L2), the
//! codec (L1) and the config (L0); the broker knows nothing of bridges.
//!
//! The journal is the bridge's own persistent session `$bridge/NAME`: it subscribes to the
//! `out` filters, so the publish path queues (and, with persistence, stores) a copy for it
//! before the publisher's PUBACK/PUBREC goes out, exactly as for any persistent subscriber.
//! Invariant: a journaled message leaves the journal only when the remote acknowledged it.

mod link;
mod wire;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::admin::bridges::BridgeFigures;
use crate::broker::queue::{journal_age, Bound, QueueLimits};
use crate::broker::registry::Session;
use crate::broker::Broker;
use crate::config::BridgeConfig;
use crate::message::qos_from_u8;
use crate::topic::{ClientId, TopicFilter};

/// Counters of one bridge, for the logs, `/metrics` and the status page.
#[derive(Debug, Default)]
pub(crate) struct BridgeStats {
    /// The link to the remote is up (CONNACK accepted).
    pub(crate) connected: AtomicBool,
    /// Successful connections after the first one.
    pub(crate) reconnects: AtomicU64,
    /// Journaled messages the remote acknowledged (or QoS 0 ones written to it).
    pub(crate) forwarded: AtomicU64,
    /// Messages received from the remote and published locally.
    pub(crate) received: AtomicU64,
}

/// A running bridge, as seen from outside its task.
#[derive(Debug, Clone)]
pub(crate) struct BridgeHandle {
    pub(crate) name: String,
    pub(crate) stats: Arc<BridgeStats>,
    session: Arc<Session>,
}

/// What a bridge's journal holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JournalUsage {
    /// Messages waiting to be sent plus those sent and not yet acknowledged.
    pub(crate) messages: usize,
    /// Payload bytes of the messages waiting to be sent.
    pub(crate) queued_bytes: usize,
    /// Messages refused because the journal was at a bound.
    pub(crate) refused: u64,
    /// How long the oldest message not yet acknowledged by the remote has been in the
    /// journal (zero when it is empty); a message restored from disk counts from the restart.
    pub(crate) oldest_age: Duration,
}

impl BridgeHandle {
    pub(crate) fn journal(&self) -> JournalUsage {
        let st = self.session.lock();
        JournalUsage {
            messages: st.out.queued_len() + st.out.inflight_len(),
            queued_bytes: st.out.queued_bytes(),
            refused: self.session.dropped.load(Ordering::Relaxed),
            oldest_age: st
                .out
                .oldest()
                .map_or(Duration::ZERO, |d| journal_age(d.journaled_at)),
        }
    }

    /// What `/metrics`, the status page and the logs show of this bridge, read now.
    pub(crate) fn figures(&self) -> BridgeFigures {
        let j = self.journal();
        BridgeFigures {
            name: self.name.clone(),
            connected: self.stats.connected.load(Ordering::Relaxed),
            reconnects: self.stats.reconnects.load(Ordering::Relaxed),
            forwarded: self.stats.forwarded.load(Ordering::Relaxed),
            received: self.stats.received.load(Ordering::Relaxed),
            journal_messages: j.messages as u64,
            journal_bytes: j.queued_bytes as u64,
            journal_refused: j.refused,
            oldest_age_s: j.oldest_age.as_secs_f64(),
        }
    }
}

/// The local client id of a bridge's journal session.
fn journal_client_id(name: &str) -> ClientId {
    format!("{}{name}", crate::broker::registry::JOURNAL_PREFIX)
        .as_str()
        .into()
}

/// The TLS client configuration of a bridge, when it has `ca_file`; the error names the
/// bridge, the key and the file.
pub(crate) fn tls_config(cfg: &BridgeConfig) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    let Some(ca) = &cfg.ca_file else {
        return Ok(None);
    };
    let pair = match (&cfg.cert_file, &cfg.key_file) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        _ => None,
    };
    crate::transport::tls_client::client_config(&format!("bridge[{}]", cfg.name), ca, pair)
        .map(Some)
}

/// Attaches each bridge's journal session and subscribes its `out` filters (before the
/// listeners accept, so nothing published is missed), then spawns one link task per bridge.
/// Fails (starting nothing) if a bridge's TLS files cannot be used.
pub(crate) fn start(
    bridges: &[BridgeConfig],
    broker: &Broker,
    max_packet_size: usize,
    token: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<Vec<BridgeHandle>, String> {
    let tls: Vec<_> = bridges.iter().map(tls_config).collect::<Result<_, _>>()?;
    let mut handles = Vec::new();
    for (cfg, tls) in bridges.iter().zip(tls) {
        let rules = cfg.rules();
        let client_id = journal_client_id(&cfg.name);
        // Always a persistent session: the journal outlives outages (and, with persistence,
        // restarts). `clean_session` is the remote session's flag.
        let attached = broker.attach(&client_id, false, None);
        let session = attached.session.clone();
        session.bridge.store(true, Ordering::Relaxed);
        let base = broker.limits();
        let _ = session.limits.set(Box::new(QueueLimits {
            max_inflight: Bound::new(usize::from(cfg.max_inflight)),
            max_queued_messages: Bound::new(cfg.max_journal_messages),
            max_queued_bytes: Bound::new(cfg.max_journal_bytes),
            max_queued_bytes_total: base.max_queued_bytes_total,
            budget: base.budget.clone(),
        }));
        // The out filters of this configuration, replacing those of a previous one.
        let wanted: Vec<(TopicFilter, u8)> = rules
            .iter()
            .filter(|r| r.direction.out())
            .map(|r| (r.local_filter.clone(), r.qos))
            .collect();
        let stale: Vec<TopicFilter> = session
            .lock()
            .subscriptions
            .keys()
            .filter(|f| !wanted.iter().any(|(w, _)| w == *f))
            .cloned()
            .collect();
        for f in &stale {
            broker.unsubscribe(&session, f);
        }
        for (f, q) in &wanted {
            let qos = qos_from_u8(*q).unwrap_or(crate::message::QoS::AtMostOnce);
            broker.subscribe(&session, f, qos);
        }
        let stats = Arc::new(BridgeStats::default());
        let journal = {
            let st = session.lock();
            st.out.queued_len() + st.out.inflight_len()
        };
        info!(bridge = %cfg.name, addresses = ?cfg.addresses, journaled = journal,
            session_present = attached.session_present, "bridge starting");
        let link = link::Link::new(
            cfg.clone(),
            broker.clone(),
            attached,
            client_id,
            stats.clone(),
            max_packet_size,
            tls,
        );
        tracker.spawn(link.run(token.clone()));
        handles.push(BridgeHandle {
            name: cfg.name.clone(),
            stats,
            session,
        });
    }
    Ok(handles)
}

/// One line per bridge at shutdown: its counters and what its journal still holds.
pub(crate) fn log_summary(bridges: &[BridgeHandle]) {
    for b in bridges {
        let j = b.journal();
        info!(
            bridge = %b.name,
            forwarded = b.stats.forwarded.load(Ordering::Relaxed),
            received = b.stats.received.load(Ordering::Relaxed),
            reconnects = b.stats.reconnects.load(Ordering::Relaxed),
            journaled = j.messages,
            journaled_bytes = j.queued_bytes,
            refused_at_bound = j.refused,
            oldest_age_s = j.oldest_age.as_secs_f64(),
            "bridge stopped"
        );
    }
}
