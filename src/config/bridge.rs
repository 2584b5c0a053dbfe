//! `[[bridge]]` tables: bridges to upstream brokers, and their `topics` lines in Mosquitto's own
//! syntax (`PATTERN [out|in|both] [QOS] [LOCAL_PREFIX [REMOTE_PREFIX]]`). L0: serde and `topic`.
//! Invariant: a validated bridge has a unique name, at least one address and topic rules that
//! each give valid local and remote filters; every error names the bridge and the key.

use std::path::PathBuf;

use serde::Deserialize;

use crate::topic::{TopicFilter, TopicName};

/// One `[[bridge]]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    /// Names the bridge in logs, errors, `$SYS/broker/connection/NAME/state` and the local
    /// session that holds its journal (`$bridge/NAME`).
    pub name: String,
    /// `host:port` of the remote broker; tried in order, then round robin.
    pub addresses: Vec<String>,
    /// The client id on the remote; default `brokerd-bridge-NAME`.
    pub client_id: Option<String>,
    /// CleanSession on the remote (the local journal is kept either way).
    pub clean_session: bool,
    pub keepalive_s: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    /// TLS to the remote: on when `ca_file` (the CAs the remote's certificate is verified
    /// against) is set; `cert_file` and `key_file` add a client certificate (mutual TLS).
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Mosquitto `topic` lines.
    pub topics: Vec<String>,
    /// Messages sent to the remote and not yet acknowledged.
    pub max_inflight: u16,
    /// The journal's bounds (payload bytes, messages); at a bound new messages for this bridge
    /// are refused (counted, warned), what is journaled is kept.
    pub max_journal_bytes: usize,
    pub max_journal_messages: usize,
    /// Delay before reconnecting once every address failed; doubles up to the max.
    pub reconnect_delay_ms: u64,
    pub reconnect_max_delay_ms: u64,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            name: String::new(),
            addresses: Vec::new(),
            client_id: None,
            clean_session: false,
            keepalive_s: 60,
            username: None,
            password: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            topics: Vec::new(),
            max_inflight: 20,
            max_journal_bytes: 256 * 1024 * 1024,
            max_journal_messages: 1_000_000,
            reconnect_delay_ms: 1_000,
            reconnect_max_delay_ms: 30_000,
        }
    }
}

/// Which way a topic rule forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Out,
    In,
    Both,
}

impl Direction {
    pub(crate) fn out(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }
    pub(crate) fn into_local(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }
}

/// One parsed `topics` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicRule {
    pub(crate) direction: Direction,
    pub(crate) qos: u8,
    pub(crate) local_prefix: String,
    pub(crate) remote_prefix: String,
    /// LOCAL_PREFIX + PATTERN: subscribed locally for `out`, matched for `in`.
    pub(crate) local_filter: TopicFilter,
    /// REMOTE_PREFIX + PATTERN: subscribed on the remote for `in`.
    pub(crate) remote_filter: TopicFilter,
}

/// `""` is Mosquitto's spelling of an empty field.
fn field(s: &str) -> &str {
    if s == "\"\"" {
        ""
    } else {
        s
    }
}

/// A prefix must be usable in a topic name (no wildcards), as Mosquitto's
/// `mosquitto_pub_topic_check`.
fn check_prefix(p: &str, which: &str) -> Result<(), String> {
    if p.contains(['+', '#']) || p.contains('\0') {
        return Err(format!(
            "invalid {which} prefix {p:?}: no wildcards allowed"
        ));
    }
    Ok(())
}

