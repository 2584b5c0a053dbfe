//! The global budget of queued payload bytes (`limits.max_queued_bytes_total`), shared fairly.
//! L2: atomics only; every queue operation reaches it through `QueueLimits::budget`.
//! Invariants: `used` is the payload bytes in all session queues (a discarded session gives its
//! bytes back); a refused delivery never takes it past `max`; per message, one atomic add and
//! one sub on `used`; the count of queueing sessions moves only when a queue crosses
//! `heavy_from` bytes, so subscribers that keep up never touch it.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::queue::QueueFull;

/// Above this share of `max`, a session over its fair share (this share of `max` over the
/// queueing sessions) is refused; the rest is kept for sessions within their share.
const FAIR_SHARE_FROM: (usize, usize) = (3, 4);
/// A session counts as queueing from this many bytes (or 1/1024 of a smaller budget); a fair
/// share is never smaller.
const HEAVY_FROM_MAX: usize = 64 * 1024;

/// The shared counters.
#[derive(Debug)]
pub(crate) struct QueueBudget {
    max: usize,
    /// From here on, sessions over their fair share are refused.
    soft: usize,
    /// Queued bytes from which a session counts in the fair share.
    heavy_from: usize,
    /// Payload bytes queued in all sessions.
    used: AtomicUsize,
    /// Sessions holding at least `heavy_from` bytes.
    queueing: AtomicUsize,
}

impl QueueBudget {
    /// A budget of `max` bytes (non-zero).
    pub(crate) fn new(max: usize) -> QueueBudget {
        QueueBudget {
            max,
            soft: max / FAIR_SHARE_FROM.1 * FAIR_SHARE_FROM.0,
            heavy_from: (max / 1024).clamp(1, HEAVY_FROM_MAX),
            used: AtomicUsize::new(0),
            queueing: AtomicUsize::new(0),
        }
    }

    /// May a session holding `queued` bytes queue `len` more? Below three quarters of the
    /// budget, yes; up to the budget, only if it stays within its fair share; at the budget,
    /// no. So the last quarter is kept for sessions within their share: heavy users cannot fill
    /// it, and a session that starts queueing while they are at it still gets room.
    pub(crate) fn admit(&self, queued: usize, len: usize) -> Result<(), QueueFull> {
        let used = self.used.load(Ordering::Relaxed);
        if used.saturating_add(len) <= self.soft {
            return Ok(());
        }
        if used.saturating_add(len) > self.max {
            return Err(QueueFull::TotalBytes);
        }
        let after = queued.saturating_add(len);
        let joining = queued < self.heavy_from && after >= self.heavy_from;
        if after > self.fair_share(joining) {
            return Err(QueueFull::FairShare);
        }
        Ok(())
    }

    /// Three quarters of the budget divided among the queueing sessions (plus one for a
    /// session about to join them), and never less than `heavy_from`.
    pub(crate) fn fair_share(&self, joining: bool) -> usize {
        let queueing = self.queueing.load(Ordering::Relaxed) + usize::from(joining);
        (self.soft / queueing.max(1)).max(self.heavy_from)
    }

    /// `len` bytes were queued by a session that held `before`.
    pub(crate) fn add(&self, before: usize, len: usize) {
        self.used.fetch_add(len, Ordering::Relaxed);
        if before < self.heavy_from && before + len >= self.heavy_from {
            self.queueing.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `len` bytes left the queue of a session that held `before`.
    pub(crate) fn sub(&self, before: usize, len: usize) {
        self.used.fetch_sub(len, Ordering::Relaxed);
        if before >= self.heavy_from && before - len < self.heavy_from {
            self.queueing.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// (bytes queued, queueing sessions, budget).
    pub(crate) fn usage(&self) -> (usize, usize, usize) {
        (
            self.used.load(Ordering::Relaxed),
            self.queueing.load(Ordering::Relaxed),
            self.max,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// issue #9 item 5: below three quarters anyone queues; then only sessions within their
    /// fair share; at the budget nobody. (A budget this small counts every byte as queueing.)
    #[test]
    fn fair_share_applies_from_three_quarters_and_the_budget_is_hard() {
        let b = QueueBudget::new(1000);
        // One heavy session takes the first three quarters, and no more even alone.
        b.admit(0, 750).unwrap();
        b.add(0, 750);
        assert_eq!(b.admit(750, 1), Err(QueueFull::FairShare));
        // A light session joins: 2 sessions, fair share 375; the heavy one is still over it.
        b.admit(0, 100).unwrap();
        b.add(0, 100);
        assert_eq!(b.fair_share(false), 375);
        assert_eq!(
            b.admit(750, 10),
            Err(QueueFull::FairShare),
            "heavy is over its share"
        );
        b.admit(100, 100).unwrap();
        b.add(100, 100);
        assert_eq!(b.usage(), (950, 2, 1000));
        assert_eq!(
            b.admit(200, 51),
            Err(QueueFull::TotalBytes),
            "past the budget"
        );
        b.admit(200, 50).unwrap();
        // Below three quarters again: the heavy session may queue.
        b.sub(750, 750);
        b.admit(0, 10).unwrap();
        assert_eq!(b.usage(), (200, 1, 1000));
    }

    /// issue #9 item 5: only queues of `heavy_from` bytes or more count in the fair share, so a
    /// queue that comes and goes empty does not touch the count; a share is never below it.
    #[test]
    fn only_sessions_holding_heavy_from_bytes_count_in_the_fair_share() {
        let b = QueueBudget::new(1 << 30);
        assert_eq!(b.heavy_from, 64 * 1024);
        b.add(0, 100);
        b.sub(100, 100);
        b.add(0, 100);
        assert_eq!(b.usage().1, 0, "100 bytes is not queueing");
        b.add(100, 64 * 1024);
        assert_eq!(b.usage().1, 1, "crossed 64 KiB");
        b.sub(64 * 1024 + 100, 200);
        assert_eq!(b.usage(), (64 * 1024 - 100, 0, 1 << 30));
        let small = QueueBudget::new(4096);
        assert_eq!((small.heavy_from, small.fair_share(false)), (4, 3072));
    }
}
