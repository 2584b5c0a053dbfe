//! Publish/subscribe flows: `fanin`, `fanout`, `pairs` and `latency` are all
//! "P publishers on fixed topics -> S subscribers, each expecting a known set
//! of publishers", measured the same way:
//!
//! * all subscribers are subscribed (SUBACK) and all publishers connected
//!   before a common start instant;
//! * publishers run for warmup + duration, then (QoS 1) wait for their
//!   outstanding PUBACKs, then DISCONNECT;
//! * subscribers verify every message (topic, payload, flags, per-publisher
//!   sequence) and stop once they have everything that was sent, or after
//!   an idle / hard drain limit;
//! * rates count only deliveries that arrived inside the measured window.

use super::{client_id, keep_alive_for, round, Common, Outcome};
use crate::codec::{self, Packet};
use crate::conn::{self, Reader};
use crate::monitor::{self, Monitor};
use crate::payload;
use crate::stats::{Histogram, Pacer, SeqOutcome, SeqTracker};
use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout_at, Instant};

/// Topology and knobs of one flow run.
pub struct FlowSpec {
    pub scenario: &'static str,
    /// Topic of each publisher.
    pub pub_topics: Vec<String>,
    /// (filter, publishers whose messages this subscriber must receive).
    pub subs: Vec<(String, Vec<usize>)>,
    /// Total target rate across publishers (msgs/s); None = as fast as allowed.
    pub rate: Option<f64>,
    /// QoS 1 window: max unacknowledged PUBLISHes per publisher.
    pub window: usize,
    /// Subscribers connect with CleanSession=0 (persistent sessions: durable on a broker
    /// with persistence).
    pub persistent_subscribers: bool,
    /// End-to-end window: max messages a publisher may be ahead of its
    /// slowest subscriber (highest sequence received); 0 = off.
    pub e2e_window: usize,
    /// Max messages per write syscall.
    pub batch: usize,
    /// Max time to wait for acks/deliveries after publishing stops.
    pub drain: Duration,
    /// Subscribers stop after this long without data once publishers are done.
    pub idle: Duration,
    /// The subscribers are the members of one share group (`$share/...` filters): every
    /// message must arrive exactly once across them, not once at each.
    pub group: Option<GroupCheck>,
}

/// What a share-group run checks besides exactly-once across the members.
#[derive(Clone, Copy, Debug, Default)]
pub struct GroupCheck {
    /// Every publisher's messages (one topic each) must arrive at a single member
    /// (`hash_topic`), in order.
    pub keyed: bool,
}

const READ_CHUNK: usize = 256 * 1024;
/// End-to-end mode: give up waiting for a lost tail after this long.
const E2E_STALL: Duration = Duration::from_millis(200);

struct Clock {
    start: Instant,
    warm_end: Instant,
    end: Instant,
}

#[derive(Default)]
struct PubResult {
    sent: u64,
    sent_in_window: u64,
    e2e_forced: u64,
    error: Option<String>,
}

#[derive(Default)]
struct SubResult {
    trackers: Vec<SeqTracker>,
    in_window: u64,
    wrong_topic: u64,
    corrupt: u64,
    foreign: u64,
    phantom: u64,
    bad_flags: u64,
    hist: Histogram,
    error: Option<String>,
}

/// State shared by all tasks of one run.
struct Shared {
    /// Per publisher: messages handed to the socket so far (a subscriber
    /// seeing a sequence >= this has received a message never sent).
    published: Vec<AtomicU64>,
    /// Per (subscriber, publisher): one past the highest sequence received.
    progress: Vec<AtomicU64>,
    npubs: usize,
    /// Per publisher: subscribers that receive it.
    pub_subs: Vec<Vec<usize>>,
    /// Per publisher: its credit state (subscribers notify on progress).
    inflight: Vec<Inflight>,
    /// Share-group runs: messages received by all members together.
    group_received: Option<AtomicU64>,
}

