//! Issue #11: bridges. A real Mosquitto (tests/common/mosquitto.rs: a free port, killed on
//! drop) bridges into brokerd, or is the remote brokerd's own bridges forward to.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::admin::{dom_metric, get, scrape, value};
use common::certs::Ca;
use common::mosquitto::*;
use common::{connect, BrokerProc, Client, WAIT};
use rumqttc::QoS;

/// issue #11 item 3: a Mosquitto bridge with its default settings (try_private: protocol level
/// 0x84) into brokerd is accepted as a bridge: what it publishes is not sent back to it (each
/// message arrives once on each side, nothing loops), and RETAIN reaches it as published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_bridge_into_brokerd_is_a_bridge() {
    let b = BrokerProc::start("");
    let m = Mosquitto::start(
        0,
        &format!(
            "connection into-brokerd\naddress {}\ntopic # both 1\n",
            b.addr
        ),
    );
    b.wait_log_lines(&["client connected", "bridge=true"], 1);
    let mut on_b = connect(b.addr, "sub-b").await;
    on_b.subscribe("#", QoS::AtLeastOnce).await;
    let mut on_m = connect(m.addr, "sub-m").await;
    on_m.subscribe("#", QoS::AtLeastOnce).await;
    let pub_b = connect(b.addr, "pub-b").await;
    let pub_m = connect(m.addr, "pub-m").await;
    // Both directions up (Mosquitto subscribes on brokerd after its CONNACK).
    until_forwarded(&pub_b, &mut on_m, "probe/b").await;
    until_forwarded(&pub_m, &mut on_b, "probe/m").await;
    let _ = collect(&mut on_b, Duration::from_millis(300)).await;
    let _ = collect(&mut on_m, Duration::from_millis(300)).await;

    pub_m
        .publish("from/m", QoS::AtLeastOnce, false, "one")
        .await;
    pub_b
        .publish("from/b", QoS::AtLeastOnce, false, "two")
        .await;
    let seen_b = collect(&mut on_b, Duration::from_millis(1500)).await;
    let seen_m = collect(&mut on_m, Duration::from_millis(300)).await;
    let one = ("from/m".to_owned(), b"one".to_vec());
    let two = ("from/b".to_owned(), b"two".to_vec());
    assert_eq!(seen_b.get(&one), Some(&1), "on brokerd: {seen_b:?}");
    assert_eq!(seen_b.get(&two), Some(&1), "on brokerd: {seen_b:?}");
    assert_eq!(seen_m.get(&one), Some(&1), "on mosquitto: {seen_m:?}");
    assert_eq!(seen_m.get(&two), Some(&1), "on mosquitto: {seen_m:?}");
    assert_eq!(seen_b.len(), 2, "nothing else on brokerd: {seen_b:?}");
    assert_eq!(seen_m.len(), 2, "nothing else on mosquitto: {seen_m:?}");

    // RETAIN as published: brokerd sends the bridge RETAIN=1, so Mosquitto keeps it retained.
    pub_b
        .publish("kept/b", QoS::AtLeastOnce, true, "retained")
        .await;
    on_m.expect_publish_on("kept/b").await;
    let mut late = connect(m.addr, "late-m").await;
    late.subscribe("kept/#", QoS::AtLeastOnce).await;
    let p = late.next_publish().await;
    assert_eq!((p.topic.as_str(), p.retain), ("kept/b", true));
    drop(m);
}

const PERSIST: &str = "[persistence]\nenabled = true\npath = \"data\"\n";

