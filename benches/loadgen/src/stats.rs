//! Counters and checkers: latency histogram, per-publisher sequence tracker,
//! and a rate pacer with catch-up.

use std::time::{Duration, Instant};

/// Log-linear histogram (128 sub-buckets per power of two, < 0.8% error),
/// fixed size, no allocation per sample.
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; ((64 - SUB_BITS as usize) + 1) << SUB_BITS],
            total: 0,
            max: 0,
        }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        if v < SUB {
            return v as usize;
        }
        let msb = 63 - v.leading_zeros();
        let shift = msb - SUB_BITS;
        let sub = (v >> shift) & (SUB - 1);
        (((shift as u64 + 1) << SUB_BITS) | sub) as usize
    }

    /// Highest value that maps to bucket `i`.
    fn upper(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB {
            return i;
        }
        let shift = (i >> SUB_BITS) - 1;
        let sub = i & (SUB - 1);
        ((SUB + sub) << shift) + ((1u64 << shift) - 1)
    }

    pub fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.total += o.total;
        self.max = self.max.max(o.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// Value at quantile `q` in [0, 1] (bucket upper bound, capped at max).
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::upper(i).min(self.max);
            }
        }
        self.max
    }
}

/// What a received sequence number turned out to be.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum SeqOutcome {
    /// First time seen, in order.
    New,
    /// First time seen, but a higher sequence was already seen earlier.
    OutOfOrder,
    Duplicate,
}

/// Tracks which sequence numbers of one publisher a subscriber has seen.
#[derive(Default)]
pub struct SeqTracker {
    seen: Vec<u64>,
    next: u64, // one past the highest sequence seen
    pub unique: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
}

impl SeqTracker {
    /// One past the highest sequence seen so far.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// The bitmap of sequences seen (bit `seq % 64` of word `seq / 64`).
    pub fn seen_words(&self) -> &[u64] {
        &self.seen
    }

    /// Record `seq`. The caller must have bounded `seq` (it sizes a bitmap).
    pub fn record(&mut self, seq: u64) -> SeqOutcome {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.seen.len() {
            let want = (word + 1).max(self.seen.len() * 2).max(1024);
            self.seen.resize(want, 0);
        }
        let mask = 1u64 << bit;
        if self.seen[word] & mask != 0 {
            self.duplicates += 1;
            return SeqOutcome::Duplicate;
        }
        self.seen[word] |= mask;
        self.unique += 1;
        if seq < self.next {
            self.out_of_order += 1;
            SeqOutcome::OutOfOrder
        } else {
            self.next = seq + 1;
            SeqOutcome::New
        }
    }
}

/// Rate pacer with catch-up: `due()` is the number of messages owed now, so
/// a coarse timer still holds the average rate.
pub struct Pacer {
    start: Instant,
    rate: Option<f64>,
    sent: u64,
    max_burst: u64,
}

impl Pacer {
    /// `rate` in messages per second; `None` = unlimited.
    pub fn new(start: Instant, rate: Option<f64>, max_burst: u64) -> Self {
        Self {
            start,
            rate,
            sent: 0,
            max_burst,
        }
    }

    pub fn due(&self, now: Instant) -> u64 {
        match self.rate {
            None => self.max_burst,
            Some(r) => {
                let owed = (now.saturating_duration_since(self.start).as_secs_f64() * r) as u64;
                owed.saturating_sub(self.sent).min(self.max_burst)
            }
        }
    }

    pub fn sent(&mut self, n: u64) {
        self.sent += n;
    }

    /// When the next message becomes due (None for unlimited).
    pub fn next_at(&self) -> Option<Instant> {
        self.rate
            .map(|r| self.start + Duration::from_secs_f64((self.sent + 1) as f64 / r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 / 5_000_000.0 - 1.0).abs() < 0.01, "{p50}");
        let p99 = h.quantile(0.99) as f64;
        assert!((p99 / 9_900_000.0 - 1.0).abs() < 0.01, "{p99}");
        assert_eq!(h.quantile(1.0), 10_000_000);
        for v in [0u64, 1, 127, 128, 129, 255, 256, 1 << 40, u64::MAX] {
            let i = Histogram::index(v);
            assert!(Histogram::upper(i) >= v, "{v}");
            if i > 0 {
                assert!(Histogram::upper(i - 1) < v, "{v}");
            }
        }
    }

    #[test]
    fn seq_tracker() {
        let mut t = SeqTracker::default();
        assert_eq!(t.record(0), SeqOutcome::New);
        assert_eq!(t.record(2), SeqOutcome::New);
        assert_eq!(t.record(1), SeqOutcome::OutOfOrder);
        assert_eq!(t.record(2), SeqOutcome::Duplicate);
        assert_eq!(t.record(100_000), SeqOutcome::New);
        assert_eq!((t.unique, t.duplicates, t.out_of_order), (4, 1, 1));
    }

    #[test]
    fn pacer_catches_up() {
        let start = Instant::now();
        let mut p = Pacer::new(start, Some(10_000.0), 1_000_000);
        assert_eq!(p.due(start + Duration::from_millis(5)), 50);
        p.sent(50);
        assert_eq!(p.due(start + Duration::from_millis(5)), 0);
        assert_eq!(p.due(start + Duration::from_millis(20)), 150);
    }
}