impl TopicRule {
    /// Parses a line as Mosquitto's `topic` option does: fields separated by spaces, `""` for
    /// an empty one; direction `out` and QoS 0 by default; an empty pattern needs both
    /// prefixes; prefix + pattern must be a valid filter on each side.
    pub(crate) fn parse(line: &str) -> Result<TopicRule, String> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() || fields.len() > 5 {
            return Err(format!(
                "{line:?}: expected PATTERN [out|in|both] [QOS] [LOCAL_PREFIX [REMOTE_PREFIX]]"
            ));
        }
        let pattern = field(fields[0]);
        let direction = match fields.get(1).map(|d| d.to_ascii_lowercase()) {
            None => Direction::Out,
            Some(d) if d == "out" => Direction::Out,
            Some(d) if d == "in" => Direction::In,
            Some(d) if d == "both" => Direction::Both,
            Some(d) => {
                return Err(format!(
                    "{line:?}: invalid direction {d:?} (out, in or both)"
                ))
            }
        };
        let qos = match fields.get(2) {
            None => 0,
            Some(q) => match q.parse::<u8>() {
                Ok(q @ 0..=2) => q,
                _ => return Err(format!("{line:?}: invalid QoS {q:?} (0, 1 or 2)")),
            },
        };
        let local_prefix = fields.get(3).map_or("", |f| field(f)).to_owned();
        let remote_prefix = fields.get(4).map_or("", |f| field(f)).to_owned();
        check_prefix(&local_prefix, "local").map_err(|e| format!("{line:?}: {e}"))?;
        check_prefix(&remote_prefix, "remote").map_err(|e| format!("{line:?}: {e}"))?;
        if pattern.is_empty() && (local_prefix.is_empty() || remote_prefix.is_empty()) {
            return Err(format!(
                "{line:?}: an empty pattern needs both a local and a remote prefix"
            ));
        }
        let filter = |prefix: &str, side: &str| {
            let f = format!("{prefix}{pattern}");
            TopicFilter::parse(&f)
                .map_err(|e| format!("{line:?}: {side} prefix and pattern {f:?}: {e}"))
        };
        Ok(TopicRule {
            direction,
            qos,
            local_filter: filter(&local_prefix, "local")?,
            remote_filter: filter(&remote_prefix, "remote")?,
            local_prefix,
            remote_prefix,
        })
    }

    /// The remote topic of a local message this `out` rule matched: LOCAL_PREFIX replaced by
    /// REMOTE_PREFIX (Mosquitto's remapping). None if it does not carry the local prefix.
    pub(crate) fn to_remote(&self, local: &str) -> Option<String> {
        let rest = local.strip_prefix(self.local_prefix.as_str())?;
        Some(format!("{}{rest}", self.remote_prefix))
    }

    /// The local topic of a remote message: REMOTE_PREFIX replaced by LOCAL_PREFIX.
    pub(crate) fn to_local(&self, remote: &TopicName) -> Option<TopicName> {
        if !self.remote_filter.matches(remote) {
            return None;
        }
        let rest = remote.as_str().strip_prefix(self.remote_prefix.as_str())?;
        TopicName::parse(&format!("{}{rest}", self.local_prefix)).ok()
    }
}

