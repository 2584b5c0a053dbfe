//! `retained`: store R retained messages, then time how long a fresh
//! subscriber to `bench/retained/#` takes to receive all of them (each must
//! carry RETAIN=1 and the right topic/payload). Stale retained messages
//! under the prefix are cleared first, and ours are cleared at the end.

use super::{client_id, keep_alive_for, round, Common, Outcome};
use crate::codec::{self, Packet};
use crate::conn::{self, Reader};
use crate::monitor::{self, Monitor};
use crate::payload;
use crate::stats::{SeqOutcome, SeqTracker};
use anyhow::{bail, Result};
use bytes::BytesMut;
use std::collections::HashSet;
use std::time::Duration;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::time::Instant;

const PREFIX: &str = "bench/retained/";
const SYNC_TOPIC: &str = "bench/retained-sync";

pub struct RetainedSpec {
    pub count: usize,
    pub window: usize,
    pub batch: usize,
    pub timeout: Duration,
    /// Give up receiving after this long without data (after the first message).
    pub idle: Duration,
}

fn topic(i: usize) -> String {
    format!("{PREFIX}{i}")
}

/// Publish `count` messages made by `item(i) -> (topic, payload)`.
/// QoS 1 keeps `window` in flight and waits for every PUBACK; QoS 0 writes
/// in batches and ends with one QoS 1 marker whose PUBACK proves that the
/// broker has processed everything before it.
#[allow(clippy::too_many_arguments)]
async fn publish_all(
    rd: &mut Reader,
    wr: &mut OwnedWriteHalf,
    count: usize,
    qos: u8,
    window: usize,
    batch: usize,
    deadline: Instant,
    item: impl Fn(usize, &mut Vec<u8>) -> String,
) -> Result<()> {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut body = Vec::new();
    let mut next = 0usize;
    let mut in_flight: HashSet<u16> = HashSet::new();
    let mut pid = 0u16;
    let limit = deadline.saturating_duration_since(Instant::now());
    while next < count || !in_flight.is_empty() {
        if Instant::now() >= deadline {
            bail!(
                "publishing timed out ({next}/{count} sent, {} unacked)",
                in_flight.len()
            );
        }
        let free = if qos == 1 {
            window.saturating_sub(in_flight.len())
        } else {
            usize::MAX
        };
        let n = (count - next).min(batch).min(free);
        if n > 0 {
            buf.clear();
            for _ in 0..n {
                let t = item(next, &mut body);
                if qos == 1 {
                    pid = pid.checked_add(1).unwrap_or(1);
                    in_flight.insert(pid);
                }
                codec::publish(
                    &mut buf,
                    t.as_bytes(),
                    qos,
                    true,
                    if qos == 1 { pid } else { 0 },
                    &body,
                );
                next += 1;
            }
            conn::write_all(wr, &buf, limit).await?;
            continue;
        }
        if rd.fill_until(deadline).await?.is_none() {
            continue;
        }
        rd.drain(|p| match p {
            Packet::Puback(id) if in_flight.remove(&id) => Ok(()),
            other => bail!("unexpected packet while publishing: {other:?}"),
        })?;
    }
    if qos == 0 {
        buf.clear();
        codec::publish(&mut buf, SYNC_TOPIC.as_bytes(), 1, false, 1, b"sync");
        conn::write_all(wr, &buf, limit).await?;
        rd.wait_for(deadline, "PUBACK of sync marker", |p| match p {
            Packet::Puback(1) => Ok(Some(())),
            other => bail!("unexpected packet waiting for sync PUBACK: {other:?}"),
        })
        .await?;
    }
    Ok(())
}

