//! Mosquitto ACL files (`acl_file`): which topics a client may publish to and receive.
//! L0: std and `topic`. Invariants: an `Acl` is immutable once parsed and shared by every
//! client's `ClientAcl`; checking a topic allocates nothing; the syntax, the rule order and
//! the matching are Mosquitto's (src/security_default.c and libcommon/topic_common.c of
//! Mosquitto 2.1, the same as 2.0 except that `%c`/`%u` are whole levels), noted where applied.

use std::collections::HashMap;
use std::sync::Arc;

use crate::topic::{ClientId, TopicFilter, TopicName};

/// What a rule grants. `topic FILTER` without a keyword is `ReadWrite`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Deny,
    Read,
    Write,
    ReadWrite,
}

/// The access a check asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// Receive a message (a delivery, a retained message, a subscription).
    Read,
    /// Publish (a PUBLISH, a will).
    Write,
}

impl Access {
    fn grants(self, want: Want) -> bool {
        matches!(
            (self, want),
            (Access::ReadWrite, _) | (Access::Read, Want::Read) | (Access::Write, Want::Write)
        )
    }
}

/// One level of a rule's filter.
#[derive(Debug)]
enum Level {
    Literal(Box<str>),
    Plus,
    Hash,
    /// `%c` as a whole level of a `pattern`: the client id.
    ClientId,
    /// `%u` as a whole level of a `pattern`: the username.
    Username,
}

#[derive(Debug)]
struct Rule {
    access: Access,
    levels: Box<[Level]>,
    /// The filter starts with `$`.
    dollar: bool,
    /// Has a `%u` level (skipped for clients without a username, as Mosquitto does).
    username: bool,
}

/// A parsed ACL file.
#[derive(Debug, Default)]
pub(crate) struct Acl {
    /// The `topic` rules of each section, deny rules first (see `add`).
    sections: Vec<Vec<Rule>>,
    /// The section of clients without a username: the `topic` lines before the first `user`.
    anonymous: Option<usize>,
    /// `user NAME` sections; a name that appears twice continues its first section.
    users: HashMap<Box<str>, usize>,
    /// `pattern` rules, for every client wherever they stand in the file, deny rules first.
    patterns: Vec<Rule>,
}

/// A parse error: the 1-based line and what is wrong.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct LineError {
    pub(crate) line: usize,
    pub(crate) why: String,
}