/// The outage part of both outage tests: Mosquitto with a persistent collector, brokerd
/// bridged to it; the remote stops, 10,000 QoS 1 messages are published and acknowledged
/// locally; `during` runs (e.g. a crash); the remote comes back 10 s after it stopped.
async fn outage(during: impl FnOnce(BrokerProc) -> BrokerProc) {
    const N: usize = 10_000;
    let port = free_port();
    let mdir = tempfile::tempdir().expect("tempdir");
    let persistence = mosquitto_persistence(mdir.path());
    let m = Mosquitto::start_in(mdir, port, &persistence);
    let remote = m.addr;
    let b = BrokerProc::start(&format!(
        "{PERSIST}{}",
        bridge_toml("up", &[remote], &["fwd/# out 1"], "")
    ));
    let mut collector = persistent_subscriber(remote, "collector", "fwd/#").await;
    let probe = connect(b.addr, "probe").await;
    until_forwarded(&probe, &mut collector, "fwd/probe").await;
    collector.disconnect().await;
    drop(collector);
    let stopped = Instant::now();
    let mdir = m.stop();
    b.wait_log("bridge disconnected");
    let mut publisher = connect(b.addr, "publisher").await;
    publish_numbered(&mut publisher, "fwd/seq", N).await;
    drop(publisher);
    drop(probe);
    let b = during(b);
    // The remote stays away 10 s in all.
    let away = Duration::from_secs(10).saturating_sub(stopped.elapsed());
    tokio::time::sleep(away).await;
    let m = Mosquitto::start_in(mdir, port, &persistence);
    let mut collector = resume(m.addr, "collector").await;
    expect_numbered(&mut collector, N, 20).await;
    drop(b);
}

/// issue #11 item 2: 10,000 QoS 1 messages published while the remote is stopped for 10 s
/// are journaled, then all arrive at the remote, in order, with no more duplicates than the
/// in-flight window can re-send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_loses_nothing_and_keeps_order() {
    outage(|b| b).await;
}

/// issue #11 item 2: the same with brokerd killed -9 during the outage and restarted on its
/// data directory: the journal survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_with_kill9_loses_nothing() {
    outage(|b| {
        let config = std::fs::read_to_string(&b.config_path).expect("config");
        let dir = b.kill9();
        let extra = config.replacen("[listener]\nbind = \"127.0.0.1:0\"\n", "", 1);
        BrokerProc::start_in(dir, &extra)
    })
    .await;
}

/// Collects PUBLISHes until `quiet` passes without one, leaving out probes.
async fn collect_no_probes(c: &mut Client, quiet: Duration) -> HashMap<(String, Vec<u8>), usize> {
    let mut seen = collect(c, quiet).await;
    seen.retain(|(t, _), _| !t.contains("probe"));
    seen
}

fn key(topic: &str, payload: &str) -> (String, Vec<u8>) {
    (topic.to_owned(), payload.as_bytes().to_vec())
}

