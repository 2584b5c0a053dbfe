//! `bridge`: messages published at QoS 1 on one broker (`--port`) and received on another
//! (`--remote-port`) that a bridge forwards them to. Phases: `steady` (both at once: the
//! forwarding rate), `publish` (only publish, e.g. while the remote is down: the backlog) and
//! `collect` (only receive: the drain time of a backlog, first to last message). Payloads carry
//! an 8-byte sequence number; order and loss are checked (QoS 1 duplicates are counted).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Result};
use bytes::BytesMut;
use tokio::time::Instant;

use super::{Common, Outcome};
use crate::codec::{self, Packet};
use crate::conn::{self, Reader};

const TOPIC: &[u8] = b"bench/bridge/seq";
const FILTER: &str = "bench/bridge/#";

/// Which part of the path to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    Steady,
    Publish,
    Collect,
}

/// Publishes `n` numbered QoS 1 messages with at most `window` unacknowledged; returns the
/// seconds from the first PUBLISH to the last PUBACK.
async fn publish(c: &Common, n: u64, window: usize, batch: usize) -> Result<f64> {
    let (mut rd, mut wr) =
        conn::mqtt_connect(c.addr, "bench-bridge-pub", 60, 1 << 16, c.connect_timeout).await?;
    let payload_len = c.payload.max(8);
    let mut buf = BytesMut::with_capacity(batch * (payload_len + 32));
    let mut payload = vec![0u8; payload_len];
    let (mut sent, mut acked) = (0u64, 0u64);
    let start = Instant::now();
    while acked < n {
        buf.clear();
        let mut k = 0;
        while sent < n && (sent - acked) < window as u64 && k < batch {
            payload[..8].copy_from_slice(&sent.to_be_bytes());
            let pid = (sent % 65535) as u16 + 1;
            codec::publish(&mut buf, TOPIC, 1, false, pid, &payload);
            sent += 1;
            k += 1;
        }
        if !buf.is_empty() {
            conn::write_all(&mut wr, &buf, Duration::from_secs(30)).await?;
        }
        if rd
            .fill_until(Instant::now() + Duration::from_secs(60))
            .await?
            .is_none()
        {
            bail!("no PUBACK for 60 s ({acked} of {n} acknowledged)");
        }
        rd.drain(|p| {
            if let Packet::Puback(_) = p {
                acked += 1;
            }
            Ok(())
        })?;
    }
    let secs = start.elapsed().as_secs_f64();
    conn::disconnect(&mut wr).await;
    Ok(secs)
}

/// What the collector saw.
struct Collected {
    received: u64,
    duplicates: u64,
    out_of_order: u64,
    /// Seconds from the first message to the last.
    span_s: f64,
    /// When the first message arrived.
    first: Option<Instant>,
    last: Option<Instant>,
}

/// Subscribes on `remote` (already connected: `rd`/`wr`) and reads until `n` distinct
/// messages arrived, or `idle` passed without any.
async fn collect(
    mut rd: Reader,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    n: u64,
    idle: Duration,
) -> Result<Collected> {
    let mut next = 0u64;
    let (mut duplicates, mut out_of_order) = (0u64, 0u64);
    let (mut first, mut last) = (None, None);
    let mut acks = BytesMut::new();
    while next < n {
        if rd.fill_until(Instant::now() + idle).await?.is_none() {
            break;
        }
        let now = Instant::now();
        acks.clear();
        rd.drain(|p| {
            if let Packet::Publish(p) = p {
                if p.qos > 0 {
                    codec::puback(&mut acks, p.pid);
                }
                let seq = p
                    .payload
                    .get(..8)
                    .map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()))
                    .unwrap_or(u64::MAX);
                first.get_or_insert(now);
                last = Some(now);
                if seq == next {
                    next += 1;
                } else if seq < next {
                    duplicates += 1;
                } else {
                    out_of_order += 1;
                    next = seq + 1;
                }
            }
            Ok(())
        })?;
        if !acks.is_empty() {
            conn::write_all(&mut wr, &acks, Duration::from_secs(30)).await?;
        }
    }
    conn::disconnect(&mut wr).await;
    let span_s = match (first, last) {
        (Some(f), Some(l)) => (l - f).as_secs_f64(),
        _ => 0.0,
    };
    Ok(Collected {
        received: next,
        duplicates,
        out_of_order,
        span_s,
        first,
        last,
    })
}

/// Runs `phase` for `n` messages.
pub async fn run(
    c: &Common,
    remote: SocketAddr,
    phase: Phase,
    n: u64,
    window: usize,
    idle: Duration,
) -> Result<Outcome> {
    let mut out = Outcome::new("bridge");
    out.set("phase", format!("{phase:?}").to_lowercase());
    out.set("messages", n);
    out.set("payload", c.payload.max(8));
    let collector = if phase != Phase::Publish {
        let (mut rd, mut wr) =
            conn::mqtt_connect(remote, "bench-bridge-sub", 60, 1 << 16, c.connect_timeout).await?;
        conn::subscribe(&mut rd, &mut wr, FILTER, 1, c.connect_timeout).await?;
        Some(tokio::spawn(collect(rd, wr, n, idle)))
    } else {
        None
    };
    let start = Instant::now();
    if phase != Phase::Collect {
        let secs = publish(c, n, window, 256).await?;
        out.set("publish_s", secs);
        out.set("publish_msgs_per_s", n as f64 / secs.max(1e-9));
    }
    if let Some(task) = collector {
        let got = task.await??;
        out.set("received", got.received);
        out.set("duplicates", got.duplicates);
        if got.received < n {
            out.fail(format!("only {} of {n} messages arrived", got.received));
        }
        if got.out_of_order > 0 {
            out.fail(format!(
                "{} messages out of order or lost",
                got.out_of_order
            ));
        }
        match phase {
            Phase::Steady => {
                let end = got.last.map_or(0.0, |l| (l - start).as_secs_f64());
                out.set("end_to_end_s", end);
                out.set("forwarded_msgs_per_s", got.received as f64 / end.max(1e-9));
            }
            _ => {
                out.set("drain_s", got.span_s);
                out.set(
                    "drain_msgs_per_s",
                    got.received as f64 / got.span_s.max(1e-9),
                );
                if let Some(f) = got.first {
                    out.set("wait_for_first_s", (f - start).as_secs_f64());
                }
            }
        }
    }
    Ok(out.finish())
}