/// Splits off the first word (words are separated by spaces or tabs).
fn first_word(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches([' ', '\t']);
    match s.find([' ', '\t']) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// Adds a rule to a list. Mosquitto (`add__acl`, `add__acl_pattern`) puts every `deny` rule
/// in front of the others, whatever its place in the file: a matching deny always wins.
fn add(list: &mut Vec<Rule>, rule: Rule) {
    if rule.access == Access::Deny {
        let at = list.iter().take_while(|r| r.access == Access::Deny).count();
        list.insert(at, rule);
    } else {
        list.push(rule);
    }
}

impl Acl {
    /// Parses an ACL file (Mosquitto's `aclfile__parse`): blank lines and `#` comments;
    /// `user NAME` starts a section (the rest of the line, trimmed, is the name); `topic
    /// [read|write|readwrite|deny] FILTER` adds to the current section (before any `user` line:
    /// to the section of clients without a username); `pattern [ACCESS] FILTER` applies to
    /// every client. FILTER is the rest of the line, trimmed (it may contain spaces) and must be
    /// a valid topic filter. Anything else is an error naming the line, as in Mosquitto, which
    /// refuses to start on it. Also returns warnings to log (patterns without `%c` or `%u`,
    /// which Mosquitto warns about too).
    pub(crate) fn parse(text: &str) -> Result<(Acl, Vec<String>), LineError> {
        let mut acl = Acl::default();
        let mut warnings = Vec::new();
        let mut current: Option<usize> = None;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let err = |why: String| LineError { line: n, why };
            let line = raw.trim_end();
            if line.trim_start().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let (keyword, rest) = first_word(line);
            match keyword {
                "user" => {
                    let name = rest.trim();
                    if name.is_empty() {
                        return Err(err("missing username after \"user\"".to_owned()));
                    }
                    let next = acl.sections.len();
                    let idx = *acl.users.entry(name.into()).or_insert(next);
                    if idx == next {
                        acl.sections.push(Vec::new());
                    }
                    current = Some(idx);
                }
                "topic" | "pattern" => {
                    let (first, after) = first_word(rest);
                    if first.is_empty() {
                        return Err(err(format!("empty topic after \"{keyword}\"")));
                    }
                    let (access, filter) = if after.trim().is_empty() {
                        (Access::ReadWrite, first)
                    } else {
                        let access = match first {
                            "read" => Access::Read,
                            "write" => Access::Write,
                            "readwrite" => Access::ReadWrite,
                            "deny" => Access::Deny,
                            other => {
                                return Err(err(format!(
                                    "invalid access \"{other}\" (read, write, readwrite or deny)"
                                )))
                            }
                        };
                        (access, after.trim())
                    };
                    if let Err(e) = TopicFilter::parse(filter) {
                        return Err(err(format!("invalid topic filter \"{filter}\": {e}")));
                    }
                    let pattern = keyword == "pattern";
                    let levels: Box<[Level]> = filter
                        .split('/')
                        .map(|l| match l {
                            "+" => Level::Plus,
                            "#" => Level::Hash,
                            "%c" if pattern => Level::ClientId,
                            "%u" if pattern => Level::Username,
                            lit => Level::Literal(lit.into()),
                        })
                        .collect();
                    let username = levels.iter().any(|l| matches!(l, Level::Username));
                    if pattern
                        && !levels
                            .iter()
                            .any(|l| matches!(l, Level::ClientId | Level::Username))
                    {
                        warnings.push(format!(
                            "line {n}: pattern \"{filter}\" has no %c or %u level"
                        ));
                    }
                    let rule = Rule {
                        access,
                        levels,
                        dollar: filter.starts_with('$'),
                        username,
                    };
                    if pattern {
                        add(&mut acl.patterns, rule);
                    } else {
                        let idx = match current {
                            Some(idx) => idx,
                            None => *acl.anonymous.get_or_insert_with(|| {
                                acl.sections.push(Vec::new());
                                acl.sections.len() - 1
                            }),
                        };
                        add(&mut acl.sections[idx], rule);
                    }
                }
                other => {
                    return Err(err(format!(
                        "unknown keyword \"{other}\" (user, topic or pattern)"
                    )))
                }
            }
        }
        Ok((acl, warnings))
    }

    /// The view of this ACL for one client (Mosquitto's `acl__find_acls` at connect): the
    /// section of its username, or the anonymous section when it has none. A username without
    /// a section has only the patterns.
    pub(crate) fn for_client(
        self: &Arc<Acl>,
        client_id: &ClientId,
        username: Option<&str>,
    ) -> ClientAcl {
        let section = match username {
            Some(u) => self.users.get(u).copied(),
            None => self.anonymous,
        };
        ClientAcl {
            acl: self.clone(),
            section,
            // Mosquitto: a client id or username containing `+` or `#` could make a pattern
            // match another client's topics; such a client gets no access through patterns.
            dangerous: client_id.contains(['+', '#'])
                || username.is_some_and(|u| u.contains(['+', '#'])),
            client_id: client_id.clone(),
            username: username.map(Into::into),
        }
    }
}

/// One client's access: the shared `Acl` plus what its rules are resolved against.
#[derive(Debug)]
pub(crate) struct ClientAcl {
    acl: Arc<Acl>,
    section: Option<usize>,
    client_id: ClientId,
    username: Option<Box<str>>,
    dangerous: bool,
}

/// A rule level resolved for one client, for comparing filters.
#[derive(Clone, Copy)]
enum Lv<'a> {
    Lit(&'a str),
    Plus,
    Hash,
}

impl ClientAcl {
    pub(crate) fn may_read(&self, topic: &TopicName) -> bool {
        self.check(topic.as_str(), Want::Read)
    }

    pub(crate) fn may_write(&self, topic: &TopicName) -> bool {
        self.check(topic.as_str(), Want::Write)
    }

    /// The value a `%c` or `%u` level stands for; None never matches (Mosquitto: a missing or
    /// empty client id or username matches nothing).
    fn value(&self, level: &Level) -> Option<&str> {
        let v = match level {
            Level::ClientId => Some(&*self.client_id),
            Level::Username => self.username.as_deref(),
            _ => None,
        };
        v.filter(|v| !v.is_empty())
    }