/// issue #11 items 1 and 4: `out`, `in` and `both` rules with Mosquitto's prefixes remap
/// topics each way; a `both` message is not echoed back; `$SYS/broker/connection/NAME/state`
/// is "1", retained, while the bridge is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_out_and_both_with_prefixes() {
    let m = Mosquitto::start(0, "");
    let b = BrokerProc::start(&bridge_toml(
        "cloud",
        &[m.addr],
        &[
            "t/# out 1 gw/ site1/",
            "cmd/# in 1 dev/ cloud/",
            "chat/# both 1 l/ r/",
        ],
        "",
    ));
    let mut on_b = connect(b.addr, "sub-b").await;
    on_b.subscribe("#", QoS::AtLeastOnce).await;
    let mut on_m = connect(m.addr, "sub-m").await;
    on_m.subscribe("#", QoS::AtLeastOnce).await;
    let pub_b = connect(b.addr, "pub-b").await;
    let pub_m = connect(m.addr, "pub-m").await;
    until_forwarded_as(&pub_m, &mut on_b, "cloud/cmd/probe", "dev/cmd/probe").await;
    until_forwarded_as(&pub_m, &mut on_b, "r/chat/probe", "l/chat/probe").await;
    until_forwarded_as(&pub_b, &mut on_m, "gw/t/probe", "site1/t/probe").await;
    let _ = collect(&mut on_b, Duration::from_millis(300)).await;
    let _ = collect(&mut on_m, Duration::from_millis(300)).await;

    pub_b
        .publish("gw/t/x", QoS::AtLeastOnce, false, "out")
        .await;
    pub_b
        .publish("l/chat/x", QoS::AtLeastOnce, false, "both-out")
        .await;
    pub_b
        .publish("other/x", QoS::AtLeastOnce, false, "local-only")
        .await;
    pub_m
        .publish("cloud/cmd/a", QoS::AtLeastOnce, false, "in")
        .await;
    pub_m
        .publish("r/chat/y", QoS::AtLeastOnce, false, "both-in")
        .await;
    pub_m
        .publish("site1/t/z", QoS::AtLeastOnce, false, "remote-only")
        .await;
    let seen_b = collect_no_probes(&mut on_b, Duration::from_millis(1500)).await;
    let seen_m = collect_no_probes(&mut on_m, Duration::from_millis(300)).await;
    let expect_b: HashMap<_, _> = [
        (key("gw/t/x", "out"), 1),
        (key("l/chat/x", "both-out"), 1),
        (key("other/x", "local-only"), 1),
        (key("dev/cmd/a", "in"), 1),
        (key("l/chat/y", "both-in"), 1),
    ]
    .into_iter()
    .collect();
    let expect_m: HashMap<_, _> = [
        (key("site1/t/x", "out"), 1),
        (key("r/chat/x", "both-out"), 1),
        (key("cloud/cmd/a", "in"), 1),
        (key("r/chat/y", "both-in"), 1),
        (key("site1/t/z", "remote-only"), 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(seen_b, expect_b, "on brokerd");
    assert_eq!(seen_m, expect_m, "on mosquitto");

    let mut status = connect(b.addr, "status").await;
    status
        .subscribe("$SYS/broker/connection/cloud/state", QoS::AtLeastOnce)
        .await;
    let p = status.next_publish().await;
    assert_eq!((&p.payload[..], p.retain), (&b"1"[..], true));
    drop(m);
    let p = status.next_publish().await;
    assert_eq!(&p.payload[..], b"0", "state after the remote went away");
}

/// issue #11 item 1: with two addresses, the bridge connects to the first, and when it goes
/// away fails over to the second; messages published meanwhile reach the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_to_the_second_address() {
    let m1 = Mosquitto::start(0, "");
    let m2 = Mosquitto::start(0, "");
    let b = BrokerProc::start(&bridge_toml("fo", &[m1.addr, m2.addr], &["fo/# out 1"], ""));
    let mut on_m1 = connect(m1.addr, "sub-1").await;
    on_m1.subscribe("fo/#", QoS::AtLeastOnce).await;
    let mut on_m2 = connect(m2.addr, "sub-2").await;
    on_m2.subscribe("fo/#", QoS::AtLeastOnce).await;
    let pub_b = connect(b.addr, "pub").await;
    until_forwarded(&pub_b, &mut on_m1, "fo/probe").await;
    drop(on_m1);
    drop(m1);
    b.wait_log("bridge disconnected");
    for i in 0..100 {
        pub_b
            .publish("fo/n", QoS::AtLeastOnce, false, i.to_string())
            .await;
    }
    expect_numbered(&mut on_m2, 100, 20).await;
    let log = b.log();
    let m2_line = format!("bridge connected bridge=fo addr={}", m2.addr);
    assert!(log.contains(&m2_line), "{log}");
}

/// issue #11 item 3: two brokerd bridged both ways (one `both` bridge, whose connection the
/// remote brokerd recognizes by level 0x84): every message arrives once on each side and
/// nothing loops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_brokerd_bridged_both_ways_do_not_loop() {
    let b2 = BrokerProc::start("");
    let b1 = BrokerProc::start(&bridge_toml("peer", &[b2.addr], &["# both 1"], ""));
    b2.wait_log_lines(&["client connected", "bridge=true"], 1);
    let mut on_1 = connect(b1.addr, "sub-1").await;
    on_1.subscribe("#", QoS::AtLeastOnce).await;
    let mut on_2 = connect(b2.addr, "sub-2").await;
    on_2.subscribe("#", QoS::AtLeastOnce).await;
    let pub_1 = connect(b1.addr, "pub-1").await;
    let pub_2 = connect(b2.addr, "pub-2").await;
    until_forwarded(&pub_1, &mut on_2, "probe/1").await;
    until_forwarded(&pub_2, &mut on_1, "probe/2").await;
    let _ = collect(&mut on_1, Duration::from_millis(300)).await;
    let _ = collect(&mut on_2, Duration::from_millis(300)).await;
    pub_1
        .publish("a/1", QoS::AtLeastOnce, false, "from-1")
        .await;
    pub_2.publish("a/2", QoS::AtLeastOnce, true, "from-2").await;
    let seen_1 = collect_no_probes(&mut on_1, Duration::from_millis(1500)).await;
    let seen_2 = collect_no_probes(&mut on_2, Duration::from_millis(300)).await;
    let expect: HashMap<_, _> = [(key("a/1", "from-1"), 1), (key("a/2", "from-2"), 1)]
        .into_iter()
        .collect();
    assert_eq!(seen_1, expect, "on brokerd 1");
    assert_eq!(seen_2, expect, "on brokerd 2");
    // RETAIN as published: brokerd 1 keeps a/2 retained too.
    let mut late = connect(b1.addr, "late").await;
    late.subscribe("a/2", QoS::AtLeastOnce).await;
    let p = late.next_publish().await;
    assert_eq!((&p.payload[..], p.retain), (&b"from-2"[..], true));
}

