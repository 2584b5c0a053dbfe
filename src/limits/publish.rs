//! A client's inbound publish rate (`limits.max_publish_rate`, `limits.max_publish_bytes_rate`),
//! enforced by pausing reads from its socket, never by dropping: TCP then slows the client.
//! L0: std only; the session loop owns the timer. Invariants: a connection without these
//! limits has no limiter (no allocation, no clock read); with them, the clock is read only
//! when a bucket runs dry or while paused, and a pause lasts until the bucket is half full
//! again, so a limited client costs one timer per burst, not per message.

use std::time::{Duration, Instant};

use super::bucket::{Bucket, Rate};
use crate::config::LimitsConfig;

/// The configured rates; copied into each connection's limiter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PublishRate {
    msgs: Option<Rate>,
    bytes: Option<Rate>,
}

impl PublishRate {
    pub(crate) fn new(l: &LimitsConfig) -> PublishRate {
        // A tenth of a second's worth at once: small enough that the average over any second
        // stays close to the rate, large enough to batch. A larger message still passes (the
        // bucket goes into debt) and the pause that follows repays it.
        let rate = |per_s: u64| (per_s > 0).then(|| Rate::new(per_s, per_s / 10));
        PublishRate {
            msgs: rate(l.max_publish_rate),
            bytes: rate(l.max_publish_bytes_rate),
        }
    }

    /// A limiter for one connection, or `None` when both rates are off.
    pub(crate) fn limiter(&self) -> Option<Box<PublishLimiter>> {
        if self.msgs.is_none() && self.bytes.is_none() {
            return None;
        }
        let full = |r: &Option<Rate>| {
            r.as_ref()
                .map_or(Bucket::full(&Rate::new(1, 1), 0), |r| Bucket::full(r, 0))
        };
        Some(Box::new(PublishLimiter {
            rate: *self,
            origin: Instant::now(),
            msgs: full(&self.msgs),
            bytes: full(&self.bytes),
            paused_until: None,
            pause_ms: 0,
        }))
    }
}

/// One connection's buckets and its pause.
#[derive(Debug)]
pub(crate) struct PublishLimiter {
    rate: PublishRate,
    origin: Instant,
    msgs: Bucket,
    bytes: Bucket,
    /// Reads are paused until then.
    paused_until: Option<Instant>,
    /// How long the current (or last) pause lasts, in milliseconds.
    pause_ms: u64,
}

impl PublishLimiter {
    /// Charges one PUBLISH with `payload` bytes. Returns how long to stop reading when the
    /// client is now over a rate (the pause has started; the caller arranges to be woken when
    /// it ends), or `None`.
    pub(crate) fn charge(&mut self, payload: usize) -> Option<Duration> {
        let over_msgs = self.rate.msgs.is_some() && self.msgs.debit(1.0);
        let over_bytes = self.rate.bytes.is_some() && self.bytes.debit(payload as f64);
        if !(over_msgs || over_bytes) {
            return None;
        }
        let now = Instant::now();
        let now_us = now.duration_since(self.origin).as_micros() as u64;
        let mut wait_us = 0;
        for (rate, bucket) in [
            (&self.rate.msgs, &mut self.msgs),
            (&self.rate.bytes, &mut self.bytes),
        ] {
            if let Some(rate) = rate {
                bucket.refill(rate, now_us);
                wait_us = wait_us.max(bucket.wait_us(rate, rate.capacity() / 2.0));
            }
        }
        if wait_us == 0 {
            return None;
        }
        let wait = Duration::from_micros(wait_us);
        self.paused_until = Some(now + wait);
        self.pause_ms = wait.as_millis() as u64;
        Some(wait)
    }

    /// Whether reads are paused; a pause that is over ends here (one clock read, only while
    /// paused).
    pub(crate) fn is_paused(&mut self) -> bool {
        match self.paused_until {
            Some(t) if Instant::now() >= t => {
                self.paused_until = None;
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// How long the current pause lasts, in milliseconds, from its start.
    pub(crate) fn pause_ms(&self) -> u64 {
        self.pause_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(msgs: u64, bytes: u64) -> PublishRate {
        PublishRate::new(&LimitsConfig {
            max_publish_rate: msgs,
            max_publish_bytes_rate: bytes,
            ..LimitsConfig::default()
        })
    }

    /// issue #9 item 5: both rates 0 (the default): no limiter at all.
    #[test]
    fn off_means_no_limiter() {
        assert!(rates(0, 0).limiter().is_none());
    }

    /// issue #9 item 5: a burst of a tenth of the rate passes, then the client is paused until
    /// the bucket is half full again.
    #[test]
    fn message_rate_pauses_after_its_burst() {
        let mut l = rates(1000, 0).limiter().unwrap();
        let passed = (0..1000).take_while(|_| l.charge(10).is_none()).count();
        assert_eq!(
            passed, 100,
            "100 tokens; the 101st goes into debt and pauses"
        );
        assert!(l.is_paused());
        // 1 token of debt + 50 to half full, at 1000/s: about 51 ms.
        assert!((50..=51).contains(&l.pause_ms()), "{}", l.pause_ms());
        assert!(l.charge(0).is_some(), "still over");
    }

    /// issue #9 item 5: the byte rate: a message larger than the burst passes and the pause
    /// that follows repays it.
    #[test]
    fn byte_rate_lets_a_large_message_through_then_pauses_for_it() {
        let mut l = rates(0, 10_000).limiter().unwrap();
        let wait = l.charge(5_000).expect("over: 1,000 tokens, 5,000 bytes");
        // 4,000 bytes of debt + 500 to half full, at 10,000/s: 450 ms (a little less as the
        // clock moved since the bucket was created).
        assert!(
            wait > Duration::from_millis(440) && wait <= Duration::from_millis(450),
            "{wait:?}"
        );
    }

    /// issue #9 item 5: the pause ends by itself once its time is over.
    #[test]
    fn pause_ends_when_its_time_is_over() {
        let mut l = rates(100, 0).limiter().unwrap();
        let passed = (0..20).take_while(|_| l.charge(1).is_none()).count();
        assert_eq!(passed, 10, "a burst of 10, the 11th pauses");
        // 1 token of debt + 5 to half full, at 100/s: 60 ms.
        assert!((55..=60).contains(&l.pause_ms()), "{}", l.pause_ms());
        assert!(l.is_paused());
        std::thread::sleep(Duration::from_millis(70));
        assert!(!l.is_paused());
        assert!(l.charge(1).is_none(), "5 tokens after the pause");
    }
}
