//! Issue #11: bridges. A real Mosquitto (started here on a free port, killed on drop) bridges
//! into brokerd, or is the remote brokerd's own bridges forward to.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::certs::Ca;
use common::{connect, connect_with, options, BrokerProc, Client, WAIT};
use rumqttc::QoS;

/// A Mosquitto process on 127.0.0.1, killed (by its PID) on drop.
struct Mosquitto {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// A port that was free a moment ago (bound on port 0, then released).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

impl Mosquitto {
    /// Starts Mosquitto listening on `port` (0: a free one) with `extra` appended to its
    /// configuration, and waits until it accepts connections.
    fn start(port: u16, extra: &str) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, port, extra)
    }

    fn start_in(dir: tempfile::TempDir, port: u16, extra: &str) -> Mosquitto {
        let port = if port == 0 { free_port() } else { port };
        let conf: PathBuf = dir.path().join("mosquitto.conf");
        let text = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n\
             max_inflight_messages 0\nuser root\n{extra}\n"
        );
        std::fs::write(&conf, text).expect("write mosquitto.conf");
        let log = std::fs::File::create(dir.path().join("mosquitto.log")).expect("log");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn mosquitto (apt-get install mosquitto)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let m = Mosquitto { child, addr, dir };
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {addr}; log:\n{}",
                m.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    /// Stops with SIGTERM (Mosquitto saves its persistence file) and returns the directory.
    fn stop(mut self) -> tempfile::TempDir {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + WAIT;
        while !matches!(self.child.try_wait(), Ok(Some(_))) {
            assert!(Instant::now() < deadline, "mosquitto did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes probes on `topic` from `from` (QoS 0) until `to` receives one: the path between
/// them works.
async fn until_forwarded(from: &Client, to: &mut Client, topic: &str) {
    until_forwarded_as(from, to, topic, topic).await
}

/// The same, when the probe arrives remapped to topic `arrives_as`.
async fn until_forwarded_as(from: &Client, to: &mut Client, topic: &str, arrives_as: &str) {
    let deadline = Instant::now() + WAIT;
    let mut n = 0u32;
    loop {
        n += 1;
        from.publish(topic, QoS::AtMostOnce, false, format!("probe-{n}"))
            .await;
        if let Some(p) = to.next_publish_within(Duration::from_millis(200)).await {
            if p.topic == arrives_as {
                // Later probes may still arrive: read them out.
                while to
                    .next_publish_within(Duration::from_millis(300))
                    .await
                    .is_some()
                {}
                return;
            }
        }
        assert!(Instant::now() < deadline, "nothing forwarded on {topic}");
    }
}

/// Every PUBLISH arriving within `quiet` of the previous one, as (topic, payload) counts.
async fn collect(c: &mut Client, quiet: Duration) -> HashMap<(String, Vec<u8>), usize> {
    let mut seen = HashMap::new();
    while let Some(p) = c.next_publish_within(quiet).await {
        *seen.entry((p.topic, p.payload.to_vec())).or_insert(0) += 1;
    }
    seen
}

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

/// Mosquitto configuration lines for a persistent store in its directory (so a persistent
/// subscriber's session and queue survive a stop).
fn mosquitto_persistence(dir: &std::path::Path) -> String {
    format!(
        "persistence true\npersistence_location {}/\n",
        dir.display()
    )
}

/// A persistent (CleanSession=0) client with id `id`, subscribed to `filter` at QoS 1.
async fn persistent_subscriber(addr: SocketAddr, id: &str, filter: &str) -> Client {
    let mut o = options(addr, id);
    o.set_clean_session(false);
    o.set_inflight(1000);
    let (mut c, _) = connect_with(o).await;
    c.subscribe(filter, QoS::AtLeastOnce).await;
    c
}

/// Reconnects persistent client `id` (its session holds what was queued meanwhile).
async fn resume(addr: SocketAddr, id: &str) -> Client {
    let mut o = options(addr, id);
    o.set_clean_session(false);
    o.set_inflight(1000);
    connect_with(o).await.0
}

/// Publishes `n` QoS 1 messages `0..n` (payload = the decimal number) on `topic` and waits
/// for every PUBACK.
async fn publish_numbered(c: &mut Client, topic: &str, n: usize) {
    let publisher = c.client.clone();
    let topic2 = topic.to_owned();
    let sender = tokio::spawn(async move {
        for i in 0..n {
            publisher
                .publish(&topic2, QoS::AtLeastOnce, false, i.to_string().into_bytes())
                .await
                .expect("publish");
        }
    });
    let mut acked = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acked < n {
        match tokio::time::timeout_at(deadline, c.events.recv()).await {
            Ok(Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))))) => acked += 1,
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => panic!("publisher failed after {acked} PUBACKs: {e}"),
            Ok(None) | Err(_) => panic!("only {acked} of {n} PUBACKs"),
        }
    }
    sender.await.expect("sender");
}

/// Reads `n` distinct numbered messages; asserts they first arrive in order and that at most
/// `max_dups` duplicates (QoS 1 re-sends) came along.
async fn expect_numbered(c: &mut Client, n: usize, max_dups: usize) {
    let mut next = 0usize;
    let mut dups = 0usize;
    while next < n {
        let p = c
            .next_publish_within(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("only {next} of {n} messages arrived"));
        let i: usize = std::str::from_utf8(&p.payload)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("unexpected payload {:?}", p.payload));
        if i == next {
            next += 1;
        } else if i < next {
            dups += 1;
        } else {
            panic!("message {i} arrived before {next}: lost or out of order");
        }
    }
    assert!(dups <= max_dups, "{dups} duplicates");
    if let Some(p) = c.next_publish_within(Duration::from_millis(500)).await {
        let i: usize = std::str::from_utf8(&p.payload)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(usize::MAX);
        assert!(i < n && dups < max_dups, "unexpected extra message {p:?}");
    }
}

/// brokerd's configuration for one bridge named `name` to `addresses` with `topics`.
fn bridge_toml(name: &str, addresses: &[SocketAddr], topics: &[&str], extra: &str) -> String {
    let addrs: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
    let topics: Vec<String> = topics.iter().map(|t| format!("{t:?}")).collect();
    format!(
        "[[bridge]]\nname = \"{name}\"\naddresses = [{}]\ntopics = [{}]\n\
         keepalive_s = 5\nreconnect_delay_ms = 100\nreconnect_max_delay_ms = 500\n{extra}\n",
        addrs.join(", "),
        topics.join(", ")
    )
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
