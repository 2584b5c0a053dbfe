//! The bridges' figures (issue #11 item 4): plain values read from each bridge at scrape time,
//! their `brokerd_bridge_*` Prometheus families (label `bridge="NAME"`) and their table on the
//! status page. L0 like `metrics`, pure: values in, text out; the bridge fills them
//! (`BridgeHandle::figures`). Invariants: names are escaped for the format they go into; with
//! no bridge configured nothing is written (no empty families).

use std::fmt::Write as _;

use super::html_escape;

/// One bridge, read at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct BridgeFigures {
    /// `[[bridge]] name`.
    pub(crate) name: String,
    /// The link to the remote is up (its CONNACK accepted).
    pub(crate) connected: bool,
    /// Successful connections after the first one.
    pub(crate) reconnects: u64,
    /// Journaled messages the remote acknowledged (QoS 0 ones: written to it).
    pub(crate) forwarded: u64,
    /// Messages received from the remote and published locally.
    pub(crate) received: u64,
    /// Messages in the journal: waiting to be sent plus sent and not yet acknowledged.
    pub(crate) journal_messages: u64,
    /// Payload bytes waiting to be sent (what `max_journal_bytes` bounds).
    pub(crate) journal_bytes: u64,
    /// Messages refused because the journal was at `max_journal_messages` or
    /// `max_journal_bytes`.
    pub(crate) journal_refused: u64,
    /// Age of the oldest message not yet acknowledged by the remote; 0 when the journal is
    /// empty. Restored messages count from the restart.
    pub(crate) oldest_age_s: f64,
}

/// (name, type, help, value of one bridge) of each family, in exposition order.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&BridgeFigures) -> String,
);

const FAMILIES: [Family; 8] = [
    (
        "brokerd_bridge_connected",
        "gauge",
        "1 while the bridge's link to its remote is up (CONNACK accepted), else 0.",
        |b| u8::from(b.connected).to_string(),
    ),
    (
        "brokerd_bridge_reconnects_total",
        "counter",
        "Successful connections of the bridge to its remote after the first one.",
        |b| b.reconnects.to_string(),
    ),
    (
        "brokerd_bridge_forwarded_total",
        "counter",
        "Messages forwarded to the remote: acknowledged by it (QoS 1 and 2) or written to it (QoS 0).",
        |b| b.forwarded.to_string(),
    ),
    (
        "brokerd_bridge_received_total",
        "counter",
        "Messages received from the remote and published locally.",
        |b| b.received.to_string(),
    ),
    (
        "brokerd_bridge_journal_messages",
        "gauge",
        "Messages in the bridge's journal: waiting to be sent plus sent and not yet acknowledged.",
        |b| b.journal_messages.to_string(),
    ),
    (
        "brokerd_bridge_journal_bytes",
        "gauge",
        "Payload bytes in the journal waiting to be sent (what max_journal_bytes bounds).",
        |b| b.journal_bytes.to_string(),
    ),
    (
        "brokerd_bridge_journal_refused_total",
        "counter",
        "Messages refused because the journal was at max_journal_messages or max_journal_bytes.",
        |b| b.journal_refused.to_string(),
    ),
    (
        "brokerd_bridge_journal_oldest_age_seconds",
        "gauge",
        "Age of the oldest journaled message not yet acknowledged by the remote (0 when empty; restored messages count from the restart).",
        |b| format!("{:.1}", b.oldest_age_s),
    ),
];

