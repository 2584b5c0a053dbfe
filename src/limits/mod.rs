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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use tracing::info;

use crate::config::LimitsConfig;
use accept::Refusal;
use log_fold::LogFold;
use publish::PublishRate;

/// What every connection task needs of these limits (held in `session::ConnContext`).
#[derive(Debug)]
pub(crate) struct ConnLimits {
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

    /// A reload: connections accepted from now on get these publish rates (connected clients
    /// keep theirs), and connection log lines fold at the new `max_conn_log_lines_per_s`.
    pub(crate) fn apply(&self, l: &LimitsConfig) {
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