    /// Whether `rule` matches the topic name `topic` (Mosquitto's
    /// `mosquitto_topic_matches_sub_with_pattern`).
    fn matches(&self, rule: &Rule, topic: &str) -> bool {
        // [MQTT-4.7.2-1] and Mosquitto: a `$` topic matches only a rule starting with `$`
        // (so `#` or `%c/#` never match `$SYS/...`), and a `$` rule only `$` topics.
        if topic.starts_with('$') != rule.dollar {
            return false;
        }
        let mut t = topic.split('/');
        for level in rule.levels.iter() {
            if let Level::Hash = level {
                // `a/#` also matches `a` [MQTT-4.7.1-2].
                return true;
            }
            let Some(tl) = t.next() else { return false };
            let ok = match level {
                Level::Literal(l) => **l == *tl,
                Level::Plus => true,
                // A whole level equal to the value: a client id with `/` never matches.
                _ => self.value(level) == Some(tl),
            };
            if !ok {
                return false;
            }
        }
        t.next().is_none()
    }

    /// Mosquitto's `mosquitto_acl_check_default` for a topic name.
    fn check(&self, topic: &str, want: Want) -> bool {
        // 1. The client's section: the first matching rule that denies or grants `want`
        //    decides; a matching rule that grants only the other access is passed over.
        if let Some(idx) = self.section {
            for rule in &self.acl.sections[idx] {
                if self.matches(rule, topic) {
                    if rule.access == Access::Deny {
                        return false;
                    }
                    if rule.access.grants(want) {
                        return true;
                    }
                }
            }
        }
        // 2. Patterns, unless the client id or username is dangerous (checked only once
        //    patterns are reached, as Mosquitto does).
        if !self.acl.patterns.is_empty() && self.dangerous {
            return false;
        }
        for rule in &self.acl.patterns {
            if rule.username && self.username.is_none() {
                continue;
            }
            if self.matches(rule, topic) {
                if rule.access == Access::Deny {
                    return false;
                }
                if rule.access.grants(want) {
                    return true;
                }
            }
        }
        // 3. Nothing granted it: denied (an empty ACL file denies everything).
        false
    }

    /// Whether a SUBSCRIBE to `filter` is granted. Mosquitto's ACL file never refuses a
    /// subscription (its check returns success for SUBSCRIBE and filters every delivery); here
    /// a filter is refused (SUBACK 0x80) when the ACL guarantees that nothing matching it could
    /// ever be delivered: walking the same rules in the same order as `check` for a read,
    /// a deny rule that covers the whole filter refuses it, and a rule granting read that
    /// overlaps the filter grants it. Deliveries are still checked one by one, so `#` granted
    /// because of `topic read a/#` delivers only `a/...`.
    pub(crate) fn may_subscribe(&self, filter: &TopicFilter) -> bool {
        let f: Vec<Lv<'_>> = filter
            .levels()
            .map(|l| match l {
                "+" => Lv::Plus,
                "#" => Lv::Hash,
                lit => Lv::Lit(lit),
            })
            .collect();
        let f_dollar = matches!(f.first(), Some(Lv::Lit(l)) if l.starts_with('$'));
        let decide = |rule: &Rule| -> Option<bool> {
            if rule.dollar != f_dollar {
                return None;
            }
            let mut r = Vec::with_capacity(rule.levels.len());
            for level in rule.levels.iter() {
                r.push(match level {
                    Level::Literal(l) => Lv::Lit(l),
                    Level::Plus => Lv::Plus,
                    Level::Hash => Lv::Hash,
                    _ => match self.value(level) {
                        Some(v) if !v.contains('/') => Lv::Lit(v),
                        _ => return None,
                    },
                });
            }
            if rule.access == Access::Deny {
                covers(&r, &f).then_some(false)
            } else if rule.access.grants(Want::Read) {
                overlaps(&r, &f).then_some(true)
            } else {
                None
            }
        };
        if let Some(idx) = self.section {
            for rule in &self.acl.sections[idx] {
                if let Some(answer) = decide(rule) {
                    return answer;
                }
            }
        }
        if !self.acl.patterns.is_empty() && self.dangerous {
            return false;
        }
        for rule in &self.acl.patterns {
            if rule.username && self.username.is_none() {
                continue;
            }
            if let Some(answer) = decide(rule) {
                return answer;
            }
        }
        false
    }
}

/// Whether some topic matches both filters. (Their `$` prefixes were compared by the caller,
/// and a wildcard never matches a `$` level, so a literal `$` level meets only itself.)
fn overlaps(a: &[Lv<'_>], b: &[Lv<'_>]) -> bool {
    match (a.split_first(), b.split_first()) {
        (None, None) => true,
        // `#` matches any rest, including none.
        (Some((Lv::Hash, _)), _) | (_, Some((Lv::Hash, _))) => true,
        (None, Some(_)) | (Some(_), None) => false,
        (Some((x, ra)), Some((y, rb))) => {
            let level = match (x, y) {
                (Lv::Lit(p), Lv::Lit(q)) => p == q,
                _ => true,
            };
            level && overlaps(ra, rb)
        }
    }
}

