//! `conns`: open C idle MQTT connections with bounded concurrency, measure
//! the CONNACK rate, hold them, and report the broker's RSS per connection.
//!
//! Sockets are spread over source addresses 127.0.0.1..127.0.0.N (one per
//! `per_ip` connections) so the ephemeral port range is never exhausted.

use super::{client_id, round, Common, Outcome};
use crate::codec;
use crate::conn;
use crate::monitor::{self, Monitor};
use anyhow::{anyhow, bail, Result};
use bytes::BytesMut;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::timeout;

pub struct ConnsSpec {
    pub conns: usize,
    pub hold: Duration,
    pub concurrency: usize,
    pub per_ip: usize,
    pub keep_alive: u16,
}

async fn open(c: &Common, bind: Option<IpAddr>, id: String, ka: u16) -> Result<TcpStream> {
    let mut s = conn::tcp(c.addr, bind, c.connect_timeout).await?;
    let mut buf = BytesMut::new();
    codec::connect(&mut buf, &id, ka, true);
    timeout(c.connect_timeout, s.write_all(&buf))
        .await
        .map_err(|_| anyhow!("CONNECT write timed out"))??;
    let mut ack = [0u8; 4];
    timeout(c.connect_timeout, s.read_exact(&mut ack))
        .await
        .map_err(|_| anyhow!("CONNACK timed out"))??;
    match codec::parse(&ack)? {
        Some((p, 4)) => conn::connack_ok(p)?,
        _ => bail!("malformed CONNACK {ack:?}"),
    };
    Ok(s)
}

/// PINGREQ -> expect PINGRESP, then DISCONNECT and close. True if alive.
async fn probe_and_close(mut s: TcpStream, limit: Duration) -> bool {
    let mut buf = BytesMut::new();
    codec::pingreq(&mut buf);
    let mut resp = [0u8; 2];
    let alive = timeout(limit, async {
        s.write_all(&buf).await?;
        s.read_exact(&mut resp).await?;
        std::io::Result::Ok(())
    })
    .await
    .map(|r| r.is_ok())
    .unwrap_or(false)
        && matches!(codec::parse(&resp), Ok(Some((codec::Packet::Pingresp, 2))));
    buf.clear();
    codec::disconnect(&mut buf);
    let _ = timeout(limit, s.write_all(&buf)).await;
    alive
}

pub async fn run(c: &Common, spec: ConnsSpec) -> Result<Outcome> {
    let nofile = monitor::raise_nofile(spec.conns as u64 + 100)?;
    let loopback_v4 = matches!(c.addr.ip(), IpAddr::V4(ip) if ip.is_loopback());
    let n_ips = if loopback_v4 {
        spec.conns.div_ceil(spec.per_ip.max(1)).clamp(1, 250)
    } else {
        1
    };
    let rss_before = c.broker_pid.and_then(|p| monitor::rss_kib(p).ok());
    let mon = Monitor::start(
        c.broker_pid,
        c.connect_timeout * 4 + spec.hold + Duration::from_secs(600),
    );
    eprintln!("[conns] opening {} connections from {n_ips} source address(es), {} in flight (nofile {nofile})", spec.conns, spec.concurrency);

    let t0 = Instant::now();
    let mut streams = Vec::with_capacity(spec.conns);
    let mut failures = 0usize;
    let mut first_errors: Vec<String> = Vec::new();
    let mut set: JoinSet<Result<TcpStream>> = JoinSet::new();
    let mut record = |r: Result<Result<TcpStream>, tokio::task::JoinError>,
                      streams: &mut Vec<TcpStream>| match r {
        Ok(Ok(s)) => streams.push(s),
        Ok(Err(e)) => {
            failures += 1;
            if first_errors.len() < 5 {
                first_errors.push(format!("{e:#}"));
            }
        }
        Err(e) => {
            failures += 1;
            if first_errors.len() < 5 {
                first_errors.push(format!("task: {e}"));
            }
        }
    };
    for i in 0..spec.conns {
        while set.len() >= spec.concurrency.max(1) {
            if let Some(r) = set.join_next().await {
                record(r, &mut streams);
            }
        }
        let bind = loopback_v4.then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % n_ips) as u8)));
        let (c2, id, ka) = (c.clone(), client_id("conns", "c", i), spec.keep_alive);
        set.spawn(async move { open(&c2, bind, id, ka).await });
    }
    while let Some(r) = set.join_next().await {
        record(r, &mut streams);
    }
    let connect_s = t0.elapsed().as_secs_f64();
    let connected = streams.len();
    eprintln!(
        "[conns] {connected} connected, {failures} failed in {connect_s:.2} s; holding {:?}",
        spec.hold
    );

    tokio::time::sleep(spec.hold).await;
    let rss_held = c.broker_pid.and_then(|p| monitor::rss_kib(p).ok());
    let gen_rss = monitor::rss_kib(std::process::id()).ok();
    // Liveness probe: every held connection must answer PINGREQ with PINGRESP.
    let tp = Instant::now();
    let mut dropped = 0usize;
    let mut set: JoinSet<bool> = JoinSet::new();
    let limit = c.connect_timeout;
    for s in streams {
        while set.len() >= spec.concurrency.max(1) {
            if let Some(r) = set.join_next().await {
                dropped += !r.unwrap_or(false) as usize;
            }
        }
        set.spawn(probe_and_close(s, limit));
    }
    while let Some(r) = set.join_next().await {
        dropped += !r.unwrap_or(false) as usize;
    }
    let probe_s = tp.elapsed().as_secs_f64();
    let report = mon.finish();

    let mut o = Outcome::new("conns");
    o.set("conns", spec.conns);
    o.set("connected", connected);
    o.set("failures", failures);
    o.set("not_alive_after_hold", dropped);
    o.set("probe_s", round(probe_s, 3));
    o.set("source_addrs", n_ips);
    o.set("connect_s", round(connect_s, 3));
    o.set(
        "connacks_per_s",
        round(connected as f64 / connect_s.max(1e-9), 1),
    );
    o.set("hold_s", round(spec.hold.as_secs_f64(), 3));
    o.set("gen_rss_kib", gen_rss);
    if c.broker_pid.is_some() {
        o.set("rss_before_kib", rss_before);
        o.set("rss_held_kib", rss_held);
        o.set("peak_rss_kib", report.peak_rss_kib());
        if let (Some(b), Some(h)) = (rss_before, rss_held) {
            if connected > 0 {
                o.set(
                    "rss_per_conn_bytes",
                    round((h as f64 - b as f64) * 1024.0 / connected as f64, 1),
                );
                if h <= b {
                    o.set("note", "broker RSS did not grow: it probably reuses memory freed by an earlier run; measure on a freshly started broker");
                }
            }
        }
    }
    if !first_errors.is_empty() {
        o.set("first_errors", first_errors);
    }
    if failures > 0 {
        o.fail(format!("{failures} connection(s) failed"));
    }
    if dropped > 0 {
        o.fail(format!(
            "{dropped} connection(s) did not answer PINGREQ after the hold"
        ));
    }
    Ok(o.finish())
}