/// issue #11 item 2: at `max_journal_messages` new messages for the bridge are refused
/// (counted, warned); the publisher is still acknowledged, and what was journaled is
/// delivered once the remote is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_bound_refuses_new_messages() {
    let port = free_port();
    let mdir = tempfile::tempdir().expect("tempdir");
    let persistence = mosquitto_persistence(mdir.path());
    let m = Mosquitto::start_in(mdir, port, &persistence);
    let b = BrokerProc::start(&bridge_toml(
        "small",
        &[m.addr],
        &["j/# out 1"],
        "max_journal_messages = 100\n",
    ));
    let mut collector = persistent_subscriber(m.addr, "collector", "j/#").await;
    let probe = connect(b.addr, "probe").await;
    until_forwarded(&probe, &mut collector, "j/probe").await;
    collector.disconnect().await;
    drop(collector);
    let mdir = m.stop();
    b.wait_log("bridge disconnected");
    let mut publisher = connect(b.addr, "publisher").await;
    publish_numbered(&mut publisher, "j/seq", 150).await;
    b.wait_log_lines(
        &[
            "subscriber queue full",
            "client_id=$bridge/small",
            "limit=bridge.max_journal_messages",
            "limit_value=100",
        ],
        1,
    );
    let m = Mosquitto::start_in(mdir, port, &persistence);
    let mut collector = resume(m.addr, "collector").await;
    expect_numbered(&mut collector, 100, 20).await;
    drop(b);
}

/// issue #11 item 1: TLS to the remote with a client certificate: a Mosquitto that requires
/// certificates signed by its CA receives what the bridge forwards; a bridge that does not
/// trust the remote's CA does not connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_remote_with_a_client_certificate() {
    let ca = Ca::new("bridge test CA");
    let pki = tempfile::tempdir().expect("tempdir");
    let ca_file = ca.write(pki.path(), "ca");
    let (server_crt, server_key) = ca.server("remote", 2).write(pki.path(), "server");
    let (client_crt, client_key) = ca.client(Some("gw")).write(pki.path(), "client");
    let other_ca = Ca::new("someone else").write(pki.path(), "other");
    // Mosquitto: a plain listener for the test's clients, a TLS one for the bridge.
    let tls_port = free_port();
    let m = Mosquitto::start(
        0,
        &format!(
            "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
             require_certificate true\n",
            ca_file.display(),
            server_crt.display(),
            server_key.display()
        ),
    );
    let tls_addr: SocketAddr = format!("127.0.0.1:{tls_port}").parse().expect("addr");
    let tls_keys = format!(
        "ca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
        ca_file, client_crt, client_key
    );
    let b = BrokerProc::start(&bridge_toml("sec", &[tls_addr], &["s/# out 1"], &tls_keys));
    let mut on_m = connect(m.addr, "sub").await;
    on_m.subscribe("s/#", QoS::AtLeastOnce).await;
    let pub_b = connect(b.addr, "pub").await;
    until_forwarded(&pub_b, &mut on_m, "s/probe").await;
    for i in 0..50 {
        pub_b
            .publish("s/n", QoS::AtLeastOnce, false, i.to_string())
            .await;
    }
    expect_numbered(&mut on_m, 50, 0).await;

    let wrong = format!(
        "ca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
        other_ca, client_crt, client_key
    );
    let b2 = BrokerProc::start(&bridge_toml("bad", &[tls_addr], &["s/# out 1"], &wrong));
    b2.wait_log("TLS handshake failed");
    assert!(!b2.log().contains("bridge connected"), "{}", b2.log());
}

