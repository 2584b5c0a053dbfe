//! The admin HTTP port and `$SYS` (issue #10 items 2 and 3), through the real binary.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::admin::{dom_metric, get, http_raw, read_response, scrape, value};
use common::{BrokerProc, WAIT};

fn http(b: &BrokerProc) -> SocketAddr {
    b.http_addr.expect("the admin port is on")
}

/// Runs `brokerd health ARGS`; returns (exit code, stdout + stderr).
fn health(args: &[&str]) -> (i32, String) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_brokerd"))
        .arg("health")
        .args(args)
        .output()
        .expect("run brokerd health");
    assert!(started.elapsed() < WAIT, "brokerd health took too long");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// issue #10 item 3: /healthz answers 200 "ok" and /readyz 200 once the broker listens; other
/// paths get 404 and other methods 405 with an Allow header.
#[test]
fn healthz_readyz_and_unknown_paths() {
    let b = BrokerProc::start("");
    let r = get(http(&b), "/healthz");
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"), "{r:?}");
    let r = get(http(&b), "/readyz");
    assert_eq!(r.status, 200, "{r:?}");
    let r = get(http(&b), "/no/such/page");
    assert_eq!(r.status, 404, "{r:?}");
    let r = http_raw(
        http(&b),
        b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 405, "{r:?}");
    assert_eq!(r.header("allow"), Some("GET, HEAD"), "{r:?}");
    let r = http_raw(http(&b), b"HEAD /healthz HTTP/1.1\r\n\r\n");
    assert_eq!((r.status, r.body.as_str()), (200, ""), "{r:?}");
    assert_eq!(r.header("content-length"), Some("3"), "{r:?}");
}

/// issue #10 item 3: `[http] enabled = false` binds no admin port and prints no line for it.
#[test]
fn the_admin_port_can_be_turned_off() {
    let b = BrokerProc::start("[http]\nenabled = false\n");
    assert_eq!(b.http_addr, None);
}

