//! Token buckets on an explicit clock (microseconds since an origin the owner picks), so the
//! arithmetic is testable without sleeping. L0: no I/O, no locks, no clock reads.
//! Invariant: a bucket never holds more than its capacity; it may go into debt (a charge larger
//! than what it holds), and then reports how long the debt takes to repay.

/// How fast a bucket refills and how much it holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rate {
    /// Tokens added per second.
    per_s: f64,
    /// Most tokens the bucket holds (the burst).
    capacity: f64,
}

impl Rate {
    /// `per_s` tokens a second, at most `burst` at once (at least one token).
    pub(crate) fn new(per_s: u64, burst: u64) -> Rate {
        Rate {
            per_s: per_s as f64,
            capacity: burst.max(1) as f64,
        }
    }

    pub(crate) fn capacity(&self) -> f64 {
        self.capacity
    }
}

/// The changing part of a bucket: what it holds and when it was last refilled. Kept apart from
/// `Rate` so a table of buckets (one per source address) stores only this.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Bucket {
    tokens: f64,
    last_us: u64,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn full(rate: &Rate, now_us: u64) -> Bucket {
        Bucket {
            tokens: rate.capacity,
            last_us: now_us,
        }
    }

    /// Adds what accrued since the last refill, up to the capacity. A clock that went backwards
    /// adds nothing.
    pub(crate) fn refill(&mut self, rate: &Rate, now_us: u64) {
        if now_us > self.last_us {
            let accrued = (now_us - self.last_us) as f64 * rate.per_s / 1e6;
            self.tokens = (self.tokens + accrued).min(rate.capacity);
            self.last_us = now_us;
        }
    }

    /// Holds at most `rate`'s capacity (after a reload lowered it).
    pub(crate) fn clamp(&mut self, rate: &Rate) {
        self.tokens = self.tokens.min(rate.capacity);
    }

    /// Admission: takes one token if the bucket has one now.
    pub(crate) fn try_take(&mut self, rate: &Rate, now_us: u64) -> bool {
        self.refill(rate, now_us);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes `n` tokens without looking at the clock, going into debt if needed; true while the
    /// bucket is in debt (the caller then refills and asks `wait_us`).
    pub(crate) fn debit(&mut self, n: f64) -> bool {
        self.tokens -= n;
        self.tokens < 0.0
    }

    /// Microseconds until the bucket holds `level` tokens again (0 if it does now).
    pub(crate) fn wait_us(&self, rate: &Rate, level: f64) -> u64 {
        let missing = level.min(rate.capacity) - self.tokens;
        if missing <= 0.0 || rate.per_s <= 0.0 {
            0
        } else {
            (missing * 1e6 / rate.per_s).ceil() as u64
        }
    }

    /// Whether the bucket would be full at `now_us` (then forgetting it loses nothing).
    pub(crate) fn is_full_at(&self, rate: &Rate, now_us: u64) -> bool {
        let mut b = *self;
        b.refill(rate, now_us);
        b.tokens >= rate.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    /// A full bucket admits its burst at once, then one token per 1/rate.
    #[test]
    fn admits_burst_then_rate() {
        let rate = Rate::new(10, 5);
        let mut b = Bucket::full(&rate, 0);
        assert_eq!((0..20).filter(|_| b.try_take(&rate, 0)).count(), 5);
        assert!(!b.try_take(&rate, S / 20), "half a token");
        assert!(b.try_take(&rate, S / 10));
        // Over 10 s a caller trying constantly gets the rate, never more than burst + rate x t.
        let got = (0..10_000)
            .filter(|i| b.try_take(&rate, S / 10 + i * S / 1000))
            .count();
        assert!((99..=101).contains(&got), "{got}");
    }

    /// The bucket never holds more than its capacity, however long it rests.
    #[test]
    fn refill_is_capped() {
        let rate = Rate::new(1000, 3);
        let mut b = Bucket::full(&rate, 0);
        assert!(b.try_take(&rate, 0));
        assert!(b.is_full_at(&rate, 3600 * S));
        let mut b2 = b;
        b2.refill(&rate, 3600 * S);
        assert_eq!(b2.tokens, 3.0);
        assert!(!b.is_full_at(&rate, 0));
    }

    /// Debt: a charge larger than the bucket is allowed and repaid at the rate.
    #[test]
    fn debit_goes_into_debt_and_reports_the_wait() {
        let rate = Rate::new(1000, 100);
        let mut b = Bucket::full(&rate, 0);
        assert!(!b.debit(100.0));
        assert!(b.debit(400.0), "400 tokens in debt");
        assert_eq!(b.wait_us(&rate, 0.0), 400_000);
        assert_eq!(b.wait_us(&rate, 50.0), 450_000);
        assert_eq!(b.wait_us(&rate, 1e9), 500_000, "level capped at capacity");
        b.refill(&rate, 400_000);
        assert_eq!(b.wait_us(&rate, 0.0), 0);
    }

    /// A clock that goes backwards adds nothing and breaks nothing.
    #[test]
    fn clock_going_backwards_adds_nothing() {
        let rate = Rate::new(1, 1);
        let mut b = Bucket::full(&rate, 10 * S);
        assert!(b.try_take(&rate, 10 * S));
        assert!(!b.try_take(&rate, 0));
        assert!(b.try_take(&rate, 11 * S));
    }
}