/// Whether every topic matching `f` matches `r`.
fn covers(r: &[Lv<'_>], f: &[Lv<'_>]) -> bool {
    match (r.split_first(), f.split_first()) {
        (Some((Lv::Hash, _)), _) => true,
        (None, None) => true,
        (None, Some(_)) | (Some(_), None) => false,
        (Some((x, rr)), Some((y, rf))) => {
            let level = match (x, y) {
                (_, Lv::Hash) => false,
                (Lv::Plus, _) => true,
                (Lv::Lit(p), Lv::Lit(q)) => p == q,
                _ => false,
            };
            level && covers(rr, rf)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(text: &str) -> Arc<Acl> {
        Arc::new(Acl::parse(text).expect("valid ACL").0)
    }

    fn client(a: &Arc<Acl>, id: &str, user: Option<&str>) -> ClientAcl {
        a.for_client(&ClientId::from(id), user)
    }

    fn t(s: &str) -> TopicName {
        TopicName::parse(s).unwrap()
    }

    fn f(s: &str) -> TopicFilter {
        TopicFilter::parse(s).unwrap()
    }

    /// issue #9 item 2: Mosquitto's test/broker/09-acl-access-variants.py: every combination of its
    /// three blocks, and its nine cases (client id "acl-check"; "deny" means the PUBLISH is
    /// acknowledged but not delivered back to the publisher's own subscription, i.e. both the write
    /// and the read check must pass):
    /// ```text
    /// topic readwrite topic/global/#          user username
    /// topic deny      topic/global/except     topic readwrite topic/username/#
    ///                                         topic deny      topic/username/except
    /// pattern readwrite pattern/%u/#
    /// pattern deny      pattern/%u/except
    /// ```
    #[test]
    fn mosquitto_acl_access_variants() {
        let global = "topic readwrite topic/global/#\ntopic deny      topic/global/except\n";
        let user = "user username\ntopic readwrite topic/username/#\ntopic deny      topic/username/except\n";
        let pattern = "pattern readwrite pattern/%u/#\npattern deny      pattern/%u/except\n";
        let cases: [(u8, Option<&str>, &str, bool); 9] = [
            (1, None, "topic/global", true),
            (1, Some("username"), "topic/global", false),
            (1, None, "topic/global/except", false),
            (2, None, "topic/username", false),
            (2, Some("username"), "topic/username", true),
            (2, Some("username"), "topic/username/except", false),
            (4, None, "pattern/username", false),
            (4, Some("username"), "pattern/username", true),
            (4, Some("username"), "pattern/username/except", false),
        ];
        // The combinations the Mosquitto test runs (bit 1 global, 2 user, 4 pattern).
        for blocks in [4u8, 2, 1, 6, 5, 7] {
            let mut text = String::new();
            for (bit, part) in [(1, global), (2, user), (4, pattern)] {
                if blocks & bit != 0 {
                    text.push_str(part);
                }
            }
            let a = acl(&text);
            for (block, username, topic, allowed) in cases {
                if blocks & block == 0 {
                    continue;
                }
                let c = client(&a, "acl-check", username);
                let got = c.may_write(&t(topic)) && c.may_read(&t(topic));
                assert_eq!(got, allowed, "blocks {blocks} user {username:?} {topic}");
            }
        }
    }

    /// issue #9 item 2: Mosquitto's unit tests for `%c`/`%u` (test/unit/libcommon/topic_test.c,
    /// TEST_topic_pattern_*), as `pattern` rules: whole levels only (`%count`, `a%c` are
    /// literals), client id or username with `/` never match, `+` in them denies.
    #[test]
    fn mosquitto_pattern_substitution_table() {
        // (pattern, topic, client id, username, matches)
        let cases: &[(&str, &str, &str, Option<&str>, bool)] = &[
            ("%c", "clientid", "clientid", None, true),
            ("%c", "clientid", "nomatch", None, false),
            ("%c/test", "clientid/test", "clientid", None, true),
            ("test/%c", "test/clientid", "nomatch", None, false),
            ("test/%c/test", "test/clientid/test", "clientid", None, true),
            (
                "test/%c/%c/test",
                "test/clientid/clientid/test",
                "clientid",
                None,
                true,
            ),
            ("test/%count", "test/clientid", "clientid", None, false),
            ("%u", "username", "c", Some("username"), true),
            ("%u", "username", "c", Some("nomatch"), false),
            (
                "test/%u/%u/test",
                "test/username/username/test",
                "c",
                Some("username"),
                true,
            ),
            (
                "test/%username",
                "test/username",
                "c",
                Some("username"),
                false,
            ),
            (
                "%u/%c",
                "username/clientid",
                "clientid",
                Some("username"),
                true,
            ),
            (
                "%u/%c",
                "username/clientid",
                "clientid",
                Some("nomatch"),
                false,
            ),
            (
                "%u/%c",
                "username/clientid",
                "nomatch",
                Some("username"),
                false,
            ),
            (
                "test/%u/%c/%c/%u/test",
                "test/username/clientid/clientid/username/test",
                "clientid",
                Some("username"),
                true,
            ),
            (
                "test/a%u/a%c",
                "test/ausername/aclientid",
                "clientid",
                Some("username"),
                false,
            ),
            ("%c", "clientid/test", "clientid/test", None, false),
            ("%u", "username/test", "c", Some("username/test"), false),
            ("clientid/%c/+", "clientid/test/topic", "test", None, true),
            ("clientid/%c/#", "clientid/test/topic", "test", None, true),
            ("clientid/%c/#", "clientid/test", "test", None, true),
            ("clientid/%c/#", "clientid/test", "nomatch", None, false),
            (
                "pattern/%u/#",
                "pattern/username",
                "c",
                Some("username"),
                true,
            ),
            // Empty values match nothing (TEST_topic_pattern_empty_input).
            ("test/%u/test", "test//test", "c", Some(""), false),
            // No username: %u rules are skipped.
            ("%u", "c", "c", None, false),
            // Dangerous ids and usernames get nothing from patterns (security_default.c),
            // even from a pattern that does not use them.
            ("a/#", "a/x", "ab", None, true),
            ("a/#", "a/x", "a+b", None, false),
            ("a/#", "a/x", "c", Some("#"), false),
            // A `$` topic needs a `$` rule.
            ("%c/#", "$x/y", "$x", None, false),
        ];
        for &(pattern, topic, id, user, want) in cases {
            let a = acl(&format!("pattern readwrite {pattern}\n"));
            let c = client(&a, id, user);
            assert_eq!(
                c.may_read(&t(topic)),
                want,
                "{pattern} {topic} {id} {user:?}"
            );
        }
    }

    /// issue #9 item 2: Mosquitto's rule order and defaults: deny rules first wherever they are
    /// written; a matching rule without the wanted access is passed over; a username without a
    /// section gets only patterns; an anonymous client gets the lines before the first `user`; an
    /// empty ACL file denies everything (test/broker/09-acl-empty-file.py); `#` never matches
    /// `$SYS` (aclfile.example: `topic read $SYS/#` for anonymous clients).
    #[test]
    fn mosquitto_rule_order_and_defaults() {
        let a = acl("topic read $SYS/#\ntopic a/#\nuser roger\ntopic foo/bar\ntopic read x/#\ntopic write x/w\ntopic x/#\ntopic deny x/secret\nuser u2\ntopic #\n");
        let anon = client(&a, "c", None);
        assert!(anon.may_read(&t("$SYS/broker/uptime")));
        assert!(!anon.may_write(&t("$SYS/broker/uptime")));
        assert!(anon.may_write(&t("a/b")) && anon.may_read(&t("a")));
        assert!(!anon.may_read(&t("foo/bar")));
        let roger = client(&a, "c", Some("roger"));
        assert!(roger.may_read(&t("foo/bar")) && roger.may_write(&t("foo/bar")));
        assert!(
            !roger.may_read(&t("a/b")),
            "a username does not get the anonymous rules"
        );
        assert!(
            !roger.may_read(&t("x/secret")),
            "deny written last still wins"
        );
        assert!(roger.may_write(&t("x/w")));
        // `topic read x/#` matches x/other first without write; `topic x/#` grants it later.
        assert!(roger.may_write(&t("x/other")));
        let u2 = client(&a, "c", Some("u2"));
        assert!(u2.may_read(&t("any/thing")) && !u2.may_read(&t("$SYS/x")));
        let stranger = client(&a, "c", Some("stranger"));
        assert!(!stranger.may_read(&t("a")) && !stranger.may_write(&t("foo/bar")));
        let empty = acl("# comment\n\n");
        assert!(!client(&empty, "c", None).may_read(&t("test/topic")));
        assert!(!client(&empty, "c", Some("u")).may_write(&t("test/topic")));
    }

    /// issue #9 item 2: SUBACK 0x80 exactly when no delivery could pass: a deny covering the
    /// filter, or no read rule overlapping it; granted filters may be wider than the rules.
    #[test]
    fn subscribe_refused_only_when_nothing_could_be_delivered() {
        let a = acl("user u\ntopic read sensors/#\ntopic write cmd/#\ntopic deny sensors/secret/#\npattern read dev/%c/#\n");
        let c = client(&a, "d1", Some("u"));
        for (filter, want) in [
            ("sensors/#", true),
            ("sensors/+/temp", true),
            ("#", true),
            ("+/kitchen", true),
            ("sensors/secret/#", false),
            ("sensors/secret/x", false),
            ("cmd/#", false),
            ("other/#", false),
            ("$SYS/#", false),
            ("dev/d1/#", true),
            ("dev/d2/#", false),
            ("dev/+/x", true),
        ] {
            assert_eq!(c.may_subscribe(&f(filter)), want, "{filter}");
        }
        // Deliveries are still filtered one by one.
        assert!(c.may_read(&t("sensors/kitchen")) && !c.may_read(&t("sensors/secret/k")));
        assert!(!c.may_read(&t("dev/d2/x")));
    }

    /// issue #9 item 2: the filter overlap and cover relations behind SUBACK 0x80 (a `#` covers its
    /// parent level; `+` needs a level).
    #[test]
    fn overlap_and_cover_of_filters() {
        let lv = |s: &'static str| -> Vec<Lv<'static>> {
            s.split('/')
                .map(|l| match l {
                    "+" => Lv::Plus,
                    "#" => Lv::Hash,
                    x => Lv::Lit(x),
                })
                .collect()
        };
        for (a, b, o) in [
            ("a/#", "a", true),
            ("a/+", "a", false),
            ("a/+/c", "a/b/+", true),
            ("a/b", "a/c", false),
            ("#", "x/y/z", true),
            ("a/+/#", "a", false),
        ] {
            assert_eq!(overlaps(&lv(a), &lv(b)), o, "{a} {b}");
            assert_eq!(overlaps(&lv(b), &lv(a)), o, "{b} {a}");
        }
        for (r, f, c) in [
            ("a/#", "a", true),
            ("a/#", "a/#", true),
            ("a/+", "a/b", true),
            ("a/+", "a/#", false),
            ("a/b", "a/+", false),
            ("a/+/#", "a/#", false),
            ("#", "#", true),
        ] {
            assert_eq!(covers(&lv(r), &lv(f)), c, "{r} covers {f}");
        }
    }

    /// issue #9 item 2: Mosquitto's parser: keyword errors, a missing username, an invalid filter
    /// and an invalid access keyword name their line; a filter may contain spaces.
    #[test]
    fn parse_errors_name_their_line() {
        for (text, line, want) in [
            ("topic read a\nfoo bar\n", 2, "unknown keyword \"foo\""),
            ("user\n", 1, "missing username"),
            ("\n\ntopic\n", 3, "empty topic"),
            ("topic read a/#/b\n", 1, "invalid topic filter"),
            ("topic a+\n", 1, "invalid topic filter"),
            ("topic readonly a\n", 1, "invalid access \"readonly\""),
            ("pattern \n", 1, "empty topic"),
        ] {
            let e = Acl::parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}");
            assert!(e.why.contains(want), "{text:?}: {}", e.why);
        }
        let a = acl("topic read a b/c d\n  # indented comment\n\tuser  x y \n");
        let anon = client(&a, "c", None);
        assert!(anon.may_read(&t("a b/c d")));
        assert!(a.users.contains_key("x y"));
        let (_, warnings) = Acl::parse("pattern read a/b\n").unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

    /// issue #9 item 2: Bad input is normal input: arbitrary ACL text never panics.
    #[test]
    fn arbitrary_text_never_panics() {
        let words = [
            "user", "topic", "pattern", "read", "deny", "#", "+", "%c", "%u", "$", "/", " ", "\t",
            "a",
        ];
        for a in words {
            for b in words {
                for c in words {
                    let _ = Acl::parse(&format!("{a} {b} {c}\n{a}{b}\n"));
                }
            }
        }
    }
}
