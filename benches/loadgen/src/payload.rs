//! Benchmark payload layout and the shared process clock.
//!
//! Layout (big endian): `[publisher u32][sequence u64][send time ns u64]`
//! followed by filler bytes `(seq as u8).wrapping_add(i)`, so a receiver can
//! verify the whole payload and compute end-to-end latency against the same
//! clock (publisher and subscriber live in this process).

use std::sync::OnceLock;
use std::time::Instant;

pub const HEADER: usize = 20;

static START: OnceLock<Instant> = OnceLock::new();

/// The shared process-start instant. Call once early in `main`.
pub fn clock_start() -> Instant {
    *START.get_or_init(Instant::now)
}

/// Nanoseconds since process start.
pub fn now_ns() -> u64 {
    clock_start().elapsed().as_nanos() as u64
}

/// Fill `out` (length = payload size, >= HEADER) for one message.
pub fn write(out: &mut [u8], publisher: u32, seq: u64, ts_ns: u64) {
    out[0..4].copy_from_slice(&publisher.to_be_bytes());
    out[4..12].copy_from_slice(&seq.to_be_bytes());
    out[12..20].copy_from_slice(&ts_ns.to_be_bytes());
    let base = seq as u8;
    for (i, b) in out[HEADER..].iter_mut().enumerate() {
        *b = base.wrapping_add(i as u8);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub publisher: u32,
    pub seq: u64,
    pub ts_ns: u64,
}

/// Decode and verify a payload. `None` if it is too short, or the filler is
/// wrong, or its length differs from `expected_len`.
pub fn read(p: &[u8], expected_len: usize) -> Option<Header> {
    if p.len() != expected_len || p.len() < HEADER {
        return None;
    }
    let publisher = u32::from_be_bytes(p[0..4].try_into().ok()?);
    let seq = u64::from_be_bytes(p[4..12].try_into().ok()?);
    let ts_ns = u64::from_be_bytes(p[12..20].try_into().ok()?);
    let base = seq as u8;
    let filler_ok = p[HEADER..]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == base.wrapping_add(i as u8));
    filler_ok.then_some(Header {
        publisher,
        seq,
        ts_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_corruption() {
        let mut buf = vec![0u8; 64];
        write(&mut buf, 3, 1_000_000_007, 123);
        assert_eq!(
            read(&buf, 64),
            Some(Header {
                publisher: 3,
                seq: 1_000_000_007,
                ts_ns: 123
            })
        );
        assert_eq!(read(&buf, 65), None);
        buf[40] ^= 1;
        assert_eq!(read(&buf, 64), None);
    }
}