/// A Prometheus label value: `\`, `"` and newlines escaped.
fn label_value(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

/// Appends the `brokerd_bridge_*` families, one series per bridge.
pub(crate) fn write_metrics(bridges: &[BridgeFigures], o: &mut String) {
    if bridges.is_empty() {
        return;
    }
    let names: Vec<String> = bridges.iter().map(|b| label_value(&b.name)).collect();
    for (name, kind, help, value) in FAMILIES {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (b, label) in bridges.iter().zip(&names) {
            let _ = writeln!(o, "{name}{{bridge=\"{label}\"}} {}", value(b));
        }
    }
}

/// Appends the status page's "Bridges" section: state, journal depth and oldest age first.
pub(crate) fn write_status(bridges: &[BridgeFigures], o: &mut String) {
    if bridges.is_empty() {
        return;
    }
    o.push_str(
        "<h2>Bridges</h2><table data-table=\"bridges\"><tr><th>bridge</th><th>state</th>\
<th>journaled</th><th>journal bytes</th><th>oldest (s)</th><th>forwarded</th>\
<th>received</th><th>reconnects</th><th>refused</th></tr>",
    );
    for b in bridges {
        let _ = write!(
            o,
            "<tr data-bridge=\"{name}\"><td>{name}</td>\
<td{off} data-metric=\"brokerd_bridge_connected\" data-value=\"{up}\">{state}</td>\
<td class=\"n\" data-metric=\"brokerd_bridge_journal_messages\">{}</td>\
<td class=\"n\" data-metric=\"brokerd_bridge_journal_bytes\">{}</td>\
<td class=\"n\" data-metric=\"brokerd_bridge_journal_oldest_age_seconds\">{:.1}</td>\
<td class=\"n\" data-metric=\"brokerd_bridge_forwarded_total\">{}</td>\
<td class=\"n\" data-metric=\"brokerd_bridge_received_total\">{}</td>\
<td class=\"n\" data-metric=\"brokerd_bridge_reconnects_total\">{}</td>\
<td class=\"n\" data-metric=\"brokerd_bridge_journal_refused_total\">{}</td></tr>",
            b.journal_messages,
            b.journal_bytes,
            b.oldest_age_s,
            b.forwarded,
            b.received,
            b.reconnects,
            b.journal_refused,
            name = html_escape(&b.name),
            off = if b.connected { "" } else { " class=\"off\"" },
            up = u8::from(b.connected),
            state = if b.connected {
                "connected"
            } else {
                "disconnected"
            },
        );
    }
    o.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cloud() -> BridgeFigures {
        BridgeFigures {
            name: "cl\"ou\\d<x>".into(),
            connected: false,
            reconnects: 2,
            forwarded: 7,
            received: 3,
            journal_messages: 5,
            journal_bytes: 50,
            journal_refused: 1,
            oldest_age_s: 12.34,
        }
    }

    /// issue #11 item 4: one series per bridge in each family, the name escaped as a label
    /// value; every family announced by HELP and TYPE; counters end in `_total`.
    #[test]
    fn metrics_have_one_labeled_series_per_family() {
        let mut o = String::new();
        write_metrics(&[cloud()], &mut o);
        let label = "{bridge=\"cl\\\"ou\\\\d<x>\"}";
        for line in [
            format!("brokerd_bridge_connected{label} 0"),
            format!("brokerd_bridge_reconnects_total{label} 2"),
            format!("brokerd_bridge_forwarded_total{label} 7"),
            format!("brokerd_bridge_received_total{label} 3"),
            format!("brokerd_bridge_journal_messages{label} 5"),
            format!("brokerd_bridge_journal_bytes{label} 50"),
            format!("brokerd_bridge_journal_refused_total{label} 1"),
            format!("brokerd_bridge_journal_oldest_age_seconds{label} 12.3"),
        ] {
            assert!(o.lines().any(|l| l == line), "{line} missing in\n{o}");
        }
        assert_eq!(o.matches("# HELP ").count(), FAMILIES.len());
        for (name, kind, _, _) in FAMILIES {
            assert!(o.contains(&format!("# TYPE {name} {kind}\n")), "{name}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{name}");
        }
    }

    /// issue #11 item 4: without bridges, nothing is written to /metrics or the page.
    #[test]
    fn no_bridges_write_nothing() {
        let mut o = String::new();
        write_metrics(&[], &mut o);
        write_status(&[], &mut o);
        assert!(o.is_empty());
    }

    /// issue #11 item 4: the status row shows the state and the journal figures, the name
    /// escaped.
    #[test]
    fn status_row_shows_state_and_journal() {
        let mut o = String::new();
        write_status(&[cloud()], &mut o);
        assert!(o.contains("data-bridge=\"cl&quot;ou\\d&lt;x&gt;\""), "{o}");
        assert!(!o.contains("<x>"), "{o}");
        assert!(o.contains(">disconnected<"), "{o}");
        assert!(
            o.contains("data-metric=\"brokerd_bridge_journal_messages\">5<"),
            "{o}"
        );
        assert!(
            o.contains("data-metric=\"brokerd_bridge_journal_oldest_age_seconds\">12.3<"),
            "{o}"
        );
    }
}
