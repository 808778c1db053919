//! Subject validation and wildcard matching helpers.
//!
//! NATS subjects are `.`-separated tokens. In a subscription, a token that is
//! exactly `*` matches any single token and a final token that is exactly `>`
//! matches one or more trailing tokens. A token that merely *contains* `*` or
//! `>` (such as `foo*`) is an ordinary literal, as in nats-server.
//!
//! These helpers work on raw bytes because that is what the protocol parser
//! hands us; no UTF-8 validation is performed (nats-server does not do it on
//! the hot path either).

/// Token separator.
pub const TSEP: u8 = b'.';
/// Single-token wildcard.
pub const PWC: u8 = b'*';
/// Trailing multi-token wildcard.
pub const FWC: u8 = b'>';

/// Bytes that may never appear in a subject or queue name because the text
/// protocol uses them as field or line separators.
#[inline]
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | 0x0c)
}

/// Iterates over the `.`-separated tokens of `s` (empty tokens included).
#[inline]
pub fn tokens(s: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    s.split(|&b| b == TSEP)
}

/// Whether `s` is acceptable as a subscription subject: non-empty, no empty
/// tokens, no whitespace, and a `>` wildcard token only in last position.
///
/// This is the same rule as nats-server's `IsValidSubject`, which the
/// server applies to `SUB` subjects.
pub fn valid_subscribe_subject(s: &[u8]) -> bool {
    if s.is_empty() {
        return false;
    }
    let mut saw_fwc = false;
    for t in tokens(s) {
        if t.is_empty() || saw_fwc {
            return false;
        }
        if t.len() == 1 && t[0] == FWC {
            saw_fwc = true;
            continue;
        }
        if t.iter().any(|&b| is_space(b)) {
            return false;
        }
    }
    true
}

/// Whether `s` is acceptable as a `PUB` subject: a valid subject that
/// contains no wildcard tokens (messages are always published to a literal).
pub fn valid_publish_subject(s: &[u8]) -> bool {
    valid_subscribe_subject(s) && subject_is_literal(s)
}

/// Whether `q` is acceptable as a queue group name: non-empty and free of
/// whitespace, so it cannot be confused with the next protocol field.
pub fn valid_queue_name(q: &[u8]) -> bool {
    !q.is_empty() && !q.iter().any(|&b| is_space(b))
}

/// Whether `s` has no wildcard tokens (`*` or `>` as a whole token).
///
/// Used to decide whether a subscription can only ever match one subject,
/// which lets the match cache be invalidated with a single lookup.
pub fn subject_is_literal(s: &[u8]) -> bool {
    !tokens(s).any(|t| t.len() == 1 && (t[0] == PWC || t[0] == FWC))
}

/// Whether the subscription `pattern` matches `subject`.
///
/// `subject` is treated purely literally (its tokens are never wildcards);
/// `*` and a trailing `>` in `pattern` are wildcards. A `>` that is not the
/// last token of `pattern` is treated as a literal token, though such a
/// pattern is invalid anyway. This is the straightforward reference matcher
/// used for permission checks; routing uses the [`crate::sublist`] trie.
pub fn subject_matches(pattern: &[u8], subject: &[u8]) -> bool {
    let mut pt = tokens(pattern).peekable();
    let mut st = tokens(subject);
    while let Some(p) = pt.next() {
        let is_last = pt.peek().is_none();
        if is_last && p == [FWC] {
            // `>` needs at least one more token in the subject.
            return st.next().is_some();
        }
        match st.next() {
            None => return false,
            Some(s) => {
                if p != [PWC] && p != s {
                    return false;
                }
            }
        }
    }
    st.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_subjects() {
        for ok in [
            "foo",
            "foo.bar",
            "*",
            ">",
            "foo.*",
            "foo.>",
            "*.bar.>",
            "foo*",
            "foo>",
            "foo.>bar",
            "foo.*bar.baz",
            "a.b.c.d.e.f",
            "\u{e9}t\u{e9}.*",
            "$SYS.>",
            "_INBOX.abc123",
        ] {
            assert!(
                valid_subscribe_subject(ok.as_bytes()),
                "{ok:?} should be valid"
            );
        }
        for bad in [
            "",
            ".",
            "foo.",
            ".foo",
            "foo..bar",
            ">.foo",
            "foo.>.bar",
            "foo.>.>",
            "foo bar",
            "foo\tbar",
            "foo\r",
            "\nfoo",
            "foo.\x0cbar",
            " ",
            "foo. ",
        ] {
            assert!(
                !valid_subscribe_subject(bad.as_bytes()),
                "{bad:?} should be invalid"
            );
        }
    }

    #[test]
    fn publish_subjects() {
        for ok in ["foo", "foo.bar", "foo*", "foo>", "a.b*.c>", "_INBOX.x.y"] {
            assert!(
                valid_publish_subject(ok.as_bytes()),
                "{ok:?} should be valid"
            );
        }
        for bad in [
            "",
            "*",
            ">",
            "foo.*",
            "foo.>",
            "*.foo",
            "foo.*.bar",
            "foo..bar",
            "foo.",
            "foo bar",
            "foo\n",
        ] {
            assert!(
                !valid_publish_subject(bad.as_bytes()),
                "{bad:?} should be invalid"
            );
        }
    }

    #[test]
    fn queue_names() {
        for ok in ["q", "workers", "a.b", "q*", "g-1_2"] {
            assert!(valid_queue_name(ok.as_bytes()), "{ok:?} should be valid");
        }
        for bad in ["", " ", "a b", "a\tb", "q\r\n"] {
            assert!(
                !valid_queue_name(bad.as_bytes()),
                "{bad:?} should be invalid"
            );
        }
    }

    #[test]
    fn literal() {
        for lit in ["foo", "foo.bar", "foo*", "*foo", ">foo", "foo.b>r", ""] {
            assert!(subject_is_literal(lit.as_bytes()), "{lit:?} is literal");
        }
        for wc in ["*", ">", "foo.*", "foo.>", "*.foo", "a.*.b"] {
            assert!(!subject_is_literal(wc.as_bytes()), "{wc:?} is not literal");
        }
    }

    #[test]
    fn matching() {
        let yes = [
            ("foo", "foo"),
            ("foo.bar", "foo.bar"),
            ("*", "foo"),
            (">", "foo"),
            (">", "foo.bar.baz"),
            ("foo.*", "foo.bar"),
            ("foo.>", "foo.bar"),
            ("foo.>", "foo.bar.baz"),
            ("*.bar", "foo.bar"),
            ("*.*", "a.b"),
            ("foo.*.baz", "foo.bar.baz"),
            ("*.bar.>", "foo.bar.baz.qux"),
            ("foo*", "foo*"),
        ];
        for (p, s) in yes {
            assert!(
                subject_matches(p.as_bytes(), s.as_bytes()),
                "{p:?} should match {s:?}"
            );
        }
        let no = [
            ("foo", "bar"),
            ("foo", "foo.bar"),
            ("foo.bar", "foo"),
            ("*", "foo.bar"),
            ("foo.>", "foo"),
            ("foo.*", "foo"),
            ("foo.*", "foo.bar.baz"),
            ("*.bar", "foo.baz"),
            ("foo*", "foobar"),
            ("foo*", "foo"),
            ("foo.>.bar", "foo.x.bar"),
            ("a.b", "a.b.c"),
        ];
        for (p, s) in no {
            assert!(
                !subject_matches(p.as_bytes(), s.as_bytes()),
                "{p:?} should not match {s:?}"
            );
        }
    }
}
