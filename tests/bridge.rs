//! Issue #11: bridges. A real Mosquitto (started here on a free port, killed on drop) bridges
//! into brokerd, or is the remote brokerd's own bridges forward to.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
             max_inflight_messages 0\n{extra}\n"
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

/// Publishes `probe` on `from` (QoS 0) until `to` receives it: the path between them works.
async fn until_forwarded(from: &Client, to: &mut Client, topic: &str) {
    let deadline = Instant::now() + WAIT;
    let mut n = 0u32;
    loop {
        n += 1;
        from.publish(topic, QoS::AtMostOnce, false, format!("probe-{n}"))
            .await;
        if let Some(p) = to.next_publish_within(Duration::from_millis(200)).await {
            if p.topic == topic {
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

#[allow(dead_code)]
fn unused(_: fn(SocketAddr, &str) -> rumqttc::MqttOptions) {
    let _ = connect_with;
    let _ = options;
}
