//! Limits that hold under attack (the `[limits]` keys a flood meets): accept-time limits per
//! source address and overall, a client's inbound publish rate, and the folding of connection
//! log lines. L0: std and tracing; used by `session` (L3) and `server` (L4).
//! Invariants: every limit is off when its key is 0 and then costs nothing per message; all
//! state is bounded (per-address state ages out and is capped; see `accept`).
//! The global budget of queued bytes lives with the queues, in `broker::budget`.

pub(crate) mod accept;
mod bucket;
pub(crate) mod log_fold;
pub(crate) mod publish;

use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use tracing::info;

use crate::config::LimitsConfig;
use accept::Refusal;
use log_fold::LogFold;
use publish::PublishRate;

/// What every connection task needs of these limits (held in `session::ConnContext`).
#[derive(Debug)]
pub(crate) struct ConnLimits {
    /// `max_packet_size`, `connect_timeout_ms` and `max_keepalive_s`: read while a connection
    /// starts (never per message), replaced by a reload.
    pub(crate) bounds: ConnBounds,
    /// Connection log lines, folded above `max_conn_log_lines_per_s`.
    pub(crate) log: LogFold,
    /// `max_publish_rate` and `max_publish_bytes_rate`, copied into each new connection's
    /// limiter (read once per CONNECT, replaced by a reload).
    publish: RwLock<PublishRate>,
    /// Connections refused at accept, indexed by `Refusal as usize`.
    refused: [AtomicU64; 3],
}

impl ConnLimits {
    pub(crate) fn new(l: &LimitsConfig) -> ConnLimits {
        ConnLimits {
            bounds: ConnBounds::new(l),
            log: LogFold::new(l.max_conn_log_lines_per_s),
            publish: RwLock::new(PublishRate::new(l)),
            refused: Default::default(),
        }
    }

    /// The publish limiter of a new connection (`None` when both rates are off).
    pub(crate) fn publish_limiter(&self) -> Option<Box<publish::PublishLimiter>> {
        self.publish
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .limiter()
    }

    /// A reload: connections accepted from now on get these publish rates and bounds (connected
    /// clients keep theirs), and connection log lines fold at the new `max_conn_log_lines_per_s`.
    pub(crate) fn apply(&self, l: &LimitsConfig) {
        self.bounds.apply(l);
        *self.publish.write().unwrap_or_else(PoisonError::into_inner) = PublishRate::new(l);
        self.log.set_threshold(l.max_conn_log_lines_per_s);
    }

    /// Counts a connection refused at accept; returns how many `why` refused so far.
    pub(crate) fn note_refused(&self, why: Refusal) -> u64 {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed) + 1
    }

    /// At shutdown: the last summary of folded log lines, and the refusals per limit.
    pub(crate) fn log_summary(&self) {
        self.log.flush();
        let [per_ip_conns, per_ip_rate, overall_rate] =
            std::array::from_fn(|i| self.refused[i].load(Ordering::Relaxed));
        if per_ip_conns + per_ip_rate + overall_rate > 0 {
            info!(
                max_connections_per_ip = per_ip_conns,
                max_accept_rate_per_ip = per_ip_rate,
                max_accept_rate = overall_rate,
                "connections refused at accept, per limit"
            );
        }
    }
}

/// The `[limits]` a connection reads while it starts (its handshake and CONNECT): relaxed
/// atomics, so a reload changes them for connections that start afterwards without a lock, and
/// nothing on the per-message path reads them (a connection copies `max_packet_size` into its
/// reader once).
#[derive(Debug)]
pub(crate) struct ConnBounds {
    max_packet_size: AtomicUsize,
    connect_timeout_ms: AtomicU64,
    max_keepalive_s: AtomicU16,
}

impl ConnBounds {
    pub(crate) fn new(l: &LimitsConfig) -> ConnBounds {
        ConnBounds {
            max_packet_size: AtomicUsize::new(l.max_packet_size),
            connect_timeout_ms: AtomicU64::new(l.connect_timeout_ms),
            max_keepalive_s: AtomicU16::new(l.max_keepalive_s),
        }
    }

    pub(crate) fn apply(&self, l: &LimitsConfig) {
        self.max_packet_size
            .store(l.max_packet_size, Ordering::Relaxed);
        self.connect_timeout_ms
            .store(l.connect_timeout_ms, Ordering::Relaxed);
        self.max_keepalive_s
            .store(l.max_keepalive_s, Ordering::Relaxed);
    }

    /// `limits.max_packet_size`.
    pub(crate) fn max_packet_size(&self) -> usize {
        self.max_packet_size.load(Ordering::Relaxed)
    }

    /// `limits.connect_timeout_ms`.
    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms.load(Ordering::Relaxed))
    }

    /// `limits.max_keepalive_s`: the keep-alive cap in seconds (65535 = none).
    pub(crate) fn max_keepalive_s(&self) -> u16 {
        self.max_keepalive_s.load(Ordering::Relaxed)
    }
}
