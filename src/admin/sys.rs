//! The `$SYS` publisher: every `[sys] interval_s` seconds, Mosquitto's `$SYS/broker/...` topics
//! with Mosquitto's payload formats, published retained through `Broker::publish` like any
//! client's message (STYLE.md: a client of the broker, not a special case inside it). L4.
//! Invariants: clients cannot publish into `$SYS` (the session drops it); `$SYS` retained
//! messages live in memory only (the broker does not store `$SYS/` retained messages); the
//! load averages are Mosquitto's exponentially damped per-minute rates.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::metrics::Snapshot;
use super::Sources;
use crate::message::{Message, QoS};
use crate::topic::TopicName;

/// One rate with its 1, 5 and 15 minute loads (Mosquitto's `calc_load`).
#[derive(Debug, Default, Clone, Copy)]
struct Load {
    last: u64,
    loads: [f64; 3],
}

impl Load {
    /// Folds the counter's new value in, `dt_s` seconds after the previous one; returns the
    /// three loads. The first call starts from the rate since start (Mosquitto publishes 0).
    fn update(&mut self, value: u64, dt_s: f64, initial: bool) -> [f64; 3] {
        let per_min = value.saturating_sub(self.last) as f64 * 60.0 / dt_s.max(0.001);
        self.last = value;
        for (load, window_s) in self.loads.iter_mut().zip([60.0, 300.0, 900.0]) {
            if initial {
                *load = per_min;
            } else {
                let exponent = (-dt_s / window_s).exp();
                *load = per_min + exponent * (*load - per_min);
            }
        }
        self.loads
    }
}

/// The figures `$SYS` publishes that need memory between intervals.
#[derive(Debug, Default)]
pub(crate) struct SysTree {
    received: Load,
    sent: Load,
    dropped: Load,
    bytes_in: Load,
    bytes_out: Load,
    sockets: Load,
    connections: Load,
    /// The most sessions at once (`clients/maximum`).
    clients_max: u64,
    last: Option<Instant>,
}

impl SysTree {
    /// The (topic, payload) pairs for one interval.
    pub(crate) fn topics(&mut self, s: &Snapshot, now: Instant) -> Vec<(String, String)> {
        let initial = self.last.is_none();
        let dt = self
            .last
            .map_or(s.uptime_s, |t| now.duration_since(t).as_secs_f64());
        self.last = Some(now);
        let dropped: u64 = s.dropped.iter().map(|(_, n)| n).sum();
        self.clients_max = self.clients_max.max(s.sessions);
        let mut v: Vec<(String, String)> = Vec::with_capacity(64);
        let mut put = |t: &str, p: String| v.push((format!("$SYS/broker/{t}"), p));
        put(
            "version",
            format!("brokerd version {}", env!("CARGO_PKG_VERSION")),
        );
        put("uptime", format!("{} seconds", s.uptime_s as u64));
        put("clients/total", s.sessions.to_string());
        put("clients/connected", s.connected.to_string());
        put("clients/active", s.connected.to_string());
        let disconnected = s.sessions.saturating_sub(s.connected);
        put("clients/disconnected", disconnected.to_string());
        put("clients/inactive", disconnected.to_string());
        put("clients/maximum", self.clients_max.to_string());
        // Mosquitto counts every packet in messages/*; brokerd counts PUBLISH packets there
        // too (the same figures as publish/messages/*).
        let (rin, rout) = (s.publish_in_total(), s.publish_out_total());
        put("messages/received", rin.to_string());
        put("messages/sent", rout.to_string());
        put("publish/messages/received", rin.to_string());
        put("publish/messages/sent", rout.to_string());
        put("publish/messages/dropped", dropped.to_string());
        put("publish/bytes/received", s.payload_in.to_string());
        put("publish/bytes/sent", s.payload_out.to_string());
        let stored = s.retained + s.queued_messages + s.inflight;
        put("messages/stored", stored.to_string());
        put("store/messages/count", stored.to_string());
        put("bytes/received", s.bytes_in.to_string());
        put("bytes/sent", s.bytes_out.to_string());
        put("subscriptions/count", s.subscriptions.to_string());
        put("retained messages/count", s.retained.to_string());
        put("heap/current", s.resident_bytes.to_string());
        let loads = [
            ("messages/received", self.received.update(rin, dt, initial)),
            ("messages/sent", self.sent.update(rout, dt, initial)),
            ("publish/received", self.received.loads),
            ("publish/sent", self.sent.loads),
            ("publish/dropped", self.dropped.update(dropped, dt, initial)),
            (
                "bytes/received",
                self.bytes_in.update(s.bytes_in, dt, initial),
            ),
            (
                "bytes/sent",
                self.bytes_out.update(s.bytes_out, dt, initial),
            ),
            (
                "sockets",
                self.sockets.update(s.sockets_accepted, dt, initial),
            ),
            (
                "connections",
                self.connections.update(s.connects, dt, initial),
            ),
        ];
        for (name, l) in loads {
            for (w, value) in ["1min", "5min", "15min"].iter().zip(l) {
                put(&format!("load/{name}/{w}"), format!("{value:.2}"));
            }
        }
        v
    }
}

