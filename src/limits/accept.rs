//! The accept gate: connection rate per source address and overall (token buckets), and
//! connections per source address. Used by the accept loop (L4); depends on L0 only.
//! Invariants: per-address state is bounded: an address is tracked while it holds connections
//! or its bucket is not full again (swept at most once a second), and at most
//! `max_connections + 65,536` addresses are (beyond that, new ones share one entry). IPv6
//! counts per /64, an IPv4-mapped address as its IPv4 address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::bucket::{Bucket, Rate};
use crate::config::LimitsConfig;

/// Addresses tracked beyond those that hold connections (see the module invariant).
const SPARE_ENTRIES: usize = 65_536;
/// How often, at most, entries that carry no information any more are swept.
const SWEEP_EVERY_US: u64 = 1_000_000;

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `limits.max_connections_per_ip`.
    ConnectionsPerIp = 0,
    /// `limits.max_accept_rate_per_ip`.
    RatePerIp = 1,
    /// `limits.max_accept_rate`.
    Rate = 2,
}

impl Refusal {
    /// The `[limits]` key that refused it.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Refusal::ConnectionsPerIp => "max_connections_per_ip",
            Refusal::RatePerIp => "max_accept_rate_per_ip",
            Refusal::Rate => "max_accept_rate",
        }
    }
}

/// The unit a per-address limit counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    /// The /64 prefix.
    V6(u64),
    /// Every address that arrived while the table was full.
    Overflow,
}

impl Source {
    fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4.into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.into()),
                None => Source::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

#[derive(Debug)]
struct Entry {
    bucket: Bucket,
    conns: u32,
}

/// Per-address state, shared by the accept loop and the connections' `Admitted` guards.
#[derive(Debug)]
struct Table {
    entries: HashMap<Source, Entry>,
    max_entries: usize,
    last_sweep_us: u64,
}

/// Accept-time limits. Every check is off (no state, no lock) when its key is 0.
#[derive(Debug)]
pub(crate) struct AcceptGate {
    origin: Instant,
    per_ip: Option<Rate>,
    max_conns_per_ip: u32,
    overall: Option<(Rate, Bucket)>,
    /// Only when a per-address limit is on.
    table: Option<Arc<Mutex<Table>>>,
}

/// Held by an admitted connection: gives its per-address count back when dropped.
#[derive(Debug)]
pub(crate) struct Admitted {
    counted: Option<(Arc<Mutex<Table>>, Source)>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some((table, source)) = self.counted.take() {
            let mut t = lock(&table);
            if let Some(e) = t.entries.get_mut(&source) {
                e.conns = e.conns.saturating_sub(1);
            }
        }
    }
}

/// A poisoned lock is recovered: the table is plain data that every critical section leaves
/// consistent.
fn lock(table: &Mutex<Table>) -> MutexGuard<'_, Table> {
    table.lock().unwrap_or_else(|p| p.into_inner())
}

impl AcceptGate {
    pub(crate) fn new(l: &LimitsConfig) -> AcceptGate {
        AcceptGate::starting_at(l, Instant::now())
    }

    fn starting_at(l: &LimitsConfig, origin: Instant) -> AcceptGate {
        let per_ip = (l.max_accept_rate_per_ip > 0)
            .then(|| Rate::new(l.max_accept_rate_per_ip, l.accept_burst_per_ip));
        let overall = (l.max_accept_rate > 0).then(|| {
            let rate = Rate::new(l.max_accept_rate, l.accept_burst);
            (rate, Bucket::full(&rate, 0))
        });
        let max_conns_per_ip = u32::try_from(l.max_connections_per_ip).unwrap_or(u32::MAX);
        let table = (per_ip.is_some() || max_conns_per_ip > 0).then(|| {
            Arc::new(Mutex::new(Table {
                entries: HashMap::new(),
                max_entries: l.max_connections.saturating_add(SPARE_ENTRIES),
                last_sweep_us: 0,
            }))
        });
        AcceptGate {
            origin,
            per_ip,
            max_conns_per_ip,
            overall,
            table,
        }
    }

    /// A reload: the new rates, bursts and `max_connections_per_ip` decide from now on. The
    /// per-address table is kept, with every address's connection count and bucket (a bucket
    /// holding more than the new burst is cut down to it); the overall bucket likewise. A
    /// per-address limit turned on where none was counts only connections accepted from now on
    /// (before, no table was kept: an off limit costs nothing).
    pub(crate) fn set_limits(&mut self, l: &LimitsConfig) {
        let now_us = self.origin.elapsed().as_micros() as u64;
        self.set_limits_at(l, now_us);
    }

