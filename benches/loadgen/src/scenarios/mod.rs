//! Scenarios. Each returns a JSON object (one result line) and a pass flag.

pub mod bridge;
pub mod conns;
#[cfg(test)]
mod fake_broker;
pub mod flow;
pub mod retained;

use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

/// Options shared by every scenario.
#[derive(Clone, Debug)]
pub struct Common {
    pub addr: SocketAddr,
    pub qos: u8,
    pub duration: Duration,
    pub warmup: Duration,
    pub payload: usize,
    pub broker_pid: Option<u32>,
    pub connect_timeout: Duration,
}

/// One result line being assembled; keys keep insertion order.
pub struct Outcome {
    fields: Vec<(String, Value)>,
    pub ok: bool,
}

impl Outcome {
    pub fn new(scenario: &str) -> Self {
        Self {
            fields: vec![("scenario".into(), scenario.into())],
            ok: true,
        }
    }

    /// Set `key` (replacing an earlier value, keeping its position).
    pub fn set(&mut self, key: &str, v: impl Into<Value>) {
        let v = v.into();
        match self.fields.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = v,
            None => self.fields.push((key.into(), v)),
        }
    }

    /// Record a failed check (goes into "errors", flips ok to false).
    pub fn fail(&mut self, msg: impl Into<String>) {
        self.ok = false;
        if !self.fields.iter().any(|(k, _)| k == "errors") {
            self.fields.push(("errors".into(), Value::Array(vec![])));
        }
        if let Some((_, Value::Array(a))) = self.fields.iter_mut().find(|(k, _)| k == "errors") {
            if a.len() < 20 {
                a.push(Value::String(msg.into()));
            }
        }
    }

    pub fn finish(mut self) -> Self {
        let ok = self.ok;
        self.set("ok", ok);
        self
    }

    #[cfg(test)]
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The JSON object as one line, keys in insertion order.
    pub fn to_json_line(&self) -> String {
        let mut out = String::from("{");
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&Value::String(k.clone()).to_string());
            out.push(':');
            out.push_str(&v.to_string());
        }
        out.push('}');
        out
    }
}

/// A client id unique to this process, so parallel runs don't collide.
pub fn client_id(scenario: &str, role: &str, i: usize) -> String {
    format!("bb{}-{scenario}-{role}{i}", std::process::id())
}

/// Keep-alive long enough that no PINGREQ is ever needed during a run.
pub fn keep_alive_for(total: Duration) -> u16 {
    (total.as_secs() + 60).min(u16::MAX as u64) as u16
}

pub fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

/// Report how busy the generator's and the broker's cores were, when both
/// are pinned to disjoint CPU sets (e.g. with taskset); process CPU time
/// alone misses the softirq work that loopback TCP does on each core.
pub fn core_usage(
    o: &mut Outcome,
    report: &crate::monitor::Report,
    broker_pid: Option<u32>,
    from: std::time::Instant,
    to: std::time::Instant,
) {
    use crate::monitor::{allowed_cpus, cpus_str};
    let gen = allowed_cpus(None).unwrap_or_default();
    let brk = broker_pid
        .and_then(|p| allowed_cpus(Some(p)))
        .unwrap_or_default();
    let disjoint = !gen.is_empty() && gen.iter().all(|c| !brk.contains(c));
    if !disjoint || brk.is_empty() {
        o.set(
            "cores_note",
            "generator and broker not pinned to disjoint CPUs: no per-core figures",
        );
        return;
    }
    o.set("gen_cpus", cpus_str(&gen));
    o.set(
        "gen_cores_busy_pct",
        report.cores_busy_pct(&gen, from, to).map(|v| round(v, 1)),
    );
    o.set("broker_cpus", cpus_str(&brk));
    o.set(
        "broker_cores_busy_pct",
        report.cores_busy_pct(&brk, from, to).map(|v| round(v, 1)),
    );
}
