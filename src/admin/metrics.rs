//! The broker's counters and their Prometheus text exposition. L0 (std atomics only), so every
//! layer may count: sessions on the per-message path, the store's writer, the accept loops.
//! Invariants: the per-message path touches only relaxed atomics in a stripe (one cache line)
//! its worker thread mostly has to itself, summed on scrape; no lock, no allocation, no
//! syscall. The top-topics sketch is sampled and bounded (`TOP_TOPICS` entries).

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Stripes of the per-message counters: threads are spread over them round robin, so up to
/// this many worker threads never share a cache line for counting.
const STRIPES: usize = 16;

/// The counters the per-message path bumps (indexes into a stripe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hot {
    /// PUBLISH received from clients, by QoS (0..=2).
    PublishIn0 = 0,
    PublishIn1,
    PublishIn2,
    /// PUBLISH sent to clients (first deliveries and re-sends), by QoS.
    PublishOut0,
    PublishOut1,
    PublishOut2,
    /// Payload bytes of those PUBLISH packets.
    PayloadIn,
    PayloadOut,
    /// Bytes read from and written to client sockets (after the CONNECT).
    BytesIn,
    BytesOut,
}

const HOT: usize = 10;

impl Hot {
    pub(crate) fn publish_in(qos: u8) -> Hot {
        match qos {
            0 => Hot::PublishIn0,
            1 => Hot::PublishIn1,
            _ => Hot::PublishIn2,
        }
    }

    pub(crate) fn publish_out(qos: u8) -> Hot {
        match qos {
            0 => Hot::PublishOut0,
            1 => Hot::PublishOut1,
            _ => Hot::PublishOut2,
        }
    }
}

/// One stripe: its own cache lines (128 bytes: adjacent-line prefetchers pair 64-byte lines).
#[repr(align(128))]
#[derive(Default)]
struct Stripe([AtomicU64; HOT]);

/// Hands each thread a stripe, round robin, on its first count.
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's stripe, and its sample counter for the top-topics sketch.
    static LOCAL: Cell<(usize, u32)> = const { Cell::new((usize::MAX, 0)) };
}

#[inline]
fn local_stripe() -> usize {
    LOCAL.with(|c| {
        let (s, n) = c.get();
        if s != usize::MAX {
            return s;
        }
        let s = NEXT_STRIPE.fetch_add(1, Relaxed) % STRIPES;
        c.set((s, n));
        s
    })
}

/// Why a connection was refused (label `reason` of `brokerd_connections_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `limits.max_connections`.
    MaxConnections = 0,
    /// CONNACK 0x01: unacceptable protocol level.
    ProtocolVersion,
    /// CONNACK 0x02: identifier rejected.
    IdentifierRejected,
    /// CONNACK 0x03: server unavailable.
    ServerUnavailable,
    /// CONNACK 0x04: bad user name or password.
    BadUsernameOrPassword,
    /// CONNACK 0x05: not authorized.
    NotAuthorized,
    /// At accept: `limits.max_connections_per_ip`.
    MaxConnectionsPerIp,
    /// At accept: `limits.max_accept_rate_per_ip`.
    MaxAcceptRatePerIp,
    /// At accept: `limits.max_accept_rate`.
    MaxAcceptRate,
}

const REFUSED: usize = 9;

impl Refused {
    /// The CONNACK return code's reason (None for ACCEPTED and unknown codes).
    pub(crate) fn from_connack(code: u8) -> Option<Refused> {
        Some(match code {
            1 => Refused::ProtocolVersion,
            2 => Refused::IdentifierRejected,
            3 => Refused::ServerUnavailable,
            4 => Refused::BadUsernameOrPassword,
            5 => Refused::NotAuthorized,
            _ => return None,
        })
    }

    const LABELS: [&'static str; REFUSED] = [
        "max_connections",
        "unacceptable_protocol_version",
        "identifier_rejected",
        "server_unavailable",
        "bad_username_or_password",
        "not_authorized",
        "max_connections_per_ip",
        "max_accept_rate_per_ip",
        "max_accept_rate",
    ];
}

