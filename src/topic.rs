//! Topic names and topic filters as validated newtypes, and the matching rules.
//! L0: depends only on `error`. Invariant: a `TopicName` or `TopicFilter` can only be
//! built through `parse`, so everything past the codec can trust its shape.

use std::fmt;
use std::sync::Arc;

/// A client identifier, shared cheaply between the registry, the trie and the session.
pub(crate) type ClientId = Arc<str>;

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TopicError {
    #[error("[MQTT-4.7.3-1] empty topic")]
    Empty,
    #[error("[MQTT-3.3.2-2] wildcard in topic name")]
    WildcardInName,
    #[error("[MQTT-4.7.1-2] '#' not alone in the last level")]
    BadMultiLevel,
    #[error("[MQTT-4.7.1-3] '+' not alone in its level")]
    BadSingleLevel,
    #[error("[MQTT-4.7.3-3] topic longer than 65535 bytes")]
    TooLong,
    #[error("[MQTT-1.5.3-2] U+0000 or a control character in a topic")]
    ControlChar,
    #[error("[MQTT-4.8.2-1] a shared subscription is $share/{{group}}/{{filter}}: one non-empty group level without '+' or '#', then a non-empty filter")]
    BadShare,
}

/// The prefix of a shared subscription's filter.
pub(crate) const SHARE_PREFIX: &str = "$share/";

/// A valid topic name: non-empty, no wildcards, at most 65,535 bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct TopicName(Arc<str>);

/// A valid topic filter: wildcards only as whole levels, `#` only last.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TopicFilter(Arc<str>);

/// The longest topic a UTF-8 encoded string field can carry.
pub(crate) const MAX_TOPIC_LEN: usize = 65_535;