/// Subscribe to the prefix and list the topics of retained messages present.
async fn scan(c: &Common, ka: u16, idle: Duration, max: Duration) -> Result<Vec<String>> {
    let (mut rd, mut wr) = conn::mqtt_connect(
        c.addr,
        &client_id("retained", "scan", 0),
        ka,
        256 * 1024,
        c.connect_timeout,
    )
    .await?;
    conn::subscribe(
        &mut rd,
        &mut wr,
        &format!("{PREFIX}#"),
        0,
        c.connect_timeout,
    )
    .await?;
    let hard = Instant::now() + max;
    let mut topics = HashSet::new();
    loop {
        let now = Instant::now();
        if now >= hard || rd.fill_until((now + idle).min(hard)).await?.is_none() {
            break;
        }
        rd.drain(|p| {
            if let Packet::Publish(p) = p {
                if p.retain && !p.payload.is_empty() {
                    topics.insert(String::from_utf8_lossy(p.topic).into_owned());
                }
            }
            Ok(())
        })?;
    }
    conn::disconnect(&mut wr).await;
    Ok(topics.into_iter().collect())
}

pub async fn run(c: &Common, spec: RetainedSpec) -> Result<Outcome> {
    let r = spec.count;
    let ka = keep_alive_for(spec.timeout * 4);
    let mon = Monitor::start(c.broker_pid, spec.timeout * 4 + Duration::from_secs(60));
    let rss_before = c.broker_pid.and_then(|p| monitor::rss_kib(p).ok());
    let mut o = Outcome::new("retained");
    o.set("qos", c.qos);
    o.set("count", r);
    o.set("payload", c.payload);

    // 0. Clear stale retained messages under the prefix.
    let (mut prd, mut pwr) = conn::mqtt_connect(
        c.addr,
        &client_id("retained", "p", 0),
        ka,
        64 * 1024,
        c.connect_timeout,
    )
    .await?;
    let stale = scan(c, ka, Duration::from_millis(300), spec.timeout).await?;
    if !stale.is_empty() {
        eprintln!(
            "[retained] clearing {} stale retained message(s)",
            stale.len()
        );
        let deadline = Instant::now() + spec.timeout;
        publish_all(
            &mut prd,
            &mut pwr,
            stale.len(),
            0,
            spec.window,
            spec.batch,
            deadline,
            |i, body| {
                body.clear();
                stale[i].clone()
            },
        )
        .await?;
    }
    o.set("stale_cleared", stale.len());

    // 1. Store R retained messages.
    let t0 = Instant::now();
    let plen = c.payload;
    publish_all(
        &mut prd,
        &mut pwr,
        r,
        c.qos,
        spec.window,
        spec.batch,
        t0 + spec.timeout,
        |i, body| {
            body.resize(plen, 0);
            payload::write(body, 0, i as u64, payload::now_ns());
            topic(i)
        },
    )
    .await?;
    let publish_s = t0.elapsed().as_secs_f64();
    o.set("publish_s", round(publish_s, 3));
    o.set(
        "publish_msgs_per_s",
        round(r as f64 / publish_s.max(1e-9), 1),
    );
    let rss_stored = c.broker_pid.and_then(|p| monitor::rss_kib(p).ok());

    // 2. Fresh subscriber: time SUBSCRIBE -> all R retained messages.
    let (mut rd, mut wr) = conn::mqtt_connect(
        c.addr,
        &client_id("retained", "s", 0),
        ka,
        256 * 1024,
        c.connect_timeout,
    )
    .await?;
    let mut sub = BytesMut::new();
    codec::subscribe(&mut sub, 1, &[(&format!("{PREFIX}#"), c.qos)]);
    let ts = Instant::now();
    let deadline = ts + spec.timeout;
    conn::write_all(&mut wr, &sub, spec.timeout).await?;
    let mut tracker = SeqTracker::default();
    let (mut suback_at, mut first_at, mut all_at) = (None, None, None);
    let (mut not_retained, mut corrupt, mut wrong_topic) = (0u64, 0u64, 0u64);
    let mut acks = BytesMut::new();
    let mut tbuf = String::new();
    let res: Result<()> = async {
        while all_at.is_none() && Instant::now() < deadline {
            let wait = match first_at {
                Some(_) => (Instant::now() + spec.idle).min(deadline),
                None => deadline,
            };
            if rd.fill_until(wait).await?.is_none() {
                break;
            }
            let now = Instant::now();
            rd.drain(|p| {
                match p {
                    Packet::Suback {
                        pid: 1,
                        codes: [code],
                    } => {
                        if *code == 0x80 || *code < c.qos {
                            bail!("SUBACK return code {code:#x} for QoS {}", c.qos);
                        }
                        suback_at = Some(now);
                    }
                    Packet::Publish(p) => {
                        if p.qos == 1 {
                            codec::puback(&mut acks, p.pid);
                        }
                        first_at.get_or_insert(now);
                        if !p.retain {
                            not_retained += 1;
                            return Ok(());
                        }
                        let Some(h) = payload::read(p.payload, plen)
                            .filter(|h| h.publisher == 0 && (h.seq as usize) < r)
                        else {
                            corrupt += 1;
                            return Ok(());
                        };
                        tbuf.clear();
                        tbuf.push_str(PREFIX);
                        tbuf.push_str(&h.seq.to_string());
                        if p.topic != tbuf.as_bytes() {
                            wrong_topic += 1;
                            return Ok(());
                        }
                        if tracker.record(h.seq) != SeqOutcome::Duplicate
                            && tracker.unique == r as u64
                        {
                            all_at = Some(now);
                        }
                    }
                    other => bail!("unexpected packet on subscriber: {other:?}"),
                }
                Ok(())
            })?;
            if !acks.is_empty() {
                conn::write_all(&mut wr, &acks, spec.timeout).await?;
                acks.clear();
            }
        }
        Ok(())
    }
    .await;
    conn::disconnect(&mut wr).await;
    drop(rd);
    let ms = |t: Option<Instant>| t.map(|t| round((t - ts).as_secs_f64() * 1000.0, 3));
    o.set("received", tracker.unique);
    o.set("duplicates", tracker.duplicates);
    o.set("not_retained", not_retained);
    o.set("wrong_topic", wrong_topic);
    o.set("corrupt", corrupt);
    o.set("ms_to_suback", ms(suback_at));
    o.set("ms_to_first", ms(first_at));
    o.set("ms_to_receive_all", ms(all_at));
    if let Some(t) = all_at {
        o.set(
            "msgs_per_s",
            round(r as f64 / (t - ts).as_secs_f64().max(1e-9), 1),
        );
    }
    if let Err(e) = res {
        o.fail(format!("subscriber: {e:#}"));
    }
    if suback_at.is_none() {
        o.fail("no SUBACK received");
    }
    if all_at.is_none() {
        o.fail(format!(
            "received {} of {r} retained messages (limit {:?}, idle limit {:?})",
            tracker.unique, spec.timeout, spec.idle
        ));
    }
    if not_retained + wrong_topic + corrupt > 0 {
        o.fail(format!(
            "{not_retained} without RETAIN, {wrong_topic} wrong topic, {corrupt} corrupt"
        ));
    }

    // 3. Clean up: empty retained payloads delete them.
    let tc = Instant::now();
    let cleanup = publish_all(
        &mut prd,
        &mut pwr,
        r,
        0,
        spec.window,
        spec.batch,
        tc + spec.timeout,
        |i, body| {
            body.clear();
            topic(i)
        },
    )
    .await;
    conn::disconnect(&mut pwr).await;
    match cleanup {
        Ok(()) => {
            let left = scan(c, ka, Duration::from_millis(300), spec.timeout).await?;
            o.set("leftover_retained", left.len());
            if !left.is_empty() {
                o.fail(format!(
                    "{} retained message(s) still present after cleanup",
                    left.len()
                ));
            }
        }
        Err(e) => o.fail(format!("cleanup: {e:#}")),
    }
    let report = mon.finish();
    if c.broker_pid.is_some() {
        o.set("rss_before_kib", rss_before);
        o.set("rss_stored_kib", rss_stored);
        o.set("peak_rss_kib", report.peak_rss_kib());
        o.set(
            "rss_after_kib",
            c.broker_pid.and_then(|p| monitor::rss_kib(p).ok()),
        );
    }
    Ok(o.finish())
}