impl BridgeConfig {
    /// The remote client id.
    pub(crate) fn remote_client_id(&self) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("brokerd-bridge-{}", self.name))
    }

    /// The parsed topic rules (valid once `validate` passed).
    pub(crate) fn rules(&self) -> Vec<TopicRule> {
        self.topics
            .iter()
            .filter_map(|t| TopicRule::parse(t).ok())
            .collect()
    }

    /// Reports every problem of bridge number `i` through `bad(key, why)`; keys read
    /// `bridge[NAME].KEY` (or `bridge[#i]` while the name is missing).
    pub(crate) fn validate(&self, i: usize, bad: &mut impl FnMut(&str, &str)) {
        let id = if self.name.is_empty() {
            format!("bridge[#{i}]")
        } else {
            format!("bridge[{}]", self.name)
        };
        let mut bad = |key: &str, why: &str| bad(&format!("{id}.{key}"), why);
        if self.name.is_empty()
            || self.name.contains(['/', '+', '#'])
            || self.name.contains(char::is_control)
        {
            bad(
                "name",
                "must be non-empty, without '/', '+', '#' or control characters",
            );
        }
        if self.addresses.is_empty() {
            bad("addresses", "needs at least one \"host:port\"");
        }
        for a in &self.addresses {
            let ok = a
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
            if !ok {
                bad("addresses", &format!("{a:?} is not \"host:port\""));
            }
        }
        if self
            .client_id
            .as_deref()
            .is_some_and(|c| c.is_empty() || c.len() > 65535)
        {
            bad("client_id", "must be 1..=65535 bytes");
        }
        if self.password.is_some() && self.username.is_none() {
            bad("password", "needs username");
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            bad(
                "cert_file",
                "cert_file and key_file go together (mutual TLS)",
            );
        }
        if self.cert_file.is_some() && self.ca_file.is_none() {
            bad(
                "ca_file",
                "is required for TLS (cert_file and key_file need it)",
            );
        }
        if self.topics.is_empty() {
            bad("topics", "needs at least one line");
        }
        for (n, t) in self.topics.iter().enumerate() {
            if let Err(e) = TopicRule::parse(t) {
                bad(&format!("topics[{n}]"), &e);
            }
        }
        if self.max_inflight == 0 {
            bad("max_inflight", "must be 1..=65535");
        }
        if self.max_journal_messages == 0 {
            bad("max_journal_messages", "must be at least 1");
        }
        if self.max_journal_bytes == 0 {
            bad("max_journal_bytes", "must be at least 1");
        }
        if self.reconnect_delay_ms == 0 || self.reconnect_max_delay_ms < self.reconnect_delay_ms {
            bad(
                "reconnect_delay_ms",
                "must be at least 1 and at most reconnect_max_delay_ms",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// issue #11 item 1: Mosquitto's topic line syntax: defaults, `""`, prefixes and mapping.
    #[test]
    fn topic_lines_parse_as_mosquitto_reads_them() {
        let r = TopicRule::parse("sensors/#").expect("valid");
        assert_eq!((r.direction, r.qos), (Direction::Out, 0));
        assert_eq!(r.local_filter.as_str(), "sensors/#");
        let r = TopicRule::parse("# both 1 gw/ cloud/site1/").expect("valid");
        assert_eq!((r.direction, r.qos), (Direction::Both, 1));
        assert_eq!(r.local_filter.as_str(), "gw/#");
        assert_eq!(r.remote_filter.as_str(), "cloud/site1/#");
        assert_eq!(r.to_remote("gw/a/b").as_deref(), Some("cloud/site1/a/b"));
        let remote = TopicName::parse("cloud/site1/x").expect("topic");
        assert_eq!(
            r.to_local(&remote)
                .map(|t| t.as_str().to_owned())
                .as_deref(),
            Some("gw/x")
        );
        let r = TopicRule::parse("d/# in 2 \"\" a/node/").expect("valid");
        assert_eq!((r.direction, r.qos), (Direction::In, 2));
        assert_eq!(r.local_filter.as_str(), "d/#");
        assert_eq!(r.remote_filter.as_str(), "a/node/d/#");
        let r = TopicRule::parse("\"\" out 1 local/t remote/t").expect("empty pattern");
        assert_eq!(r.to_remote("local/t").as_deref(), Some("remote/t"));
        assert_eq!(
            TopicRule::parse("x IN 1").expect("case").direction,
            Direction::In
        );
    }

    /// issue #11 item 1: invalid lines are refused with the reason.
    #[test]
    fn invalid_topic_lines_are_refused() {
        for (line, why) in [
            ("", "expected PATTERN"),
            ("a sideways", "invalid direction"),
            ("a out 3", "invalid QoS"),
            ("a out x", "invalid QoS"),
            ("a out 1 lo+/ r/", "local prefix"),
            ("a out 1 l/ r#/", "remote prefix"),
            ("\"\" out 1 l/", "empty pattern"),
            ("a/#/b", "pattern"),
            ("a out 1 l/ r/ extra", "expected PATTERN"),
        ] {
            let e = TopicRule::parse(line).expect_err(line);
            assert!(e.contains(why), "{line:?}: {e}");
        }
    }

    /// issue #11 item 1: errors name the bridge and the key.
    #[test]
    fn errors_name_the_bridge_and_key() {
        let b = BridgeConfig {
            name: "cloud".into(),
            addresses: vec!["nohost".into()],
            topics: vec!["a out 7".into()],
            max_inflight: 0,
            ..BridgeConfig::default()
        };
        let mut problems = Vec::new();
        b.validate(0, &mut |k: &str, w: &str| {
            problems.push(format!("{k}: {w}"))
        });
        let all = problems.join("; ");
        assert!(all.contains("bridge[cloud].addresses: \"nohost\""), "{all}");
        assert!(all.contains("bridge[cloud].topics[0]"), "{all}");
        assert!(all.contains("bridge[cloud].max_inflight"), "{all}");
        let mut problems = Vec::new();
        BridgeConfig::default().validate(2, &mut |k: &str, _: &str| problems.push(k.to_owned()));
        assert!(
            problems.contains(&"bridge[#2].name".to_owned()),
            "{problems:?}"
        );
    }

    /// issue #11 item 1: a `[[bridge]]` table parses from TOML with its keys, and every other
    /// key keeps its default.
    #[test]
    fn bridge_table_parses() {
        let text = r#"
[[bridge]]
name = "cloud"
addresses = ["cloud.example:1883", "10.0.0.2:1883"]
client_id = "gw-17"
username = "gw-17"
password = "secret"
topics = ["sensors/# out 1", "cmd/# in 1 \"\" site17/"]
max_journal_bytes = 1000
"#;
        let c = crate::Config::parse(text, std::path::Path::new("t.toml")).expect("valid");
        let b = &c.bridges[0];
        assert_eq!(b.addresses.len(), 2);
        assert_eq!(b.remote_client_id(), "gw-17");
        assert_eq!(
            (b.max_journal_bytes, b.max_inflight, b.clean_session),
            (1000, 20, false)
        );
        let rules = b.rules();
        assert_eq!(rules[1].remote_filter.as_str(), "site17/cmd/#");
        let dup = format!("{text}{text}");
        let e = crate::Config::parse(&dup, std::path::Path::new("t.toml")).expect_err("dup");
        assert!(
            e.to_string()
                .contains("bridge[cloud].name: is used by another bridge"),
            "{e}"
        );
    }
}