/// Broker-wide counters. Per-connection events (connect, refusal) use plain atomics: they are
/// not per message.
pub(crate) struct Metrics {
    started: Instant,
    stripes: Box<[Stripe]>,
    /// TCP connections accepted by a listener (before CONNECT).
    pub(crate) sockets_accepted: AtomicU64,
    /// CONNECTs accepted (CONNACK 0).
    pub(crate) connects: AtomicU64,
    /// Connections now past CONNACK 0.
    pub(crate) connected: AtomicU64,
    /// The most `connected` has been.
    pub(crate) connected_max: AtomicU64,
    refused: [AtomicU64; REFUSED],
    pub(crate) top_topics: TopTopics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        Metrics {
            started: Instant::now(),
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
            sockets_accepted: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            connected_max: AtomicU64::new(0),
            refused: Default::default(),
            top_topics: TopTopics::new(),
        }
    }

    /// Adds `n` to a per-message counter (this thread's stripe; relaxed).
    #[inline]
    pub(crate) fn add(&self, h: Hot, n: u64) {
        self.stripes[local_stripe()].0[h as usize].fetch_add(n, Relaxed);
    }

    /// The sum of a per-message counter over the stripes.
    pub(crate) fn sum(&self, h: Hot) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0[h as usize].load(Relaxed))
            .sum()
    }

    /// A PUBLISH from a client: counted by QoS, payload bytes, and (sampled) its topic.
    #[inline]
    pub(crate) fn publish_received(&self, qos: u8, topic: &Arc<str>, payload: usize) {
        let stripe = &self.stripes[local_stripe()].0;
        stripe[Hot::publish_in(qos) as usize].fetch_add(1, Relaxed);
        stripe[Hot::PayloadIn as usize].fetch_add(payload as u64, Relaxed);
        self.top_topics.sample(topic);
    }

    /// A PUBLISH written to a client.
    #[inline]
    pub(crate) fn publish_sent(&self, qos: u8, payload: usize) {
        let stripe = &self.stripes[local_stripe()].0;
        stripe[Hot::publish_out(qos) as usize].fetch_add(1, Relaxed);
        stripe[Hot::PayloadOut as usize].fetch_add(payload as u64, Relaxed);
    }

    pub(crate) fn refused(&self, why: Refused) {
        self.refused[why as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn refused_count(&self, why: Refused) -> u64 {
        self.refused[why as usize].load(Relaxed)
    }

    /// A client is connected (CONNACK 0 written).
    pub(crate) fn connected(&self) {
        self.connects.fetch_add(1, Relaxed);
        let now = self.connected.fetch_add(1, Relaxed) + 1;
        self.connected_max.fetch_max(now, Relaxed);
    }

    /// A connected client's connection ended.
    pub(crate) fn disconnected(&self) {
        self.connected.fetch_sub(1, Relaxed);
    }

    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Entries of the top-topics sketch.
pub(crate) const TOP_TOPICS: usize = 32;
/// One publish in this many is offered to the sketch (a power of two).
pub(crate) const TOPIC_SAMPLE: u32 = 16;

/// The busiest topics, approximately: a Space-Saving sketch (Metwally et al.) of
/// `TOP_TOPICS` entries fed one publish in `TOPIC_SAMPLE`. Memory is bounded by the entries
/// (each holds an `Arc` of a topic already in memory); a sampled publish costs a `try_lock`
/// (skipped when another thread holds it) and a scan of the entries. Any topic with more than
/// 1/`TOP_TOPICS` of the sampled publishes is guaranteed to be listed.
pub(crate) struct TopTopics {
    entries: Mutex<Vec<(Arc<str>, u64)>>,
}

impl TopTopics {
    fn new() -> TopTopics {
        TopTopics {
            entries: Mutex::new(Vec::with_capacity(TOP_TOPICS)),
        }
    }

    #[inline]
    fn sample(&self, topic: &Arc<str>) {
        let take = LOCAL.with(|c| {
            let (s, n) = c.get();
            c.set((s, n.wrapping_add(1)));
            n % TOPIC_SAMPLE == 0
        });
        if take {
            self.offer(topic);
        }
    }

    #[cold]
    fn offer(&self, topic: &Arc<str>) {
        let Ok(mut e) = self.entries.try_lock() else {
            return;
        };
        if let Some(hit) = e
            .iter_mut()
            .find(|(t, _)| Arc::ptr_eq(t, topic) || **t == **topic)
        {
            hit.1 += 1;
        } else if e.len() < TOP_TOPICS {
            e.push((topic.clone(), 1));
        } else if let Some(min) = e.iter_mut().min_by_key(|(_, n)| *n) {
            // Space-Saving: the newcomer inherits the smallest count (an over-estimate).
            *min = (topic.clone(), min.1 + 1);
        }
    }

    /// The top `n` topics with their estimated publish counts (sampled counts scaled up).
    pub(crate) fn top(&self, n: usize) -> Vec<(Arc<str>, u64)> {
        let mut v = self
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        for e in &mut v {
            e.1 *= u64::from(TOPIC_SAMPLE);
        }
        v
    }
}

/// Upper bounds (seconds) of the flush latency histogram's buckets.
pub(crate) const FLUSH_BUCKETS_S: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A Prometheus histogram with fixed buckets (cumulative on output), in seconds.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// Per bucket (not cumulative); the last is +Inf.
    counts: [AtomicU64; FLUSH_BUCKETS_S.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = FLUSH_BUCKETS_S
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(FLUSH_BUCKETS_S.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_ns
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    #[cfg(test)]
    fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Writes `name_bucket`, `name_sum` and `name_count` lines.
    fn write(&self, out: &mut String, name: &str) {
        let mut cum = 0;
        for (i, b) in FLUSH_BUCKETS_S.iter().enumerate() {
            cum += self.counts[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += self.counts[FLUSH_BUCKETS_S.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}");
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cum}");
    }
}

/// Everything `/metrics`, the status page and `$SYS` show, read at one moment.
#[derive(Debug, Default, Clone)]
pub(crate) struct Snapshot {
    pub(crate) uptime_s: f64,
    pub(crate) publish_in: [u64; 3],
    pub(crate) publish_out: [u64; 3],
    pub(crate) payload_in: u64,
    pub(crate) payload_out: u64,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) sockets_accepted: u64,
    pub(crate) connects: u64,
    pub(crate) connected: u64,
    pub(crate) connected_max: u64,
    /// (label, count)
    pub(crate) refused: Vec<(&'static str, u64)>,
    /// Sessions known (connected, and disconnected persistent ones).
    pub(crate) sessions: u64,
    pub(crate) subscriptions: u64,
    pub(crate) retained: u64,
    pub(crate) queued_messages: u64,
    pub(crate) queued_bytes: u64,
    pub(crate) inflight: u64,
    /// Messages routed through the broker (client publishes, wills, `$SYS`).
    pub(crate) routed: u64,
    /// (reason label, count)
    pub(crate) dropped: Vec<(&'static str, u64)>,
    /// Dead letters published, (reason, count).
    pub(crate) dead_letters: Vec<(&'static str, u64)>,
    /// Dead letters lost, (reason, count).
    pub(crate) dead_letters_dropped: Vec<(&'static str, u64)>,
    pub(crate) share_groups: u64,
    pub(crate) share_members: u64,
    pub(crate) shared_handed_over: u64,
    pub(crate) auth_failures: u64,
    pub(crate) resident_bytes: u64,
    /// One entry per `[[bridge]]`, in configuration order.
    pub(crate) bridges: Vec<super::bridges::BridgeFigures>,
}

impl Snapshot {
    /// Fills the counters `Metrics` holds (the rest comes from the broker).
    pub(crate) fn read(m: &Metrics) -> Snapshot {
        let refused = Refused::LABELS
            .iter()
            .zip(&m.refused)
            .map(|(l, c)| (*l, c.load(Relaxed)))
            .collect::<Vec<_>>();
        Snapshot {
            uptime_s: m.uptime().as_secs_f64(),
            publish_in: [Hot::PublishIn0, Hot::PublishIn1, Hot::PublishIn2].map(|h| m.sum(h)),
            publish_out: [Hot::PublishOut0, Hot::PublishOut1, Hot::PublishOut2].map(|h| m.sum(h)),
            payload_in: m.sum(Hot::PayloadIn),
            payload_out: m.sum(Hot::PayloadOut),
            bytes_in: m.sum(Hot::BytesIn),
            bytes_out: m.sum(Hot::BytesOut),
            sockets_accepted: m.sockets_accepted.load(Relaxed),
            connects: m.connects.load(Relaxed),
            connected: m.connected.load(Relaxed),
            connected_max: m.connected_max.load(Relaxed),
            auth_failures: m.refused_count(Refused::BadUsernameOrPassword)
                + m.refused_count(Refused::NotAuthorized),
            refused,
            resident_bytes: resident_bytes(),
            ..Snapshot::default()
        }
    }

    pub(crate) fn publish_in_total(&self) -> u64 {
        self.publish_in.iter().sum()
    }

    pub(crate) fn publish_out_total(&self) -> u64 {
        self.publish_out.iter().sum()
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub(crate) fn render(&self, flush: Option<&Histogram>) -> String {
        let mut o = String::with_capacity(8 * 1024);
        let mut one = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        one(
            "brokerd_uptime_seconds",
            "gauge",
            "Seconds since the broker started.",
            format!("{:.3}", self.uptime_s),
        );
        one(
            "brokerd_connections",
            "gauge",
            "Clients connected now (past CONNACK 0).",
            self.connected.to_string(),
        );
        one(
            "brokerd_connections_max",
            "gauge",
            "The most clients connected at once since start.",
            self.connected_max.to_string(),
        );
        one(
            "brokerd_sockets_accepted_total",
            "counter",
            "TCP connections accepted by the MQTT listeners (before CONNECT).",
            self.sockets_accepted.to_string(),
        );
        one(
            "brokerd_connections_accepted_total",
            "counter",
            "CONNECTs accepted (CONNACK 0).",
            self.connects.to_string(),
        );
        one(
            "brokerd_auth_failures_total",
            "counter",
            "CONNECTs refused for their credentials (CONNACK 0x04 and 0x05).",
            self.auth_failures.to_string(),
        );
        one(
            "brokerd_sessions",
            "gauge",
            "Sessions held: connected clients and disconnected persistent sessions.",
            self.sessions.to_string(),
        );
        one(
            "brokerd_subscriptions",
            "gauge",
            "Subscriptions over all sessions.",
            self.subscriptions.to_string(),
        );
        one(
            "brokerd_retained_messages",
            "gauge",
            "Retained messages held.",
            self.retained.to_string(),
        );
        one(
            "brokerd_queued_messages",
            "gauge",
            "Messages waiting in session queues (behind the in-flight windows).",
            self.queued_messages.to_string(),
        );
        one(
            "brokerd_queued_bytes",
            "gauge",
            "Payload bytes waiting in session queues.",
            self.queued_bytes.to_string(),
        );
        one(
            "brokerd_inflight_messages",
            "gauge",
            "QoS 1 and 2 messages sent and not yet acknowledged.",
            self.inflight.to_string(),
        );
        one(
            "brokerd_messages_routed_total",
            "counter",
            "Messages routed to subscribers: client publishes, wills and $SYS updates.",
            self.routed.to_string(),
        );
        one(
            "brokerd_received_bytes_total",
            "counter",
            "Bytes read from client sockets after CONNECT.",
            self.bytes_in.to_string(),
        );
        one(
            "brokerd_sent_bytes_total",
            "counter",
            "Bytes written to client sockets after CONNACK.",
            self.bytes_out.to_string(),
        );
        one(
            "brokerd_publish_received_payload_bytes_total",
            "counter",
            "Payload bytes of PUBLISH packets received from clients.",
            self.payload_in.to_string(),
        );
        one(
            "brokerd_publish_sent_payload_bytes_total",
            "counter",
            "Payload bytes of PUBLISH packets sent to clients.",
            self.payload_out.to_string(),
        );
        one(
            "brokerd_resident_memory_bytes",
            "gauge",
            "Resident set size of the process (/proc/self/statm).",
            self.resident_bytes.to_string(),
        );
        one(
            "brokerd_share_groups",
            "gauge",
            "Share groups ($share/{group}/{filter}) with at least one member.",
            self.share_groups.to_string(),
        );
        one(
            "brokerd_share_group_members",
            "gauge",
            "Members over all share groups (connected and offline persistent sessions).",
            self.share_members.to_string(),
        );
        one(
            "brokerd_shared_messages_handed_over_total",
            "counter",
            "Shared messages (unacknowledged or queued) handed from a leaving member to the rest of its group.",
            self.shared_handed_over.to_string(),
        );
        let mut labeled = |name: &str, help: &str, label: &str, rows: &[(String, u64)]| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
            for (l, v) in rows {
                let _ = writeln!(o, "{name}{{{label}=\"{l}\"}} {v}");
            }
        };
        let qos_rows = |v: &[u64; 3]| (0..3).map(|q| (q.to_string(), v[q])).collect::<Vec<_>>();
        labeled(
            "brokerd_publish_received_total",
            "PUBLISH packets received from clients, by QoS.",
            "qos",
            &qos_rows(&self.publish_in),
        );
        labeled(
            "brokerd_publish_sent_total",
            "PUBLISH packets sent to clients (re-sends included), by QoS.",
            "qos",
            &qos_rows(&self.publish_out),
        );
        let rows = |v: &[(&'static str, u64)]| {
            v.iter()
                .map(|(l, n)| ((*l).to_owned(), *n))
                .collect::<Vec<_>>()
        };
        labeled(
            "brokerd_connections_refused_total",
            "Connections refused, by reason: a [limits] key at accept, or the CONNACK code.",
            "reason",
            &rows(&self.refused),
        );
        labeled(
            "brokerd_messages_dropped_total",
            "Messages dropped: deliveries refused by a full queue (by the bound that refused them), publishes denied (ACL, or a client publishing into $SYS or $DLQ; acknowledged, not routed), messages no member of a share group could take, and messages queued for a persistent session that expired.",
            "reason",
            &rows(&self.dropped),
        );
        labeled(
            "brokerd_dead_letters_total",
            "Dead letters published on $DLQ/{reason}/... (with [dead_letter] enabled), by reason.",
            "reason",
            &rows(&self.dead_letters),
        );
        labeled(
            "brokerd_dead_letters_dropped_total",
            "Dead letters lost (only counted): the dead-letter queue at a bound, a dead letter dropped itself, or an invalid $DLQ topic.",
            "reason",
            &rows(&self.dead_letters_dropped),
        );
        let name = "brokerd_store_flush_duration_seconds";
        let _ = writeln!(
            o,
            "# HELP {name} Time the persistence writer spent per flush to disk (empty with persistence off).\n# TYPE {name} histogram"
        );
        flush.unwrap_or(&Histogram::default()).write(&mut o, name);
        super::bridges::write_metrics(&self.bridges, &mut o);
        o
    }
}

/// Resident memory of this process in bytes, from /proc/self/statm (0 where there is none).
pub(crate) fn resident_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * page_size()
}

fn page_size() -> u64 {
    // 4 KiB on every Linux target this broker ships for except some arm64 kernels; rustix
    // gives the real value.
    rustix::param::page_size() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// issue #10 item 3: counts from many threads sum exactly over the stripes.
    #[test]
    fn striped_counters_sum_exactly() {
        let m = Arc::new(Metrics::new());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        m.add(Hot::BytesIn, 3);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(m.sum(Hot::BytesIn), 8 * 10_000 * 3);
    }

    /// issue #10 item 3: the sketch stays bounded and keeps a heavy topic on top.
    #[test]
    fn top_topics_is_bounded_and_finds_the_heavy_hitter() {
        let t = TopTopics::new();
        let hot: Arc<str> = Arc::from("hot/topic");
        for i in 0..100_000u32 {
            t.offer(&hot);
            let cold: Arc<str> = Arc::from(format!("cold/{i}"));
            if i % 2 == 0 {
                t.offer(&cold);
            }
        }
        let top = t.top(TOP_TOPICS * 2);
        assert!(top.len() <= TOP_TOPICS);
        assert_eq!(&*top[0].0, "hot/topic");
        assert!(top[0].1 >= 100_000 * u64::from(TOPIC_SAMPLE));
    }

    /// issue #10 item 3: histogram buckets are cumulative and end with +Inf = count.
    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(10));
        let mut o = String::new();
        h.write(&mut o, "x");
        assert!(o.contains("x_bucket{le=\"0.0005\"} 1\n"), "{o}");
        assert!(o.contains("x_bucket{le=\"0.005\"} 2\n"), "{o}");
        assert!(o.contains("x_bucket{le=\"2.5\"} 2\n"), "{o}");
        assert!(o.contains("x_bucket{le=\"+Inf\"} 3\n"), "{o}");
        assert!(o.contains("x_count 3\n"), "{o}");
        assert_eq!(h.count(), 3);
    }
}