    fn set_limits_at(&mut self, l: &LimitsConfig, now_us: u64) {
        self.per_ip = (l.max_accept_rate_per_ip > 0)
            .then(|| Rate::new(l.max_accept_rate_per_ip, l.accept_burst_per_ip));
        self.max_conns_per_ip = u32::try_from(l.max_connections_per_ip).unwrap_or(u32::MAX);
        self.overall = (l.max_accept_rate > 0).then(|| {
            let rate = Rate::new(l.max_accept_rate, l.accept_burst);
            let mut bucket = match self.overall {
                Some((_, b)) => b,
                None => Bucket::full(&rate, now_us),
            };
            bucket.clamp(&rate);
            (rate, bucket)
        });
        let max_entries = l.max_connections.saturating_add(SPARE_ENTRIES);
        match &self.table {
            Some(table) => {
                let mut t = lock(table);
                t.max_entries = max_entries;
                let rate = self.per_ip.unwrap_or(Rate::new(1, 1));
                for e in t.entries.values_mut() {
                    e.bucket.clamp(&rate);
                }
            }
            None if self.per_ip.is_some() || self.max_conns_per_ip > 0 => {
                self.table = Some(Arc::new(Mutex::new(Table {
                    entries: HashMap::new(),
                    max_entries,
                    last_sweep_us: 0,
                })));
            }
            None => {}
        }
    }

    /// Decides on a connection from `ip`, accepted now.
    pub(crate) fn admit(&mut self, ip: IpAddr) -> Result<Admitted, Refusal> {
        if self.table.is_none() && self.overall.is_none() {
            return Ok(Admitted { counted: None });
        }
        let now_us = self.origin.elapsed().as_micros() as u64;
        self.admit_at(ip, now_us)
    }

    fn admit_at(&mut self, ip: IpAddr, now_us: u64) -> Result<Admitted, Refusal> {
        let Some(table) = &self.table else {
            take_overall(&mut self.overall, now_us)?;
            return Ok(Admitted { counted: None });
        };
        let mut t = lock(table);
        let source = t.source_for(Source::of(ip), now_us, self.per_ip.as_ref());
        let rate = self.per_ip.unwrap_or(Rate::new(1, 1));
        let e = t.entries.entry(source).or_insert(Entry {
            bucket: Bucket::full(&rate, now_us),
            conns: 0,
        });
        if self.max_conns_per_ip > 0 && e.conns >= self.max_conns_per_ip {
            return Err(Refusal::ConnectionsPerIp);
        }
        if self.per_ip.is_some() && !e.bucket.try_take(&rate, now_us) {
            return Err(Refusal::RatePerIp);
        }
        // Checked last: an address over its own limit does not use up everyone's.
        take_overall(&mut self.overall, now_us)?;
        e.conns += 1;
        Ok(Admitted {
            counted: Some((table.clone(), source)),
        })
    }

    /// Addresses tracked now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.table.as_ref().map_or(0, |t| lock(t).entries.len())
    }
}

/// Takes one token of the overall rate, if it is on.
fn take_overall(overall: &mut Option<(Rate, Bucket)>, now_us: u64) -> Result<(), Refusal> {
    match overall {
        Some((rate, bucket)) => match bucket.try_take(rate, now_us) {
            true => Ok(()),
            false => Err(Refusal::Rate),
        },
        None => Ok(()),
    }
}

impl Table {
    /// The entry `source` is counted under: itself, or `Overflow` when the table is full.
    fn source_for(&mut self, source: Source, now_us: u64, rate: Option<&Rate>) -> Source {
        let due = now_us.saturating_sub(self.last_sweep_us) >= SWEEP_EVERY_US;
        let full = self.entries.len() >= self.max_entries;
        if due || (full && !self.entries.contains_key(&source)) {
            self.sweep(now_us, rate);
        }
        if self.entries.len() >= self.max_entries && !self.entries.contains_key(&source) {
            Source::Overflow
        } else {
            source
        }
    }