/// issue #11 item 2: a client may not take the client id of a bridge's journal session
/// (`$bridge/NAME`): CONNACK 0x02, and the bridge keeps forwarding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_client_ids_are_reserved() {
    let m = Mosquitto::start(0, "");
    let b = BrokerProc::start(&bridge_toml("j", &[m.addr], &["r/# out 1"], ""));
    let mut raw = common::Raw::connect(b.addr);
    raw.send(&common::connect_packet("$bridge/j", true, 30));
    assert_eq!(raw.expect_packet("CONNACK"), vec![0x20, 0x02, 0x00, 0x02]);
    let mut on_m = connect(m.addr, "sub").await;
    on_m.subscribe("r/#", QoS::AtLeastOnce).await;
    let pub_b = connect(b.addr, "pub").await;
    until_forwarded(&pub_b, &mut on_m, "r/probe").await;
}

/// `name{bridge="NAME"}`: one bridge's series.
fn bridge_series(name: &str, bridge: &str) -> String {
    format!("brokerd_bridge_{name}{{bridge=\"{bridge}\"}}")
}

/// Scrapes /metrics until `ok` holds for it (bounded by `WAIT`) and returns that scrape.
fn scrape_until(
    b: &BrokerProc,
    what: &str,
    ok: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let deadline = Instant::now() + WAIT;
    loop {
        let m = scrape(b);
        if ok(&m) {
            return m;
        }
        let bridge: Vec<_> = m.iter().filter(|(k, _)| k.contains("bridge")).collect();
        assert!(Instant::now() < deadline, "{what} never held: {bridge:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// issue #11 item 4: /metrics and the status page show a bridge's state. With the remote
/// stopped, N QoS 1 messages published locally are all in the journal (messages = N, bytes =
/// their payloads), the oldest one's age grows, connected is 0; once the remote is back,
/// forwarded reaches N, the journal is empty (age 0), connected is 1 and the reconnect is
/// counted; messages from the remote count as received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_figures_in_metrics_and_on_the_status_page() {
    const N: usize = 50;
    let m = Mosquitto::start(0, "");
    let port = m.addr.port();
    let b = BrokerProc::start(&format!(
        "[sys]\ninterval_s = 0\n{}",
        bridge_toml("metered", &[m.addr], &["met/# out 1", "back/# in 1"], "")
    ));
    let s = |name: &str| bridge_series(name, "metered");
    let v = |m: &HashMap<String, f64>, name: &str| value(m, &s(name));
    let up = scrape_until(&b, "connected", |m| v(m, "connected") == 1.0);
    for name in [
        "reconnects_total",
        "forwarded_total",
        "received_total",
        "journal_messages",
        "journal_bytes",
        "journal_refused_total",
        "journal_oldest_age_seconds",
    ] {
        assert_eq!(v(&up, name), 0.0, "{name} before any traffic");
    }

    let mdir = m.stop();
    b.wait_log("bridge disconnected");
    let published = Instant::now();
    let mut publisher = connect(b.addr, "publisher").await;
    publish_numbered(&mut publisher, "met/seq", N).await;
    let bytes: usize = (0..N).map(|i| i.to_string().len()).sum();
    let down = scrape(&b);
    assert_eq!(v(&down, "connected"), 0.0);
    assert_eq!(v(&down, "journal_messages"), N as f64);
    assert_eq!(v(&down, "journal_bytes"), bytes as f64);
    assert_eq!(v(&down, "forwarded_total"), 0.0);
    assert_eq!(v(&down, "journal_refused_total"), 0.0);
    let age = v(&down, "journal_oldest_age_seconds");
    // Stamped after `published`, at a tenth of a second's resolution.
    assert!(
        age <= published.elapsed().as_secs_f64() + 0.2,
        "oldest age {age} s, published {:?} ago",
        published.elapsed()
    );
    let older = scrape_until(&b, "the oldest age growing", |m| {
        v(m, "journal_oldest_age_seconds") >= age + 0.3
    });
    assert_eq!(v(&older, "journal_messages"), N as f64);
    // The status page shows the same, in the bridge's row.
    let page = get(b.http_addr.expect("admin port"), "/").body;
    let row = page
        .find("data-bridge=\"metered\"")
        .expect("the bridge's row");
    assert_eq!(
        dom_metric(&page, row, "brokerd_bridge_connected"),
        "disconnected"
    );
    assert_eq!(
        dom_metric(&page, row, "brokerd_bridge_journal_messages"),
        N.to_string()
    );
    let shown: f64 = dom_metric(&page, row, "brokerd_bridge_journal_oldest_age_seconds")
        .parse()
        .expect("a number");
    assert!(shown >= age + 0.3, "page shows oldest age {shown}");

    let m = Mosquitto::start_in(mdir, port, "");
    let drained = scrape_until(&b, "the journal drained", |m| {
        v(m, "forwarded_total") == N as f64
            && v(m, "journal_messages") == 0.0
            && v(m, "connected") == 1.0
    });
    assert_eq!(v(&drained, "reconnects_total"), 1.0);
    assert_eq!(v(&drained, "journal_bytes"), 0.0);
    assert_eq!(v(&drained, "journal_oldest_age_seconds"), 0.0);
    let page = get(b.http_addr.expect("admin port"), "/").body;
    let row = page
        .find("data-bridge=\"metered\"")
        .expect("the bridge's row");
    assert_eq!(
        dom_metric(&page, row, "brokerd_bridge_connected"),
        "connected"
    );

    // From the remote: counted once each.
    let mut local = connect(b.addr, "local").await;
    local.subscribe("back/#", QoS::AtLeastOnce).await;
    let remote = connect(m.addr, "remote").await;
    until_forwarded(&remote, &mut local, "back/probe").await;
    let before = v(&scrape(&b), "received_total");
    for i in 0..3 {
        remote
            .publish("back/n", QoS::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    for _ in 0..3 {
        local.expect_publish_on("back/n").await;
    }
    scrape_until(&b, "three received", |m| {
        v(m, "received_total") == before + 3.0
    });
    assert_eq!(v(&scrape(&b), "forwarded_total"), N as f64);
    drop(m);
}

/// issue #11 item 4: after a kill -9 and a restart during an outage, /metrics shows the
/// restored journal (all N messages) with the oldest age counted from the restart (stamps are
/// not stored), growing again; once the remote is back it drains to 0, and the first
/// connection of the new process is not a reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_figures_after_a_restart_count_from_the_restart() {
    const N: usize = 20;
    let m = Mosquitto::start(0, "");
    let port = m.addr.port();
    let b = BrokerProc::start(&format!(
        "{PERSIST}[sys]\ninterval_s = 0\n{}",
        bridge_toml("kept", &[m.addr], &["k/# out 1"], "")
    ));
    let s = |name: &str| bridge_series(name, "kept");
    let v = |m: &HashMap<String, f64>, name: &str| value(m, &s(name));
    scrape_until(&b, "connected", |m| v(m, "connected") == 1.0);
    let mdir = m.stop();
    b.wait_log("bridge disconnected");
    let mut publisher = connect(b.addr, "publisher").await;
    publish_numbered(&mut publisher, "k/seq", N).await;
    drop(publisher);
    // Old enough that an age carried over would show.
    scrape_until(&b, "an oldest age of 1 s", |m| {
        v(m, "journal_oldest_age_seconds") >= 1.0
    });

    let config = std::fs::read_to_string(&b.config_path).expect("config");
    let dir = b.kill9();
    let restarted = Instant::now();
    let extra = config.replacen("[listener]\nbind = \"127.0.0.1:0\"\n", "", 1);
    let b = BrokerProc::start_in(dir, &extra);
    let restored = scrape(&b);
    let age = v(&restored, "journal_oldest_age_seconds");
    assert_eq!(v(&restored, "journal_messages"), N as f64);
    assert_eq!(v(&restored, "connected"), 0.0);
    assert!(
        age <= restarted.elapsed().as_secs_f64() + 0.2,
        "oldest age {age} s, restarted {:?} ago",
        restarted.elapsed()
    );
    scrape_until(&b, "the oldest age growing", |m| {
        v(m, "journal_oldest_age_seconds") >= age + 0.3
    });

    let m = Mosquitto::start_in(mdir, port, "");
    let drained = scrape_until(&b, "the journal drained", |m| {
        v(m, "forwarded_total") == N as f64 && v(m, "journal_messages") == 0.0
    });
    assert_eq!(v(&drained, "journal_oldest_age_seconds"), 0.0);
    assert_eq!(v(&drained, "connected"), 1.0);
    assert_eq!(v(&drained, "reconnects_total"), 0.0);
    drop(m);
}