/// Publishes the tree every `interval_s` seconds until `token` is cancelled (the first one at
/// once, and at once again when a reload changes the interval); 0 publishes nothing until a
/// reload sets an interval (the values published last stay retained).
pub(crate) async fn run(
    src: Sources,
    mut interval_s: watch::Receiver<u64>,
    token: CancellationToken,
) {
    let mut tree = SysTree::default();
    // Whether a reload can still change the interval (false once the reloader is gone).
    let mut reloadable = true;
    loop {
        let secs = *interval_s.borrow_and_update();
        let mut tick = (secs > 0).then(|| {
            let mut t = tokio::time::interval(Duration::from_secs(secs));
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                changed = interval_s.changed(), if reloadable => match changed {
                    Ok(()) => break,
                    Err(_) => { reloadable = false; continue; }
                },
                _ = async { tick.as_mut()?.tick().await; Some(()) }, if tick.is_some() => {}
            }
            publish(&src, &mut tree);
        }
    }
}

/// Publishes the tree once, retained.
fn publish(src: &Sources, tree: &mut SysTree) {
    let (snap, _) = src.snapshot(0);
    let topics = tree.topics(&snap, Instant::now());
    for (topic, payload) in topics {
        let Ok(topic) = TopicName::parse(&topic) else {
            debug!(%topic, "invalid $SYS topic skipped");
            continue;
        };
        src.broker.publish(Arc::new(Message {
            topic,
            payload: Bytes::from(payload),
            // Mosquitto publishes $SYS at QoS 2; each value is superseded an interval
            // later, so brokerd publishes at QoS 0 (no in-flight state for a stale value).
            qos: QoS::AtMostOnce,
            retain: true,
            origin: 0,
            from: None,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// issue #10 item 2: the load is Mosquitto's damped per-minute rate: a steady 10 msg/s
    /// converges to 600/min, and the 1-minute load reacts faster than the 15-minute one.
    #[test]
    fn loads_follow_mosquittos_formula() {
        let mut l = Load::default();
        let first = l.update(0, 10.0, true);
        assert_eq!(first, [0.0; 3]);
        let mut v = 0;
        let mut last = [0.0; 3];
        for _ in 0..60 {
            v += 100; // 100 messages in 10 s
            last = l.update(v, 10.0, false);
        }
        assert!((last[0] - 600.0).abs() < 1.0, "{last:?}");
        assert!(last[0] > last[1] && last[1] > last[2], "{last:?}");
    }

    /// issue #10 item 2: the tree has Mosquitto's names and formats.
    #[test]
    fn topics_have_mosquittos_names_and_formats() {
        let mut t = SysTree::default();
        let s = Snapshot {
            uptime_s: 42.7,
            sessions: 3,
            connected: 2,
            retained: 5,
            ..Snapshot::default()
        };
        let v = t.topics(&s, Instant::now());
        let get = |name: &str| {
            v.iter()
                .find(|(t, _)| t == name)
                .map(|(_, p)| p.as_str())
                .unwrap_or_else(|| panic!("no {name}"))
        };
        assert_eq!(get("$SYS/broker/uptime"), "42 seconds");
        assert!(get("$SYS/broker/version").starts_with("brokerd version "));
        assert_eq!(get("$SYS/broker/clients/connected"), "2");
        assert_eq!(get("$SYS/broker/clients/disconnected"), "1");
        assert_eq!(get("$SYS/broker/clients/total"), "3");
        assert_eq!(get("$SYS/broker/retained messages/count"), "5");
        assert_eq!(get("$SYS/broker/load/messages/received/15min"), "0.00");
    }
}