    /// Forgets addresses without connections whose bucket is full again: tracking them longer
    /// would change no decision.
    fn sweep(&mut self, now_us: u64, rate: Option<&Rate>) {
        self.last_sweep_us = now_us;
        self.entries
            .retain(|_, e| e.conns > 0 || rate.is_some_and(|r| !e.bucket.is_full_at(r, now_us)));
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const S: u64 = 1_000_000;

    fn limits(f: impl FnOnce(&mut LimitsConfig)) -> LimitsConfig {
        let mut l = LimitsConfig {
            max_accept_rate_per_ip: 0,
            accept_burst_per_ip: 1,
            max_accept_rate: 0,
            accept_burst: 1,
            max_connections_per_ip: 0,
            ..LimitsConfig::default()
        };
        f(&mut l);
        l
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// issue #9 item 5: every accept-time limit off: no state, everything admitted.
    #[test]
    fn all_off_admits_everything_and_tracks_nothing() {
        let mut g = AcceptGate::new(&limits(|_| {}));
        for _ in 0..1000 {
            assert!(g.admit(ip("10.0.0.1")).is_ok());
        }
        assert_eq!(g.tracked(), 0);
    }

    /// issue #9 item 5: the per-address rate refuses an address over its burst and rate while
    /// another address is still admitted.
    #[test]
    fn per_ip_rate_refuses_one_address_not_another() {
        let mut g = AcceptGate::new(&limits(|l| {
            l.max_accept_rate_per_ip = 10;
            l.accept_burst_per_ip = 3;
        }));
        let a = ip("10.0.0.1");
        let held: Vec<_> = (0..3).map(|_| g.admit_at(a, 0).unwrap()).collect();
        assert_eq!(g.admit_at(a, 0).unwrap_err(), Refusal::RatePerIp);
        assert!(g.admit_at(ip("10.0.0.2"), 0).is_ok());
        assert!(g.admit_at(a, S / 10).is_ok(), "one token after 100 ms");
        drop(held);
    }

    /// issue #10 item 6: a reload lowers the per-address connection limit and rate in place:
    /// connections admitted before still count (and are given back when they end), a bucket is
    /// cut down to the new burst, and the overall rate turned on applies at once.
    #[test]
    fn set_limits_keeps_per_address_counts() {
        let mut g = AcceptGate::new(&limits(|l| {
            l.max_connections_per_ip = 10;
            l.max_accept_rate_per_ip = 100;
            l.accept_burst_per_ip = 100;
        }));
        let a = ip("10.0.0.1");
        let mut held: Vec<_> = (0..3).map(|_| g.admit_at(a, 0).unwrap()).collect();
        g.set_limits_at(
            &limits(|l| {
                l.max_connections_per_ip = 3;
                l.max_accept_rate_per_ip = 1;
                l.accept_burst_per_ip = 2;
            }),
            0,
        );
        assert_eq!(g.admit_at(a, 0).unwrap_err(), Refusal::ConnectionsPerIp);
        held.pop();
        held.push(g.admit_at(a, 0).expect("a count given back is free again"));
        held.clear();
        // The bucket held 96 tokens, cut to the new burst of 2: one is left, then refused.
        held.push(g.admit_at(a, 0).unwrap());
        assert_eq!(g.admit_at(a, 0).unwrap_err(), Refusal::RatePerIp);
        // The overall rate turned on applies at once.
        g.set_limits_at(
            &limits(|l| {
                l.max_accept_rate = 1;
                l.accept_burst = 1;
            }),
            0,
        );
        held.push(g.admit_at(ip("10.0.0.2"), 0).unwrap());
        assert_eq!(g.admit_at(ip("10.0.0.3"), 0).unwrap_err(), Refusal::Rate);
        drop(held);
    }

    /// issue #9 item 5: the overall rate counts every address; an address refused by its own
    /// limit does not use up the overall budget.
    #[test]
    fn overall_rate_counts_all_addresses_but_not_refused_ones() {
        let mut g = AcceptGate::new(&limits(|l| {
            l.max_accept_rate = 1;
            l.accept_burst = 4;
            l.max_accept_rate_per_ip = 1;
            l.accept_burst_per_ip = 2;
        }));
        let a = ip("10.0.0.1");
        let mut held = vec![g.admit_at(a, 0).unwrap(), g.admit_at(a, 0).unwrap()];
        for _ in 0..10 {
            assert_eq!(g.admit_at(a, 0).unwrap_err(), Refusal::RatePerIp);
        }
        held.push(g.admit_at(ip("10.0.0.2"), 0).unwrap());
        held.push(g.admit_at(ip("10.0.0.3"), 0).unwrap());
        assert_eq!(g.admit_at(ip("10.0.0.4"), 0).unwrap_err(), Refusal::Rate);
        assert!(g.admit_at(ip("10.0.0.4"), S).is_ok());
    }

    /// issue #9 item 5: the overall rate alone needs no per-address table.
    #[test]
    fn overall_rate_alone_keeps_no_table() {
        let mut g = AcceptGate::new(&limits(|l| {
            l.max_accept_rate = 5;
            l.accept_burst = 5;
        }));
        let ok = (0..10).filter(|i| g.admit_at(ip(&format!("10.0.0.{i}")), 0).is_ok());
        assert_eq!(ok.count(), 5);
        assert_eq!(g.tracked(), 0);
    }

    /// issue #9 item 5: connections per address: the guard gives the slot back when dropped.
    #[test]
    fn connections_per_ip_are_counted_until_the_guard_drops() {
        let mut g = AcceptGate::new(&limits(|l| l.max_connections_per_ip = 2));
        let a = ip("192.168.1.9");
        let first = g.admit_at(a, 0).unwrap();
        let _second = g.admit_at(a, 0).unwrap();
        assert_eq!(g.admit_at(a, 0).unwrap_err(), Refusal::ConnectionsPerIp);
        assert!(g.admit_at(ip("192.168.1.10"), 0).is_ok());
        drop(first);
        assert!(g.admit_at(a, 0).is_ok());
    }

    /// IPv6 counts per /64; an IPv4-mapped address counts as its IPv4 address; loopback
    /// counts like any other address.
    #[test]
    fn sources_group_ipv6_by_64_and_unmap_ipv4() {
        let mut g = AcceptGate::new(&limits(|l| l.max_connections_per_ip = 1));
        let _a = g.admit_at(ip("2001:db8:1:2::1"), 0).unwrap();
        assert!(
            g.admit_at(ip("2001:db8:1:2:ffff::9"), 0).is_err(),
            "same /64"
        );
        assert!(g.admit_at(ip("2001:db8:1:3::1"), 0).is_ok(), "another /64");
        let _b = g.admit_at(ip("127.0.0.1"), 0).unwrap();
        let mapped = IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped());
        assert!(g.admit_at(mapped, 0).is_err(), "mapped 127.0.0.1");
        assert!(g.admit_at(IpAddr::V6(Ipv6Addr::LOCALHOST), 0).is_ok());
    }

    /// issue #9 item 5: aging: an address without connections is forgotten once its bucket is
    /// full again, at the next sweep; one with connections is kept.
    #[test]
    fn idle_addresses_age_out() {
        let mut g = AcceptGate::new(&limits(|l| {
            l.max_accept_rate_per_ip = 10;
            l.accept_burst_per_ip = 10;
        }));
        for i in 0..100 {
            drop(g.admit_at(ip(&format!("10.1.0.{i}")), 0).unwrap());
        }
        let _kept = g.admit_at(ip("10.2.0.1"), 0).unwrap();
        assert_eq!(g.tracked(), 101);
        // 0.5 s: buckets (1 token short) not yet full, and no sweep due anyway.
        g.admit_at(ip("10.3.0.1"), S / 2).unwrap();
        assert_eq!(g.tracked(), 102);
        // 2 s: every bucket refilled; only the address holding a connection stays (plus the
        // one admitted now).
        drop(g.admit_at(ip("10.3.0.2"), 2 * S).unwrap());
        assert_eq!(g.tracked(), 2);
    }

    /// issue #9 item 5: the table is bounded: with every slot taken by an address holding a
    /// connection, new addresses share one overflow entry (its own limits apply to all of
    /// them together) instead of growing the table.
    #[test]
    fn table_is_bounded_and_overflow_addresses_share_one_entry() {
        let mut g = AcceptGate::new(&limits(|l| {
            l.max_connections = 10;
            l.max_connections_per_ip = 3;
        }));
        let max = 10 + SPARE_ENTRIES;
        let mut held = Vec::new();
        for i in 0..max as u32 {
            held.push(g.admit_at(IpAddr::V4(i.into()), 0).unwrap());
        }
        assert_eq!(g.tracked(), max);
        for i in 0..3u32 {
            held.push(
                g.admit_at(IpAddr::V4((0xF000_0000 + i).into()), 5 * S)
                    .unwrap(),
            );
        }
        assert_eq!(g.tracked(), max + 1, "one overflow entry");
        assert_eq!(
            g.admit_at(ip("250.0.0.1"), 5 * S).unwrap_err(),
            Refusal::ConnectionsPerIp,
            "overflow addresses share one count"
        );
        held.truncate(10);
        assert!(
            g.admit_at(ip("250.0.0.1"), 7 * S).is_ok(),
            "swept: room again"
        );
        assert!(g.tracked() <= 12, "{}", g.tracked());
    }
}