/// Characters our policy refuses in client ids, usernames, topics and filters: U+0000 (always
/// illegal, [MQTT-1.5.3-2]), the C0/C1 control characters and U+FFFF (allowed to be refused by
/// the standard; Mosquitto refuses them, and so do we).
pub(crate) fn has_forbidden_char(s: &str) -> bool {
    s.chars()
        .any(|c| matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{ffff}'))
}

impl TopicName {
    /// Validates a topic name from a PUBLISH or a will.
    pub(crate) fn parse(s: &str) -> Result<TopicName, TopicError> {
        if s.is_empty() {
            return Err(TopicError::Empty);
        }
        if s.len() > MAX_TOPIC_LEN {
            return Err(TopicError::TooLong);
        }
        // [MQTT-3.3.2-2] a topic name must not contain wildcards.
        if s.bytes().any(|b| b == b'+' || b == b'#') {
            return Err(TopicError::WildcardInName);
        }
        if has_forbidden_char(s) {
            return Err(TopicError::ControlChar);
        }
        Ok(TopicName(Arc::from(s)))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared string, for cheap clones into messages.
    pub(crate) fn as_arc(&self) -> &Arc<str> {
        &self.0
    }

    /// The topic levels, split on `/`; empty levels are kept.
    pub(crate) fn levels(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    /// [MQTT-4.7.2-1] topics starting with `$` are not matched by a leading wildcard.
    pub(crate) fn is_dollar(&self) -> bool {
        self.0.starts_with('$')
    }
}

/// Previous-state walk of a filter, one pass (as ntex-mqtt's `is_valid`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Prev {
    LevelStart,
    Plus,
    Hash,
    Other,
}

impl TopicFilter {
    /// Validates a topic filter from SUBSCRIBE or UNSUBSCRIBE ([MQTT-4.7.1-1..-3]).
    pub(crate) fn parse(s: &str) -> Result<TopicFilter, TopicError> {
        if s.is_empty() {
            return Err(TopicError::Empty);
        }
        if s.len() > MAX_TOPIC_LEN {
            return Err(TopicError::TooLong);
        }
        if has_forbidden_char(s) {
            return Err(TopicError::ControlChar);
        }
        let mut prev = Prev::LevelStart;
        for b in s.bytes() {
            prev = match (prev, b) {
                (Prev::Hash, _) => return Err(TopicError::BadMultiLevel),
                (Prev::LevelStart, b'#') => Prev::Hash,
                (_, b'#') => return Err(TopicError::BadMultiLevel),
                (Prev::LevelStart, b'+') => Prev::Plus,
                (_, b'+') => return Err(TopicError::BadSingleLevel),
                (_, b'/') => Prev::LevelStart,
                (Prev::Plus, _) => return Err(TopicError::BadSingleLevel),
                _ => Prev::Other,
            };
        }
        if let Some(rest) = s.strip_prefix(SHARE_PREFIX) {
            // As Mosquitto and EMQX accept it from 3.1.1 clients (MQTT 5's [MQTT-4.8.2-1,-2]).
            match rest.split_once('/') {
                Some((group, filter))
                    if !group.is_empty() && !filter.is_empty() && !group.contains(['+', '#']) => {}
                _ => return Err(TopicError::BadShare),
            }
        }
        Ok(TopicFilter(Arc::from(s)))
    }

    /// For `$share/{group}/{filter}`: the group and the filter (valid, checked by `parse`).
    pub(crate) fn share(&self) -> Option<(&str, &str)> {
        self.0.strip_prefix(SHARE_PREFIX)?.split_once('/')
    }

    /// The filter a subscription matches topics with: `{filter}` of a shared subscription,
    /// else the filter itself.
    pub(crate) fn match_filter(&self) -> TopicFilter {
        match self.share() {
            Some((_, f)) => TopicFilter(Arc::from(f)),
            None => self.clone(),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn levels(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    /// The shared string, for cheap clones.
    pub(crate) fn as_arc(&self) -> &Arc<str> {
        &self.0
    }

    /// Whether the first level is a wildcard (such filters never match `$` topics).
    pub(crate) fn starts_with_wildcard(&self) -> bool {
        self.0.starts_with('+') || self.0.starts_with('#')
    }

    /// Whether this filter matches `topic`, by the rules of section 4.7: the reference
    /// matcher the trie and retained tree are tested against, and what a bridge maps topics
    /// with (off the publish path).
    pub(crate) fn matches(&self, topic: &TopicName) -> bool {
        // [MQTT-4.7.2-1] wildcards never match $-topics at the first level.
        if topic.is_dollar() && self.starts_with_wildcard() {
            return false;
        }
        let mut f = self.levels();
        let mut t = topic.levels();
        loop {
            match (f.next(), t.next()) {
                // [MQTT-4.7.1-2] '#' matches the parent level and any number of children.
                (Some("#"), _) => return true,
                (Some("+"), Some(_)) => {}
                (Some(fl), Some(tl)) if fl == tl => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(filter: &str, topic: &str) -> bool {
        TopicFilter::parse(filter)
            .unwrap()
            .matches(&TopicName::parse(topic).unwrap())
    }

    /// Valid and invalid filters, after mosquitto's test/unit/subs tables. [MQTT-4.7.1-1..-3]
    #[test]
    fn filter_validation_table() {
        for ok in [
            "#",
            "+",
            "a/#",
            "a/+/b",
            "+/+",
            "/a",
            "a//b",
            "a/",
            "/",
            "$SYS/#",
            "$share/g/f",
            "+/#",
            "sport/tennis/+",
            "é/+",
            "a b/c",
        ] {
            assert!(TopicFilter::parse(ok).is_ok(), "{ok} should be valid");
        }
        for bad in [
            "",
            "a+",
            "+a",
            "a/b+",
            "sport#",
            "sport/#/x",
            "#/a",
            "a/#b",
            "##",
            "++",
            "a\u{0}b",
            "a\u{1}",
            "a\u{85}",
            "a\u{ffff}",
        ] {
            assert!(
                TopicFilter::parse(bad).is_err(),
                "{bad:?} should be invalid"
            );
        }
    }

    /// issue #12 item 1: `$share/{group}/{filter}` as Mosquitto and EMQX accept it: one
    /// non-empty group level without wildcards, then a non-empty valid filter.
    #[test]
    fn shared_filter_validation() {
        for (ok, group, filter) in [
            ("$share/g/f", "g", "f"),
            ("$share/g/a/+/#", "g", "a/+/#"),
            ("$share/g/#", "g", "#"),
            ("$share/g//x", "g", "/x"),
            ("$share/g/$SYS/#", "g", "$SYS/#"),
        ] {
            let f = TopicFilter::parse(ok).expect(ok);
            assert_eq!(f.share(), Some((group, filter)), "{ok}");
            assert_eq!(f.match_filter().as_str(), filter);
        }
        for bad in [
            "$share/",
            "$share/g",
            "$share/g/",
            "$share//f",
            "$share/+/f",
            "$share/#",
            "$share/g+/f",
            "$share/g/a#",
        ] {
            assert!(
                TopicFilter::parse(bad).is_err(),
                "{bad:?} should be invalid"
            );
        }
        // Not shared: `$share` alone, or another `$` prefix.
        for plain in ["$share", "$shared/g/f", "$SYS/share/g/f"] {
            assert_eq!(TopicFilter::parse(plain).expect(plain).share(), None);
        }
    }

    /// [MQTT-3.3.2-2] topic names never carry wildcards; they are never empty.
    #[test]
    fn topic_name_validation() {
        for ok in ["a", "/", "a//b", "$SYS/x", "😀/x", "é", "a b"] {
            assert!(TopicName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/+", "#", "a+b", "a#", "a\u{0}", "a\u{7f}"] {
            assert!(TopicName::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            TopicName::parse(&"x".repeat(65_536)).unwrap_err(),
            TopicError::TooLong
        );
        assert!(TopicName::parse(&"x".repeat(65_535)).is_ok());
    }

    /// Matching rules of 4.7, including the `$` rule [MQTT-4.7.2-1] and '#' matching the parent.
    #[test]
    fn matching_table() {
        let yes = [
            ("sport/#", "sport"),
            ("sport/#", "sport/tennis/player1"),
            ("sport/tennis/#", "sport/tennis"),
            ("#", "a/b/c"),
            ("+", "a"),
            ("+/+", "/finance"),
            ("/+", "/finance"),
            ("a/+/c", "a//c"),
            ("$SYS/#", "$SYS/broker/uptime"),
            ("$SYS/+", "$SYS/x"),
            ("+/#", "a"),
            ("a/b", "a/b"),
            ("é/+", "é/😀"),
        ];
        for (f, t) in yes {
            assert!(m(f, t), "{f} should match {t}");
        }
        let no = [
            ("#", "$SYS/x"),
            ("+/x", "$SYS/x"),
            ("+", "$SYS"),
            ("sport/+", "sport"),
            ("+", "/finance"),
            ("a/b", "a/B"),
            ("a", "a/b"),
            ("a/b", "a"),
            ("+/+", "a"),
            ("😀", "é"),
        ];
        for (f, t) in no {
            assert!(!m(f, t), "{f} must not match {t}");
        }
    }
}