impl Shared {
    /// How far publisher `p` (having sent `seq`) is ahead of its slowest subscriber.
    fn e2e_backlog(&self, p: usize, seq: u64) -> u64 {
        let progress = self.pub_subs[p]
            .iter()
            .map(|&s| self.progress[s * self.npubs + p].load(Ordering::Acquire));
        // A share group: a publisher's messages are spread over (or keyed to one of) the
        // members, so its progress is the furthest member's.
        let slowest = if self.group_received.is_some() {
            progress.max()
        } else {
            progress.min()
        };
        seq.saturating_sub(slowest.unwrap_or(seq))
    }
}

/// QoS 1 in-flight state shared by a publisher's writer and ack reader.
struct Inflight {
    state: Mutex<InflightState>,
    notify: Notify,
}

struct InflightState {
    outstanding: Vec<bool>,
    count: usize,
    bad_acks: u64,
    reader_error: Option<String>,
}

impl Inflight {
    fn new() -> Self {
        Self {
            state: Mutex::new(InflightState {
                outstanding: vec![false; 65536],
                count: 0,
                bad_acks: 0,
                reader_error: None,
            }),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InflightState> {
        // A poisoned lock only means another task panicked; the data is plain counters.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub async fn run(c: &Common, spec: FlowSpec) -> Result<Outcome> {
    let npubs = spec.pub_topics.len();
    let nsubs = spec.subs.len();
    let total = c.warmup + c.duration + spec.drain;
    let ka = keep_alive_for(total + c.connect_timeout * 2);
    let rss_before = c.broker_pid.and_then(|p| monitor::rss_kib(p).ok());
    let mon = Monitor::start(
        c.broker_pid,
        total + c.connect_timeout * 4 + Duration::from_secs(30),
    );

    // Connect and subscribe all subscribers, then connect all publishers.
    let mut set = JoinSet::new();
    for (i, (filter, _)) in spec.subs.iter().enumerate() {
        let (c2, filter, id) = (c.clone(), filter.clone(), client_id(spec.scenario, "s", i));
        let persistent = spec.persistent_subscribers;
        set.spawn(async move {
            let (mut rd, mut wr) = conn::mqtt_connect_session(
                c2.addr,
                &id,
                ka,
                READ_CHUNK,
                c2.connect_timeout,
                !persistent,
            )
            .await?;
            let granted =
                conn::subscribe(&mut rd, &mut wr, &filter, c2.qos, c2.connect_timeout).await?;
            anyhow::Ok((i, rd, wr, granted))
        });
    }
    let mut sub_conns: Vec<Option<(Reader, OwnedWriteHalf)>> = (0..nsubs).map(|_| None).collect();
    while let Some(r) = set.join_next().await {
        let (i, rd, wr, granted) = r.context("subscriber setup task")??;
        if granted < c.qos {
            bail!(
                "broker granted QoS {granted} < requested {} on subscription {i}",
                c.qos
            );
        }
        sub_conns[i] = Some((rd, wr));
    }
    let mut set = JoinSet::new();
    for i in 0..npubs {
        let (c2, id) = (c.clone(), client_id(spec.scenario, "p", i));
        set.spawn(async move {
            let (rd, wr) = conn::mqtt_connect(c2.addr, &id, ka, 4096, c2.connect_timeout).await?;
            anyhow::Ok((i, rd, wr))
        });
    }
    let mut pub_conns: Vec<Option<(Reader, OwnedWriteHalf)>> = (0..npubs).map(|_| None).collect();
    while let Some(r) = set.join_next().await {
        let (i, rd, wr) = r.context("publisher setup task")??;
        pub_conns[i] = Some((rd, wr));
    }
    eprintln!(
        "[{}] {nsubs} subscriber(s) and {npubs} publisher(s) ready",
        spec.scenario
    );

    let start = Instant::now() + Duration::from_millis(20);
    let clock = Arc::new(Clock {
        start,
        warm_end: start + c.warmup,
        end: start + c.warmup + c.duration,
    });
    let mut pub_subs = vec![Vec::new(); npubs];
    for (si, (_, sources)) in spec.subs.iter().enumerate() {
        for &p in sources {
            pub_subs[p].push(si);
        }
    }
    let shared = Arc::new(Shared {
        published: (0..npubs).map(|_| AtomicU64::new(0)).collect(),
        progress: (0..npubs * nsubs).map(|_| AtomicU64::new(0)).collect(),
        npubs,
        pub_subs,
        inflight: (0..npubs).map(|_| Inflight::new()).collect(),
        group_received: spec.group.map(|_| AtomicU64::new(0)),
    });
    let topics: Arc<Vec<Vec<u8>>> = Arc::new(
        spec.pub_topics
            .iter()
            .map(|t| t.as_bytes().to_vec())
            .collect(),
    );
    let (done_tx, done_rx) = watch::channel::<Option<Arc<Vec<u64>>>>(None);

    let mut sub_tasks = Vec::new();
    for (i, slot) in sub_conns.into_iter().enumerate() {
        let Some((rd, wr)) = slot else {
            bail!("subscriber {i} missing")
        };
        let sources = spec.subs[i].1.clone();
        let ctx = SubCtx {
            qos: c.qos,
            payload: c.payload,
            sources,
            topics: topics.clone(),
            idx: i,
            shared: shared.clone(),
            clock: clock.clone(),
            drain: spec.drain,
            idle: spec.idle,
            done: done_rx.clone(),
        };
        sub_tasks.push(tokio::spawn(subscriber(ctx, rd, wr)));
    }
    let per_pub_rate = spec.rate.map(|r| r / npubs as f64);
    let mut pub_tasks = Vec::new();
    for (i, slot) in pub_conns.into_iter().enumerate() {
        let Some((rd, wr)) = slot else {
            bail!("publisher {i} missing")
        };
        let ctx = PubCtx {
            idx: i,
            qos: c.qos,
            payload: c.payload,
            topic: topics[i].clone(),
            rate: per_pub_rate,
            window: spec.window,
            batch: spec.batch,
            drain: spec.drain,
            e2e_window: spec.e2e_window,
            shared: shared.clone(),
            clock: clock.clone(),
        };
        pub_tasks.push(tokio::spawn(publisher(ctx, rd, wr)));
    }

    let mut pubs = Vec::new();
    for t in pub_tasks {
        pubs.push(t.await.unwrap_or_else(|e| PubResult {
            error: Some(format!("publisher task: {e}")),
            ..Default::default()
        }));
    }
    let sent: Arc<Vec<u64>> = Arc::new(pubs.iter().map(|p| p.sent).collect());
    let _ = done_tx.send(Some(sent.clone()));
    let mut subs = Vec::new();
    for t in sub_tasks {
        subs.push(t.await.unwrap_or_else(|e| SubResult {
            error: Some(format!("subscriber task: {e}")),
            ..Default::default()
        }));
    }
    let report = mon.finish();
    let rss_after = c.broker_pid.and_then(|p| monitor::rss_kib(p).ok());

    // Aggregate.
    let mut o = Outcome::new(spec.scenario);
    o.set("qos", c.qos);
    o.set("publishers", npubs);
    o.set("subscribers", nsubs);
    o.set("payload", c.payload);
    o.set("duration_s", round(c.duration.as_secs_f64(), 3));
    o.set("warmup_s", round(c.warmup.as_secs_f64(), 3));
    o.set("rate", spec.rate.map(|r| round(r, 1)));
    if c.qos == 1 {
        o.set("window", spec.window);
    }
    if spec.e2e_window > 0 {
        o.set("e2e_window", spec.e2e_window);
        o.set("e2e_forced", pubs.iter().map(|p| p.e2e_forced).sum::<u64>());
    }
    let total_sent: u64 = sent.iter().sum();
    let sent_window: u64 = pubs.iter().map(|p| p.sent_in_window).sum();
    let mut expected = 0u64;
    let mut received = 0u64;
    let (mut dups, mut ooo, mut in_window) = (0u64, 0u64, 0u64);
    let (mut wrong_topic, mut corrupt, mut bad_flags) = (0u64, 0u64, 0u64);
    let mut hist = Histogram::default();
    for (s, (_, sources)) in subs.iter().zip(&spec.subs) {
        if spec.group.is_none() {
            expected += sources.iter().map(|&p| sent[p]).sum::<u64>();
        }
        received += s.trackers.iter().map(|t| t.unique).sum::<u64>();
        dups += s.trackers.iter().map(|t| t.duplicates).sum::<u64>();
        ooo += s.trackers.iter().map(|t| t.out_of_order).sum::<u64>();
        in_window += s.in_window;
        wrong_topic += s.wrong_topic;
        corrupt += s.corrupt + s.foreign + s.phantom;
        bad_flags += s.bad_flags;
        hist.merge(&s.hist);
    }
    if let Some(check) = spec.group {
        // Exactly once across the group: the union of what the members saw, and what two
        // members both saw.
        expected = total_sent;
        let members = subs.len();
        let mut union = 0u64;
        let mut split_keys = 0u64;
        for p in 0..npubs {
            let words = subs
                .iter()
                .map(|s| s.trackers.get(p).map_or(0, |t| t.seen_words().len()))
                .max()
                .unwrap_or(0);
            for w in 0..words {
                let mut any = 0u64;
                for s in &subs {
                    let bits = s
                        .trackers
                        .get(p)
                        .and_then(|t| t.seen_words().get(w))
                        .copied()
                        .unwrap_or(0);
                    any |= bits;
                }
                union += u64::from(any.count_ones());
            }
            let holders = subs
                .iter()
                .filter(|s| s.trackers.get(p).is_some_and(|t| t.unique > 0))
                .count();
            if holders > 1 {
                split_keys += 1;
            }
        }
        dups += received.saturating_sub(union);
        received = union;
        let per_member: Vec<u64> = subs
            .iter()
            .map(|s| s.trackers.iter().map(|t| t.unique).sum::<u64>())
            .collect();
        o.set("members", members);
        o.set(
            "per_member_min",
            per_member.iter().min().copied().unwrap_or(0),
        );
        o.set(
            "per_member_max",
            per_member.iter().max().copied().unwrap_or(0),
        );
        o.set("keys_on_several_members", split_keys);
        if check.keyed && split_keys > 0 {
            o.fail(format!(
                "{split_keys} publisher topic(s) delivered to more than one member (keyed run)"
            ));
        }
    }
    let lost = expected.saturating_sub(received);
    let secs = c.duration.as_secs_f64();
    o.set("sent", total_sent);
    o.set("sent_per_s", round(sent_window as f64 / secs, 1));
    o.set("expected", expected);
    o.set("received", received);
    o.set("lost", lost);
    o.set(
        "lost_pct",
        round(
            if expected > 0 {
                lost as f64 * 100.0 / expected as f64
            } else {
                0.0
            },
            3,
        ),
    );
    o.set("duplicates", dups);
    o.set("out_of_order", ooo);
    o.set("wrong_topic", wrong_topic);
    o.set("corrupt", corrupt);
    o.set("bad_flags", bad_flags);
    o.set("msgs_per_s", round(in_window as f64 / secs, 1));
    let us = |q: f64| round(hist.quantile(q) as f64 / 1000.0, 1);
    o.set("latency_samples", hist.count());
    o.set("p50_us", us(0.50));
    o.set("p99_us", us(0.99));
    o.set("p999_us", us(0.999));
    o.set("max_us", round(hist.max() as f64 / 1000.0, 1));
    let (from, to) = (clock.warm_end.into_std(), clock.end.into_std());
    let (gen_cpu, broker_cpu) = report.cpu_pct(from, to);
    o.set("gen_cpu_pct", gen_cpu.map(|v| round(v, 1)));
    if c.broker_pid.is_some() {
        o.set("broker_cpu_pct", broker_cpu.map(|v| round(v, 1)));
    }
    super::core_usage(&mut o, &report, c.broker_pid, from, to);
    if c.broker_pid.is_some() {
        o.set("rss_before_kib", rss_before);
        o.set("peak_rss_kib", report.peak_rss_kib());
        o.set("rss_after_kib", rss_after);
    }

    for (i, p) in pubs.iter().enumerate() {
        if let Some(e) = &p.error {
            o.fail(format!("publisher {i}: {e}"));
        }
    }
    for (i, s) in subs.iter().enumerate() {
        if let Some(e) = &s.error {
            o.fail(format!("subscriber {i}: {e}"));
        }
    }
    if ooo > 0 {
        o.fail(format!("{ooo} message(s) out of order"));
    }
    if wrong_topic > 0 {
        o.fail(format!("{wrong_topic} message(s) on the wrong topic"));
    }
    if corrupt > 0 {
        o.fail(format!("{corrupt} corrupt/foreign/never-sent message(s)"));
    }
    if bad_flags > 0 {
        o.fail(format!(
            "{bad_flags} message(s) with wrong QoS or RETAIN flag"
        ));
    }
    if c.qos == 0 && dups > 0 {
        o.fail(format!("{dups} duplicate(s) at QoS 0"));
    }
    if c.qos == 1 && lost > 0 {
        o.fail(format!("{lost} message(s) lost at QoS 1"));
    }
    if total_sent == 0 {
        o.fail("nothing was sent");
    }
    Ok(o.finish())
}

struct PubCtx {
    idx: usize,
    qos: u8,
    payload: usize,
    topic: Vec<u8>,
    rate: Option<f64>,
    window: usize,
    batch: usize,
    drain: Duration,
    e2e_window: usize,
    shared: Arc<Shared>,
    clock: Arc<Clock>,
}

impl PubCtx {
    /// QoS 1: resume writing once this many credits are free.
    fn low_water(&self) -> usize {
        self.batch.min(self.window / 2).max(1)
    }
}

async fn publisher(ctx: PubCtx, rd: Reader, mut wr: OwnedWriteHalf) -> PubResult {
    let mut res = PubResult::default();
    // QoS 1: a separate task reads PUBACKs and returns credits.
    let reader = (ctx.qos == 1).then(|| {
        let hard = ctx.clock.end + ctx.drain + Duration::from_secs(5);
        let wake_at = ctx.window - ctx.low_water();
        tokio::spawn(ack_reader(rd, ctx.shared.clone(), ctx.idx, wake_at, hard))
    });
    let inflight = &ctx.shared.inflight[ctx.idx];
    if let Err(e) = publish_loop(&ctx, &mut wr, inflight, &mut res).await {
        res.error = Some(format!("{e:#}"));
    }
    if let Some(r) = reader {
        r.abort();
    }
    let bad = inflight.lock().bad_acks;
    if bad > 0 && res.error.is_none() {
        res.error = Some(format!("{bad} PUBACK(s) for packet ids not in flight"));
    }
    conn::disconnect(&mut wr).await;
    res
}

async fn publish_loop(
    ctx: &PubCtx,
    wr: &mut OwnedWriteHalf,
    inflight: &Inflight,
    res: &mut PubResult,
) -> Result<()> {
    let clock = &ctx.clock;
    sleep_until(clock.start).await;
    let msg_len = codec::publish_len(ctx.topic.len(), ctx.qos, ctx.payload);
    // At most `batch` messages and (beyond one message) 256 KiB per write.
    let batch = ctx.batch.min((256 * 1024 / msg_len).max(1));
    let mut pacer = Pacer::new(clock.start.into_std(), ctx.rate, batch as u64);
    let mut buf = BytesMut::with_capacity(batch * msg_len);
    let write_limit = clock.end.saturating_duration_since(Instant::now()) + ctx.drain;
    let mut seq = 0u64;
    let mut next_pid = 0u16;
    let mut seq_at_warm = None;
    let mut e2e_stall_since: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= clock.end {
            break;
        }
        if seq_at_warm.is_none() && now >= clock.warm_end {
            seq_at_warm = Some(seq);
        }
        // Messages owed by the pacer (capped at one batch), then limited by
        // credits. Credit-limited writes wait until at least half a window is
        // free, so each syscall carries a useful batch.
        let due = pacer.due(now.into_std()) as usize;
        let mut n = due;
        let mut blocked = false;
        if ctx.e2e_window > 0 {
            let backlog = ctx.shared.e2e_backlog(ctx.idx, seq);
            let free = (ctx.e2e_window as u64).saturating_sub(backlog) as usize;
            if free < due.min((ctx.e2e_window / 2).max(1)) {
                if e2e_stall_since.get_or_insert(now).elapsed() >= E2E_STALL {
                    // Nothing newer arrived for a while (lost tail): stop waiting for it.
                    e2e_stall_since = None;
                    res.e2e_forced += 1;
                } else {
                    blocked = true;
                }
            } else {
                e2e_stall_since = None;
                n = n.min(free);
            }
        }
        if ctx.qos == 1 {
            let st = inflight.lock();
            if let Some(e) = &st.reader_error {
                bail!("ack reader: {e}");
            }
            let free = ctx.window.saturating_sub(st.count);
            blocked |= free < due.min(ctx.low_water());
            n = n.min(free);
        }
        if blocked || n == 0 {
            let wake = pacer
                .next_at()
                .map(Instant::from_std)
                .unwrap_or(clock.end)
                .min(clock.end);
            if blocked {
                let wake = wake
                    .max(now + Duration::from_millis(1))
                    .min(now + Duration::from_millis(50));
                let _ = timeout_at(wake.min(clock.end), inflight.notify.notified()).await;
            } else {
                sleep_until(wake).await;
            }
            continue;
        }
        buf.clear();
        let ts = payload::now_ns();
        {
            let mut st = (ctx.qos == 1).then(|| inflight.lock());
            for _ in 0..n {
                let pid = if let Some(st) = st.as_mut() {
                    next_pid = next_pid.checked_add(1).unwrap_or(1);
                    if st.outstanding[next_pid as usize] {
                        bail!("packet id {next_pid} still in flight (window too large?)");
                    }
                    st.outstanding[next_pid as usize] = true;
                    st.count += 1;
                    next_pid
                } else {
                    0
                };
                codec::publish_header(&mut buf, &ctx.topic, ctx.qos, false, pid, ctx.payload);
                let at = buf.len();
                buf.resize(at + ctx.payload, 0);
                payload::write(&mut buf[at..], ctx.idx as u32, seq, ts);
                seq += 1;
            }
        }
        ctx.shared.published[ctx.idx].store(seq, Ordering::Release);
        conn::write_all(wr, &buf, write_limit).await?;
        res.sent = seq;
        pacer.sent(n as u64);
    }
    res.sent = seq;
    res.sent_in_window = seq - seq_at_warm.unwrap_or(seq);
    if ctx.qos == 1 {
        // Wait for every outstanding PUBACK (bounded by the drain time).
        let deadline = clock.end + ctx.drain;
        loop {
            let (left, reader_error) = {
                let st = inflight.lock();
                (st.count, st.reader_error.clone())
            };
            if let Some(e) = reader_error {
                bail!("ack reader: {e}");
            }
            if left == 0 {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "{left} PUBLISH(es) still unacknowledged {:?} after the run",
                    ctx.drain
                );
            }
            let _ = timeout_at(deadline, inflight.notify.notified()).await;
        }
    }
    Ok(())
}

/// Reads PUBACKs, frees their packet ids, and wakes the writer once at most
/// `wake_at` messages remain in flight.
async fn ack_reader(
    mut rd: Reader,
    shared: Arc<Shared>,
    idx: usize,
    wake_at: usize,
    hard: Instant,
) {
    let inf = &shared.inflight[idx];
    let r: Result<()> = async {
        while Instant::now() < hard {
            if rd.fill_until(hard).await?.is_none() {
                break;
            }
            let mut acked = 0;
            let in_flight = {
                let mut st = inf.lock();
                rd.drain(|p| {
                    match p {
                        Packet::Puback(pid) => {
                            if st.outstanding[pid as usize] {
                                st.outstanding[pid as usize] = false;
                                st.count -= 1;
                                acked += 1;
                            } else {
                                st.bad_acks += 1;
                            }
                        }
                        Packet::Pingresp => {}
                        other => bail!("unexpected packet on publisher connection: {other:?}"),
                    }
                    Ok(())
                })?;
                st.count
            };
            if acked > 0 && in_flight <= wake_at {
                inf.notify.notify_one();
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = r {
        inf.lock().reader_error = Some(format!("{e:#}"));
        inf.notify.notify_one();
    }
}

struct SubCtx {
    qos: u8,
    payload: usize,
    idx: usize,
    sources: Vec<usize>,
    topics: Arc<Vec<Vec<u8>>>,
    shared: Arc<Shared>,
    clock: Arc<Clock>,
    drain: Duration,
    idle: Duration,
    done: watch::Receiver<Option<Arc<Vec<u64>>>>,
}

async fn subscriber(ctx: SubCtx, rd: Reader, mut wr: OwnedWriteHalf) -> SubResult {
    let mut res = SubResult {
        trackers: (0..ctx.topics.len())
            .map(|_| SeqTracker::default())
            .collect(),
        ..Default::default()
    };
    if let Err(e) = subscribe_loop(&ctx, rd, &mut wr, &mut res).await {
        res.error = Some(format!("{e:#}"));
    }
    conn::disconnect(&mut wr).await;
    res
}

async fn subscribe_loop(
    ctx: &SubCtx,
    mut rd: Reader,
    wr: &mut OwnedWriteHalf,
    res: &mut SubResult,
) -> Result<()> {
    let clock = &ctx.clock;
    let hard = clock.end + ctx.drain;
    let mut is_source = vec![false; ctx.topics.len()];
    for &s in &ctx.sources {
        is_source[s] = true;
    }
    let mut acks = BytesMut::with_capacity(64 * 1024);
    let mut last_data = Instant::now();
    // Share-group runs: what this member has added to the group's count so far.
    let mut counted = 0u64;
    loop {
        let now = Instant::now();
        if now >= hard {
            break;
        }
        if rd
            .fill_until((now + Duration::from_millis(100)).min(hard))
            .await?
            .is_some()
        {
            last_data = Instant::now();
        }
        let now = Instant::now();
        let now_ns = payload::now_ns();
        let in_window = now >= clock.warm_end && now <= clock.end;
        rd.drain(|p| {
            let p = match p {
                Packet::Publish(p) => p,
                Packet::Pingresp => return Ok(()),
                other => bail!("unexpected packet on subscriber connection: {other:?}"),
            };
            if p.qos == 1 {
                codec::puback(&mut acks, p.pid);
            }
            if p.qos != ctx.qos || p.retain {
                res.bad_flags += 1;
            }
            let Some(h) = payload::read(p.payload, ctx.payload) else {
                res.corrupt += 1;
                return Ok(());
            };
            let pi = h.publisher as usize;
            if !is_source.get(pi).copied().unwrap_or(false) {
                res.foreign += 1;
                return Ok(());
            }
            if p.topic != ctx.topics[pi].as_slice() {
                res.wrong_topic += 1;
                return Ok(());
            }
            if h.seq >= ctx.shared.published[pi].load(Ordering::Acquire) {
                res.phantom += 1;
                return Ok(());
            }
            if res.trackers[pi].record(h.seq) != SeqOutcome::Duplicate && in_window {
                res.in_window += 1;
                res.hist.record(now_ns.saturating_sub(h.ts_ns));
            }
            Ok(())
        })?;
        if !acks.is_empty() {
            conn::write_all(wr, &acks, ctx.drain).await?;
            acks.clear();
        }
        // Publish progress for end-to-end flow control.
        for &s in &ctx.sources {
            let next = res.trackers[s].next();
            let slot = &ctx.shared.progress[ctx.idx * ctx.shared.npubs + s];
            if slot.load(Ordering::Relaxed) != next {
                slot.store(next, Ordering::Release);
                ctx.shared.inflight[s].notify.notify_one();
            }
        }
        let got: u64 = ctx.sources.iter().map(|&s| res.trackers[s].unique).sum();
        let got = match &ctx.shared.group_received {
            Some(total) => {
                // Members count together: each adds what it got since its last turn.
                total.fetch_add(got - counted, Ordering::AcqRel);
                counted = got;
                total.load(Ordering::Acquire)
            }
            None => got,
        };
        let done = ctx.done.borrow().clone();
        if let Some(sent) = done {
            let expected: u64 = ctx.sources.iter().map(|&s| sent[s]).sum();
            if got >= expected || now.duration_since(last_data) >= ctx.idle {
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::fake_broker::{self, Fault};

    async fn fanin(fault: Fault, qos: u8) -> Outcome {
        let addr = fake_broker::start(fault).await;
        let c = Common {
            addr,
            qos,
            duration: Duration::from_millis(300),
            warmup: Duration::from_millis(100),
            payload: 64,
            broker_pid: None,
            connect_timeout: Duration::from_secs(5),
        };
        let spec = FlowSpec {
            scenario: "fanin",
            pub_topics: (0..3).map(|i| format!("bench/fanin/{i}")).collect(),
            subs: vec![("bench/fanin/+".into(), vec![0, 1, 2])],
            rate: Some(20_000.0),
            window: 50,
            persistent_subscribers: false,
            e2e_window: 0,
            batch: 16,
            drain: Duration::from_secs(3),
            idle: Duration::from_millis(300),
            group: None,
        };
        run(&c, spec).await.expect("run")
    }

    fn n(o: &Outcome, key: &str) -> u64 {
        o.get(key)
            .and_then(|v| v.as_u64())
            .unwrap_or_else(|| panic!("no {key}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn correct_broker_passes() {
        for qos in [0, 1] {
            let o = fanin(Fault::None, qos).await;
            assert!(o.ok, "{}", o.to_json_line());
            assert!(n(&o, "sent") > 1000);
            assert_eq!(n(&o, "received"), n(&o, "sent"));
            assert_eq!(n(&o, "lost"), 0);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn faults_are_caught() {
        let o = fanin(Fault::Drop(100), 1).await;
        assert!(!o.ok && n(&o, "lost") > 0, "{}", o.to_json_line());
        // QoS 0 may lose: counted, but not a failure.
        let o = fanin(Fault::Drop(100), 0).await;
        assert!(o.ok && n(&o, "lost") > 0, "{}", o.to_json_line());
        let o = fanin(Fault::Duplicate(100), 0).await;
        assert!(!o.ok && n(&o, "duplicates") > 0, "{}", o.to_json_line());
        let o = fanin(Fault::Reorder(100), 1).await;
        assert!(!o.ok && n(&o, "out_of_order") > 0, "{}", o.to_json_line());
        let o = fanin(Fault::WrongTopic(100), 0).await;
        assert!(!o.ok && n(&o, "wrong_topic") > 0, "{}", o.to_json_line());
        let o = fanin(Fault::Corrupt(100), 1).await;
        assert!(!o.ok && n(&o, "corrupt") > 0, "{}", o.to_json_line());
    }
}