/// issue #10 item 3: `brokerd health` exits 0 against a live broker (from --url and from the
/// broker's own --config), and 1 with the reason when nothing listens there or the path is
/// not healthy.
#[test]
fn brokerd_health_exit_codes() {
    let b = BrokerProc::start("");
    let addr = http(&b);
    let (code, out) = health(&["--url", &format!("http://{addr}/healthz")]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("healthy"), "{out}");
    // The config the broker runs on names port 0, which cannot be probed: use a config that
    // names the bound port, as a Docker image's does, with the wildcard address.
    let cfg = b.dir.path().join("probe.toml");
    std::fs::write(
        &cfg,
        format!("[http]\nbind = \"0.0.0.0:{}\"\n", addr.port()),
    )
    .expect("write");
    let (code, out) = health(&["--config", cfg.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{out}");
    // A path that is not 200.
    let (code, out) = health(&["--url", &format!("http://{addr}/nope")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("404"), "{out}");
    // The wrong port: the MQTT listener does not speak HTTP and closes.
    let (code, out) = health(&[
        "--url",
        &format!("http://{}/healthz", b.addr),
        "--timeout-ms",
        "1000",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("unhealthy"), "{out}");
    // Down: the broker stopped, nothing listens.
    drop(b);
    let (code, out) = health(&["--url", &format!("http://{addr}/healthz")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cannot connect"), "{out}");
}

/// issue #10 item 3: bad HTTP input gets a defined answer and never hurts the broker: garbage
/// gets 400, an oversized head 431, a head that never ends (slowloris) 408 after the read
/// timeout, an unsupported version 505; /healthz still answers afterwards.
#[test]
fn bad_http_input_gets_a_defined_answer() {
    let b = BrokerProc::start("");
    let addr = http(&b);
    let r = http_raw(addr, b"\x16\x03\x01\x00\xa5garbage\r\n\r\n");
    assert_eq!(r.status, 400, "{r:?}");
    let r = http_raw(addr, b"GET / HTTP/7.0\r\n\r\n");
    assert_eq!(r.status, 505, "{r:?}");
    let mut big = b"GET / HTTP/1.1\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'a', 64 * 1024));
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    // The server answers once it has 8 KiB and may close before taking the rest.
    let _ = s.write_all(&big);
    let r = read_response(&mut s);
    assert_eq!(r.status, 431, "{r:?}");
    // Slowloris: a head that trickles and never ends is cut at the read timeout (5 s).
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let started = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nX-a: ").expect("write");
    let r = read_response(&mut s);
    assert_eq!(r.status, 408, "{r:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(4) && took < WAIT,
        "cut after {took:?}"
    );
    assert_eq!(get(addr, "/healthz").status, 200);
}

/// issue #10 item 3: /metrics parses as Prometheus text, and after real publishes (rumqttc)
/// its counters moved by exactly what was sent: PUBLISH received and sent by QoS, payload
/// bytes, connections, subscriptions, retained messages; and every metric the README lists
/// is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_real_traffic_exactly() {
    let b = BrokerProc::start("[sys]\ninterval_s = 0\n");
    let before = scrape(&b);
    for name in [
        "brokerd_uptime_seconds",
        "brokerd_connections",
        "brokerd_connections_max",
        "brokerd_sockets_accepted_total",
        "brokerd_connections_accepted_total",
        "brokerd_auth_failures_total",
        "brokerd_sessions",
        "brokerd_subscriptions",
        "brokerd_retained_messages",
        "brokerd_queued_messages",
        "brokerd_queued_bytes",
        "brokerd_inflight_messages",
        "brokerd_messages_routed_total",
        "brokerd_received_bytes_total",
        "brokerd_sent_bytes_total",
        "brokerd_publish_received_payload_bytes_total",
        "brokerd_publish_sent_payload_bytes_total",
        "brokerd_resident_memory_bytes",
        "brokerd_publish_received_total{qos=\"0\"}",
        "brokerd_publish_sent_total{qos=\"2\"}",
        "brokerd_connections_refused_total{reason=\"max_connections\"}",
        "brokerd_connections_refused_total{reason=\"not_authorized\"}",
        "brokerd_messages_dropped_total{reason=\"max_queued_messages\"}",
        "brokerd_messages_dropped_total{reason=\"max_queued_bytes\"}",
        "brokerd_messages_dropped_total{reason=\"fair_share\"}",
        "brokerd_messages_dropped_total{reason=\"max_queued_bytes_total\"}",
        "brokerd_messages_dropped_total{reason=\"publish_denied\"}",
        "brokerd_messages_dropped_total{reason=\"share_group_no_member\"}",
        "brokerd_messages_dropped_total{reason=\"session_expired\"}",
        "brokerd_dead_letters_total{reason=\"queue_full_messages\"}",
        "brokerd_dead_letters_total{reason=\"queue_full_bytes\"}",
        "brokerd_dead_letters_total{reason=\"budget\"}",
        "brokerd_dead_letters_total{reason=\"expired\"}",
        "brokerd_dead_letters_total{reason=\"no_member\"}",
        "brokerd_dead_letters_total{reason=\"journal_full\"}",
        "brokerd_dead_letters_dropped_total{reason=\"max_queued_messages\"}",
        "brokerd_dead_letters_dropped_total{reason=\"max_queued_bytes\"}",
        "brokerd_dead_letters_dropped_total{reason=\"dead_letter_dropped\"}",
        "brokerd_dead_letters_dropped_total{reason=\"invalid_topic\"}",
        "brokerd_share_groups",
        "brokerd_share_group_members",
        "brokerd_shared_messages_handed_over_total",
        "brokerd_store_flush_duration_seconds_bucket{le=\"+Inf\"}",
        "brokerd_store_flush_duration_seconds_count",
        "brokerd_http_requests_total",
    ] {
        value(&before, name);
    }
    assert_eq!(value(&before, "brokerd_connections"), 0.0);
    let mut sub = common::connect(b.addr, "m-sub").await;
    sub.subscribe("m/#", rumqttc::QoS::AtLeastOnce).await;
    let mut publ = common::connect(b.addr, "m-pub").await;
    // 3 x QoS 0 (5 bytes each), 2 x QoS 1 (7 bytes), 1 x QoS 2 (11 bytes), one of them retained.
    for _ in 0..3 {
        publ.publish("m/a", rumqttc::QoS::AtMostOnce, false, *b"12345")
            .await;
    }
    for _ in 0..2 {
        publ.publish("m/b", rumqttc::QoS::AtLeastOnce, false, *b"1234567")
            .await;
    }
    publ.publish("m/c", rumqttc::QoS::ExactlyOnce, true, *b"12345678901")
        .await;
    for _ in 0..6 {
        sub.next_publish().await;
    }
    publ.barrier().await;
    sub.barrier().await;
    let after = scrape(&b);
    let delta = |s: &str| value(&after, s) - value(&before, s);
    assert_eq!(delta("brokerd_publish_received_total{qos=\"0\"}"), 3.0);
    assert_eq!(delta("brokerd_publish_received_total{qos=\"1\"}"), 2.0);
    assert_eq!(delta("brokerd_publish_received_total{qos=\"2\"}"), 1.0);
    // The subscription grants QoS 1: QoS 2 is delivered at QoS 1.
    assert_eq!(delta("brokerd_publish_sent_total{qos=\"0\"}"), 3.0);
    assert_eq!(delta("brokerd_publish_sent_total{qos=\"1\"}"), 3.0);
    assert_eq!(delta("brokerd_publish_sent_total{qos=\"2\"}"), 0.0);
    let payload = (3 * 5 + 2 * 7 + 11) as f64;
    assert_eq!(
        delta("brokerd_publish_received_payload_bytes_total"),
        payload
    );
    assert_eq!(delta("brokerd_publish_sent_payload_bytes_total"), payload);
    assert_eq!(delta("brokerd_messages_routed_total"), 6.0);
    assert_eq!(value(&after, "brokerd_connections"), 2.0);
    assert_eq!(value(&after, "brokerd_connections_max"), 2.0);
    assert_eq!(delta("brokerd_connections_accepted_total"), 2.0);
    assert_eq!(delta("brokerd_sockets_accepted_total"), 2.0);
    assert_eq!(value(&after, "brokerd_sessions"), 2.0);
    assert_eq!(value(&after, "brokerd_subscriptions"), 1.0);
    assert_eq!(value(&after, "brokerd_retained_messages"), 1.0);
    assert_eq!(value(&after, "brokerd_inflight_messages"), 0.0);
    assert!(delta("brokerd_received_bytes_total") > payload);
    assert!(delta("brokerd_sent_bytes_total") > payload);
    assert!(value(&after, "brokerd_resident_memory_bytes") > 1e6);
    // A subscriber that leaves is no longer counted as connected.
    sub.disconnect().await;
    b.wait_disconnected("m-sub", 1);
    assert_eq!(value(&scrape(&b), "brokerd_connections"), 1.0);
}

/// issue #10 item 3: socket bytes are counted exactly: what a raw client sends after CONNECT
/// and what it reads back from CONNACK on. (A counter moves just after its write returns, so
/// the test waits, bounded, for the expected value and then checks it is not exceeded.)
#[test]
fn metrics_count_socket_bytes_exactly() {
    let b = BrokerProc::start("[sys]\ninterval_s = 0\n");
    let mut raw = common::Raw::connected(b.addr, "bytes");
    raw.ping();
    // CONNACK (4) + PINGRESP (2) out, PINGREQ (2) in.
    settles(&b, "brokerd_sent_bytes_total", 6.0);
    settles(&b, "brokerd_received_bytes_total", 2.0);
    let publish = common::publish_packet("b/x", 1, false, false, 7, b"hello");
    raw.send(&publish);
    let ack = raw.expect_packet("PUBACK");
    raw.ping();
    settles(
        &b,
        "brokerd_received_bytes_total",
        (2 + publish.len() + 2) as f64,
    );
    settles(&b, "brokerd_sent_bytes_total", (6 + ack.len() + 2) as f64);
}

/// Waits (bounded) until `series` reaches `want`, then asserts it is exactly `want`.
fn settles(b: &BrokerProc, series: &str, want: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = value(&scrape(b), series);
        if v >= want || Instant::now() > deadline {
            assert_eq!(v, want, "{series}");
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// issue #10 item 3: refused logins count as auth failures and refusals by reason.
#[test]
fn refused_logins_are_counted_by_reason() {
    let b = BrokerProc::start("[auth]\nallow_anonymous = false\n[sys]\ninterval_s = 0\n");
    let before = scrape(&b);
    let mut raw = common::Raw::connect(b.addr);
    raw.send(&common::connect_packet("anon", true, 60));
    assert_eq!(raw.expect_packet("CONNACK"), vec![0x20, 0x02, 0x00, 0x05]);
    let after = scrape(&b);
    let delta = |s: &str| value(&after, s) - value(&before, s);
    assert_eq!(delta("brokerd_auth_failures_total"), 1.0);
    assert_eq!(
        delta("brokerd_connections_refused_total{reason=\"not_authorized\"}"),
        1.0
    );
    assert_eq!(delta("brokerd_connections_accepted_total"), 0.0);
}

/// issue #10 item 3: with persistence on, the flush latency histogram counts real flushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_latency_histogram_counts_flushes() {
    let b = BrokerProc::start(
        "[persistence]\nenabled = true\npath = \"data\"\n[sys]\ninterval_s = 0\n",
    );
    let before = scrape(&b);
    let mut c = common::connect(b.addr, "flush").await;
    c.publish_routed("f/x", rumqttc::QoS::AtLeastOnce, true, *b"v")
        .await;
    let after = scrape(&b);
    let n = value(&after, "brokerd_store_flush_duration_seconds_count")
        - value(&before, "brokerd_store_flush_duration_seconds_count");
    assert!(n >= 1.0, "no flush counted");
    assert_eq!(
        value(
            &after,
            "brokerd_store_flush_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        value(&after, "brokerd_store_flush_duration_seconds_count")
    );
}

/// Collects `$SYS` PUBLISHes until `done` holds for what arrived (at most `WAIT`).
async fn sys_until(
    c: &mut common::Client,
    what: &str,
    mut done: impl FnMut(&[(rumqttc::Publish, Instant)]) -> bool,
) -> Vec<(rumqttc::Publish, Instant)> {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while !done(&got) {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.next_publish_within(left).await {
            Some(p) => got.push((p, Instant::now())),
            None => panic!(
                "timed out waiting for {what}; got {:?}",
                got.iter()
                    .map(|(p, _)| (&p.topic, &p.payload))
                    .collect::<Vec<_>>()
            ),
        }
    }
    got
}

fn payload(p: &rumqttc::Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

/// issue #10 item 2: `$SYS/broker/...` topics arrive retained on subscribe, with Mosquitto's
/// names and formats and the expected values, and are republished every `[sys] interval_s`
/// (1 s here): two consecutive uptime updates are about a second apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_topics_arrive_retained_with_expected_values() {
    let b = BrokerProc::start("[sys]\ninterval_s = 1\n");
    let mut publ = common::connect(b.addr, "sys-pub").await;
    publ.publish_routed("s/x", rumqttc::QoS::AtLeastOnce, true, *b"abc")
        .await;
    publ.publish_routed("s/y", rumqttc::QoS::AtMostOnce, false, *b"de")
        .await;
    // The tree of the next interval has both publishes.
    let mut watch = common::connect(b.addr, "sys-watch").await;
    watch
        .subscribe(
            "$SYS/broker/publish/messages/received",
            rumqttc::QoS::AtMostOnce,
        )
        .await;
    sys_until(&mut watch, "publish/messages/received = 2", |got| {
        got.iter().any(|(p, _)| payload(p) == "2")
    })
    .await;
    drop(watch);
    let mut sub = common::connect(b.addr, "sys-sub").await;
    sub.subscribe("$SYS/broker/#", rumqttc::QoS::AtMostOnce)
        .await;
    let names = [
        "version",
        "uptime",
        "clients/connected",
        "clients/disconnected",
        "clients/total",
        "clients/maximum",
        "messages/received",
        "messages/sent",
        "messages/stored",
        "publish/messages/received",
        "publish/messages/sent",
        "bytes/received",
        "bytes/sent",
        "load/messages/received/1min",
        "load/messages/sent/5min",
        "load/bytes/received/15min",
        "load/connections/1min",
        "subscriptions/count",
        "retained messages/count",
        "heap/current",
    ];
    // The retained tree arrives as one burst on SUBSCRIBE: wait for all of it (every listed
    // name, and as many distinct retained topics as its own count says, less s/x), so that the
    // count below is compared with the whole tree, not with the part read so far.
    let distinct_retained = |got: &[(rumqttc::Publish, Instant)]| {
        got.iter()
            .filter(|(p, _)| p.retain)
            .map(|(p, _)| p.topic.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    let got = sys_until(&mut sub, "the retained $SYS tree", |got| {
        let count = got
            .iter()
            .find(|(p, _)| p.retain && p.topic == "$SYS/broker/retained messages/count")
            .and_then(|(p, _)| payload(p).parse::<usize>().ok());
        names.iter().all(|n| {
            got.iter()
                .any(|(p, _)| p.retain && p.topic == format!("$SYS/broker/{n}"))
        }) && count.is_some_and(|c| distinct_retained(got) + 1 >= c)
    })
    .await;
    let retained = |n: &str| {
        got.iter()
            .find(|(p, _)| p.retain && p.topic == format!("$SYS/broker/{n}"))
            .map(|(p, _)| payload(p))
            .expect("retained value")
    };
    assert_eq!(
        retained("version"),
        format!("brokerd version {}", env!("CARGO_PKG_VERSION"))
    );
    let uptime = retained("uptime");
    let secs = uptime
        .strip_suffix(" seconds")
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("uptime {uptime:?}"));
    assert!(secs < 60, "{uptime}");
    assert_eq!(retained("publish/messages/received"), "2");
    assert_eq!(retained("messages/received"), "2");
    // Retained messages count the $SYS tree itself (as Mosquitto's does) plus s/x.
    let tree = distinct_retained(&got);
    assert_eq!(retained("retained messages/count"), (tree + 1).to_string());
    // sys-pub is connected, sys-sub may be already, sys-watch may be still (it is leaving):
    // all clean sessions, so none is disconnected and the total is the connected count.
    let connected = retained("clients/connected");
    assert!(["1", "2", "3"].contains(&connected.as_str()), "{connected}");
    assert_eq!(retained("clients/total"), connected);
    assert_eq!(retained("clients/disconnected"), "0");
    assert!(retained("heap/current")
        .parse::<u64>()
        .is_ok_and(|h| h > 1_000_000));
    let load = retained("load/messages/received/1min");
    assert!(load.parse::<f64>().is_ok() && load.contains('.'), "{load}");
    // Live updates (not retained) come every second.
    let updates = sys_until(&mut sub, "two live uptime updates", |got| {
        got.iter()
            .filter(|(p, _)| !p.retain && p.topic == "$SYS/broker/uptime")
            .count()
            >= 2
    })
    .await;
    let times: Vec<Instant> = updates
        .iter()
        .filter(|(p, _)| !p.retain && p.topic == "$SYS/broker/uptime")
        .map(|(_, t)| *t)
        .collect();
    let gap = times[1] - times[0];
    assert!(
        gap > Duration::from_millis(500) && gap < Duration::from_millis(2500),
        "uptime updates {gap:?} apart"
    );
    // Now two clients are connected (sys-pub and sys-sub).
    let connected = sys_until(&mut sub, "clients/connected = 2", |got| {
        got.iter()
            .any(|(p, _)| p.topic == "$SYS/broker/clients/connected" && payload(p) == "2")
    })
    .await;
    assert!(!connected.is_empty());
}

/// issue #10 item 2: clients cannot publish into `$SYS`: the PUBLISH is acknowledged (as
/// Mosquitto does), nothing is routed or retained, and it is counted as denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_publish_into_sys() {
    let b = BrokerProc::start("[sys]\ninterval_s = 0\n");
    let before = scrape(&b);
    let mut sub = common::connect(b.addr, "ro-sub").await;
    sub.subscribe("$SYS/#", rumqttc::QoS::AtLeastOnce).await;
    let mut publ = common::connect(b.addr, "ro-pub").await;
    publ.publish(
        "$SYS/broker/version",
        rumqttc::QoS::AtLeastOnce,
        true,
        *b"fake",
    )
    .await;
    publ.wait_for("PUBACK", |p| matches!(p, rumqttc::Packet::PubAck(_)))
        .await;
    publ.barrier().await;
    sub.barrier().await;
    sub.expect_no_publish(Duration::from_millis(300)).await;
    let mut late = common::connect(b.addr, "ro-late").await;
    late.subscribe("$SYS/#", rumqttc::QoS::AtLeastOnce).await;
    late.expect_no_publish(Duration::from_millis(300)).await;
    let after = scrape(&b);
    let delta = |s: &str| value(&after, s) - value(&before, s);
    assert_eq!(
        delta("brokerd_messages_dropped_total{reason=\"publish_denied\"}"),
        1.0
    );
    assert_eq!(value(&after, "brokerd_retained_messages"), 0.0);
    assert_eq!(delta("brokerd_messages_routed_total"), 0.0);
}

/// issue #10 item 2: `$SYS` retained messages are not stored on disk: after a restart on the
/// same data directory with `$SYS` off, no `$SYS` message is retained, while a client's
/// retained message survived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_retained_messages_are_not_persisted() {
    let persist = "[persistence]\nenabled = true\npath = \"data\"\n";
    let b = BrokerProc::start(&format!("{persist}[sys]\ninterval_s = 1\n"));
    let mut c = common::connect(b.addr, "p-sys").await;
    c.publish_routed("keep/me", rumqttc::QoS::AtLeastOnce, true, *b"kept")
        .await;
    c.subscribe("$SYS/broker/uptime", rumqttc::QoS::AtMostOnce)
        .await;
    c.expect_publish_on("$SYS/broker/uptime").await;
    drop(c);
    let dir = b.stop();
    let b = BrokerProc::start_in(dir, &format!("{persist}[sys]\ninterval_s = 0\n"));
    let mut c = common::connect(b.addr, "p-sys2").await;
    c.subscribe("keep/me", rumqttc::QoS::AtMostOnce).await;
    assert_eq!(payload(&c.expect_publish_on("keep/me").await), "kept");
    c.subscribe("$SYS/#", rumqttc::QoS::AtMostOnce).await;
    c.expect_no_publish(Duration::from_millis(300)).await;
}

/// Runs headless Chromium (`/usr/bin/chromium`, installed by .ci/run) with `args` and the
/// flags that keep it off the network; returns its stdout. Killed (by its PID) after 60 s.
fn chromium(profile: &std::path::Path, args: &[String]) -> String {
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromium (apt-get install chromium) must be installed for this test");
    let mut out = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "chromium exited with {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().expect("reader")
}

/// issue #10 item 3: the status page, rendered by headless Chromium, shows the same figures
/// as /metrics read right after it (no traffic in between), lists the client with the
/// deepest queue with its queue depth and in-flight count, and the busiest topic; and a
/// screenshot of it is a real PNG (target/tmp/admin-status.png, for a human to look at).
#[test]
fn status_page_in_headless_chromium_matches_metrics() {
    let b = BrokerProc::start("[sys]\ninterval_s = 0\n");
    // A subscriber that never acknowledges: 20 in flight (the window), the rest queued.
    let mut slow = common::Raw::connected(b.addr, "st-slow");
    slow.subscribe(1, "status/#", 1);
    let mut publ = common::Raw::connected(b.addr, "st-<pub>");
    for i in 0..30u16 {
        publ.send(&common::publish_packet(
            "status/t",
            1,
            false,
            false,
            i + 1,
            b"x",
        ));
        publ.expect_packet("PUBACK");
    }
    publ.send(&common::publish_packet(
        "other/r", 0, true, false, 0, b"kept",
    ));
    publ.ping();
    let profile = tempfile::tempdir().expect("profile dir");
    let url = format!("http://{}/", http(&b));
    let dom = chromium(profile.path(), &["--dump-dom".into(), url.clone()]);
    let m = scrape(&b);
    assert!(dom.contains("<title>brokerd status</title>"), "{dom}");
    for name in [
        "brokerd_connections",
        "brokerd_sessions",
        "brokerd_subscriptions",
        "brokerd_retained_messages",
        "brokerd_queued_messages",
        "brokerd_inflight_messages",
        "brokerd_connections_accepted_total",
    ] {
        let shown: f64 = dom_metric(&dom, 0, name).parse().expect("a number");
        assert_eq!(shown, value(&m, name), "{name}");
    }
    let received: f64 = (0..3)
        .map(|q| {
            value(
                &m,
                &format!("brokerd_publish_received_total{{qos=\"{q}\"}}"),
            )
        })
        .sum();
    let shown: f64 = dom_metric(&dom, 0, "brokerd_publish_received_total")
        .parse()
        .expect("number");
    assert_eq!(shown, received);
    assert_eq!(received, 31.0);
    let up: f64 = dom_metric(&dom, 0, "brokerd_uptime_seconds")
        .parse()
        .expect("number");
    assert!(
        up <= value(&m, "brokerd_uptime_seconds")
            && up + 30.0 > value(&m, "brokerd_uptime_seconds")
    );
    assert_eq!(value(&m, "brokerd_inflight_messages"), 20.0);
    assert_eq!(value(&m, "brokerd_queued_messages"), 10.0);
    // The slow client's row, and the publisher's id escaped.
    let row = dom.find("data-client=\"st-slow\"").expect("st-slow row");
    assert_eq!(dom_metric(&dom, row, "queued"), "10");
    assert_eq!(dom_metric(&dom, row, "inflight"), "20");
    assert!(dom.contains("st-&lt;pub&gt;"), "publisher id not escaped");
    assert!(dom.contains("data-topic=\"status/t\""), "top topic missing");
    // The screenshot.
    let png = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("admin-status.png");
    let _ = std::fs::remove_file(&png);
    chromium(
        profile.path(),
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1280,900".into(),
            url,
        ],
    );
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        bytes.len() > 10_000,
        "screenshot of {} bytes: blank?",
        bytes.len()
    );
    drop(slow);
}

/// issue #10 item 3: a connection refused at accept is counted under its `[limits]` key.
#[test]
fn refusals_at_accept_are_counted_by_limit() {
    let b = BrokerProc::start("[limits]\nmax_connections_per_ip = 1\n[sys]\ninterval_s = 0\n");
    let before = scrape(&b);
    let mut first = common::Raw::connected(b.addr, "only-one");
    first.ping();
    let mut second = common::Raw::connect(b.addr);
    second.expect_closed();
    let after = scrape(&b);
    let delta = |s: &str| value(&after, s) - value(&before, s);
    assert_eq!(
        delta("brokerd_connections_refused_total{reason=\"max_connections_per_ip\"}"),
        1.0
    );
    assert_eq!(delta("brokerd_sockets_accepted_total"), 1.0);
}

/// issue #10 item 3: the admin port serves at most 32 connections at once: with 32 slow
/// requests open, the next connection gets 503 at once; the slow ones get 408 at the read
/// timeout, and then the port answers again (the refusal is counted).
#[test]
fn admin_connections_are_limited() {
    let b = BrokerProc::start("");
    let addr = http(&b);
    let mut slow: Vec<TcpStream> = (0..32)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(WAIT)).expect("timeout");
            s.write_all(b"GET / HTTP/1.1\r\n").expect("write");
            s
        })
        .collect();
    let started = Instant::now();
    let r = get(addr, "/healthz");
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "503 not at once"
    );
    for s in &mut slow {
        assert_eq!(read_response(s).status, 408);
    }
    // Closing them frees their slots (the server reads a request away before closing).
    drop(slow);
    let deadline = Instant::now() + WAIT;
    while get(addr, "/healthz").status != 200 {
        assert!(Instant::now() < deadline, "the admin port stayed busy");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(value(&scrape(&b), "brokerd_http_rejected_total") >= 33.0);
}
