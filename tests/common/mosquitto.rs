//! A real Mosquitto for the bridge tests (tests/bridge.rs, tests/dead_letter.rs): started on
//! 127.0.0.1 on a free port, killed by its PID on drop; and the helpers those tests share
//! (persistent clients on either side, numbered QoS 1 streams, a `[[bridge]]` table).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::QoS;

use super::{connect_with, options, Client, WAIT};

/// A Mosquitto process on 127.0.0.1, killed (by its PID) on drop.
pub struct Mosquitto {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// A port that was free a moment ago (bound on port 0, then released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

impl Mosquitto {
    /// Starts Mosquitto listening on `port` (0: a free one) with `extra` appended to its
    /// configuration, and waits until it accepts connections.
    pub fn start(port: u16, extra: &str) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, port, extra)
    }

    pub fn start_in(dir: tempfile::TempDir, port: u16, extra: &str) -> Mosquitto {
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
    pub fn stop(mut self) -> tempfile::TempDir {
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

    pub fn log(&self) -> String {
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
pub async fn until_forwarded(from: &Client, to: &mut Client, topic: &str) {
    until_forwarded_as(from, to, topic, topic).await
}

/// The same, when the probe arrives remapped to topic `arrives_as`.
pub async fn until_forwarded_as(from: &Client, to: &mut Client, topic: &str, arrives_as: &str) {
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
pub async fn collect(c: &mut Client, quiet: Duration) -> HashMap<(String, Vec<u8>), usize> {
    let mut seen = HashMap::new();
    while let Some(p) = c.next_publish_within(quiet).await {
        *seen.entry((p.topic, p.payload.to_vec())).or_insert(0) += 1;
    }
    seen
}

/// Mosquitto configuration lines for a persistent store in its directory (so a persistent
/// subscriber's session and queue survive a stop).
pub fn mosquitto_persistence(dir: &std::path::Path) -> String {
    format!(
        "persistence true\npersistence_location {}/\n",
        dir.display()
    )
}

/// A persistent (CleanSession=0) client with id `id`, subscribed to `filter` at QoS 1.
pub async fn persistent_subscriber(addr: SocketAddr, id: &str, filter: &str) -> Client {
    let mut o = options(addr, id);
    o.set_clean_session(false);
    o.set_inflight(1000);
    let (mut c, _) = connect_with(o).await;
    c.subscribe(filter, QoS::AtLeastOnce).await;
    c
}

/// Reconnects persistent client `id` (its session holds what was queued meanwhile).
pub async fn resume(addr: SocketAddr, id: &str) -> Client {
    let mut o = options(addr, id);
    o.set_clean_session(false);
    o.set_inflight(1000);
    connect_with(o).await.0
}

/// Publishes `n` QoS 1 messages `0..n` (payload = the decimal number) on `topic` and waits
/// for every PUBACK.
pub async fn publish_numbered(c: &mut Client, topic: &str, n: usize) {
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
pub async fn expect_numbered(c: &mut Client, n: usize, max_dups: usize) {
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
pub fn bridge_toml(name: &str, addresses: &[SocketAddr], topics: &[&str], extra: &str) -> String {
    let addrs: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
    let topics: Vec<String> = topics.iter().map(|t| format!("{t:?}")).collect();
    format!(
        "[[bridge]]\nname = \"{name}\"\naddresses = [{}]\ntopics = [{}]\n\
         keepalive_s = 5\nreconnect_delay_ms = 100\nreconnect_max_delay_ms = 500\n{extra}\n",
        addrs.join(", "),
        topics.join(", ")
    )
}
