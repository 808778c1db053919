//! Parser behaviour: every verb, separators, case, splits, limits and errors.

use bytes::{Bytes, BytesMut};
use nats_proto::encode::encode;
use nats_proto::parser::parse_all;
use nats_proto::{Limits, Op, Parser, ProtoError};
use proptest::prelude::*;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn one(data: &str) -> Op {
    let ops = parse_all(Limits::default(), data.as_bytes()).unwrap();
    assert_eq!(ops.len(), 1, "{ops:?}");
    ops.into_iter().next().unwrap()
}

fn err(data: &str) -> ProtoError {
    parse_all(Limits::default(), data.as_bytes()).unwrap_err()
}

#[test]
fn every_verb() {
    assert_eq!(one("PING\r\n"), Op::Ping);
    assert_eq!(one("PONG\r\n"), Op::Pong);
    assert_eq!(one("+OK\r\n"), Op::Ok);
    assert_eq!(
        one("-ERR 'Unknown Protocol Operation'\r\n"),
        Op::Err(b("'Unknown Protocol Operation'"))
    );
    assert_eq!(one("INFO {\"a\":1}\r\n"), Op::Info(b("{\"a\":1}")));
    assert_eq!(one("CONNECT {}\r\n"), Op::Connect(b("{}")));
    assert_eq!(
        one("PUB foo 5\r\nhello\r\n"),
        Op::Pub {
            subject: b("foo"),
            reply: None,
            payload: b("hello")
        }
    );
    assert_eq!(
        one("PUB foo bar 0\r\n\r\n"),
        Op::Pub {
            subject: b("foo"),
            reply: Some(b("bar")),
            payload: b("")
        }
    );
    assert_eq!(
        one("HPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\n"),
        Op::HPub {
            subject: b("foo"),
            reply: None,
            headers: b("NATS/1.0\r\n\r\n"),
            payload: b("hi")
        }
    );
    assert_eq!(
        one("HPUB foo r 12 12\r\nNATS/1.0\r\n\r\n\r\n"),
        Op::HPub {
            subject: b("foo"),
            reply: Some(b("r")),
            headers: b("NATS/1.0\r\n\r\n"),
            payload: b("")
        }
    );
    assert_eq!(
        one("SUB foo 1\r\n"),
        Op::Sub {
            subject: b("foo"),
            queue: None,
            sid: b("1")
        }
    );
    assert_eq!(
        one("SUB foo q 1\r\n"),
        Op::Sub {
            subject: b("foo"),
            queue: Some(b("q")),
            sid: b("1")
        }
    );
    assert_eq!(
        one("UNSUB 1\r\n"),
        Op::Unsub {
            sid: b("1"),
            max: None
        }
    );
    assert_eq!(
        one("UNSUB 1 10\r\n"),
        Op::Unsub {
            sid: b("1"),
            max: Some(10)
        }
    );
    assert_eq!(
        one("UNSUB 1 x\r\n"),
        Op::Unsub {
            sid: b("1"),
            max: Some(0)
        }
    );
    assert_eq!(
        one("MSG foo 9 r 2\r\nhi\r\n"),
        Op::Msg {
            subject: b("foo"),
            sid: b("9"),
            reply: Some(b("r")),
            payload: b("hi")
        }
    );
    assert_eq!(
        one("HMSG foo 9 16 18\r\nNATS/1.0 503\r\n\r\nhi\r\n"),
        Op::HMsg {
            subject: b("foo"),
            sid: b("9"),
            reply: None,
            headers: b("NATS/1.0 503\r\n\r\n"),
            payload: b("hi")
        }
    );
}

#[test]
fn case_and_separators() {
    assert_eq!(one("ping\r\n"), Op::Ping);
    assert_eq!(one("PiNg\n"), Op::Ping);
    assert_eq!(one("PING extra\r\n"), Op::Ping);
    assert_eq!(
        one("pub \t foo\t\t bar   3\r\nabc\r\n"),
        Op::Pub {
            subject: b("foo"),
            reply: Some(b("bar")),
            payload: b("abc")
        }
    );
    assert_eq!(
        one("sub\tfoo\t1\n"),
        Op::Sub {
            subject: b("foo"),
            queue: None,
            sid: b("1")
        }
    );
    assert_eq!(one("connect\t{}\r\n"), Op::Connect(b("{}")));
}

#[test]
fn unknown_operations() {
    assert_eq!(err("FOO\r\n"), ProtoError::UnknownOp);
    assert_eq!(err("PUBX foo 1\r\n"), ProtoError::UnknownOp);
    assert_eq!(err("PUB\r\n"), ProtoError::UnknownOp);
    // Early rejection without waiting for the newline.
    assert_eq!(err("HELLO"), ProtoError::UnknownOp);
    assert_eq!(err("x"), ProtoError::UnknownOp);
    // Payload not followed by CRLF.
    assert_eq!(err("PUB foo 3\r\nhello\r\n"), ProtoError::UnknownOp);
}

#[test]
fn bad_arguments_close_without_err_text() {
    for s in [
        "PUB foo\r\n",
        "PUB a b c 1\r\n",
        "PUB foo -1\r\n",
        "PUB foo 1x\r\n",
        "PUB foo 1234567890\r\n",
        "HPUB foo 10\r\n",
        "HPUB foo 20 10\r\n",
        "SUB foo\r\n",
        "SUB a b c d\r\n",
        "UNSUB\t \r\n",
        "UNSUB 1 2 3\r\n",
    ] {
        let e = err(s);
        assert!(matches!(e, ProtoError::BadArgs { .. }), "{s:?} gave {e:?}");
        assert_eq!(e.client_error_text(), None);
    }
}

#[test]
fn limits() {
    let limits = Limits {
        max_control_line: 16,
        max_payload: 4,
    };
    assert_eq!(
        parse_all(limits, b"PUB foo 5\r\n"),
        Err(ProtoError::MaxPayload { size: 5 })
    );
    assert!(parse_all(limits, b"PUB foo 4\r\nabcd\r\n").is_ok());
    assert_eq!(
        parse_all(limits, b"SUB aaaaaaaaaaaaaaaaaaaa 1\r\n"),
        Err(ProtoError::MaxControlLine)
    );
    // Without a newline too, once the arguments pass the limit.
    assert_eq!(
        parse_all(limits, b"SUB aaaaaaaaaaaaaaaaaaaaaa"),
        Err(ProtoError::MaxControlLine)
    );
    assert_eq!(
        ProtoError::MaxControlLine.client_error_text(),
        Some("maximum control line exceeded")
    );
}

#[test]
fn partial_input_waits() {
    let mut p = Parser::new(Limits::default());
    let mut buf = BytesMut::from(&b"PUB foo 5\r\nhel"[..]);
    assert_eq!(p.parse(&mut buf), Ok(None));
    assert_eq!(p.bytes_wanted(buf.len()), 4);
    buf.extend_from_slice(b"lo\r\nPI");
    assert!(matches!(p.parse(&mut buf), Ok(Some(Op::Pub { .. }))));
    assert_eq!(p.parse(&mut buf), Ok(None));
    buf.extend_from_slice(b"NG\r\n");
    assert_eq!(p.parse(&mut buf), Ok(Some(Op::Ping)));
    assert!(buf.is_empty());
}

fn token() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_-]{1,8}"
}

fn subject() -> impl Strategy<Value = String> {
    prop::collection::vec(token(), 1..4).prop_map(|t| t.join("."))
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..64)
}

fn op() -> impl Strategy<Value = Op> {
    let opt = |s: BoxedStrategy<String>| prop::option::of(s).prop_map(|o| o.map(Bytes::from));
    prop_oneof![
        Just(Op::Ping),
        Just(Op::Pong),
        Just(Op::Ok),
        "[ -~]{0,40}".prop_map(|s| Op::Err(Bytes::from(s.trim().to_owned()))),
        "\\{[ -~]{0,40}\\}".prop_map(|s| Op::Info(Bytes::from(s))),
        "\\{[ -~]{0,40}\\}".prop_map(|s| Op::Connect(Bytes::from(s))),
        (subject(), opt(subject().boxed()), payload()).prop_map(|(s, r, p)| Op::Pub {
            subject: s.into(),
            reply: r,
            payload: p.into()
        }),
        (subject(), opt(subject().boxed()), "[a-z]{1,5}", payload()).prop_map(|(s, r, v, p)| {
            let headers = Bytes::from(format!("NATS/1.0\r\nK: {v}\r\n\r\n"));
            Op::HPub {
                subject: s.into(),
                reply: r,
                headers,
                payload: p.into(),
            }
        }),
        (subject(), opt(token().boxed()), token()).prop_map(|(s, q, sid)| Op::Sub {
            subject: s.into(),
            queue: q,
            sid: sid.into()
        }),
        (token(), prop::option::of(1u64..1_000_000)).prop_map(|(sid, max)| Op::Unsub {
            sid: sid.into(),
            max
        }),
        (subject(), token(), opt(subject().boxed()), payload()).prop_map(|(s, sid, r, p)| {
            Op::Msg {
                subject: s.into(),
                sid: sid.into(),
                reply: r,
                payload: p.into(),
            }
        }),
        (subject(), token(), opt(subject().boxed()), payload()).prop_map(|(s, sid, r, p)| {
            Op::HMsg {
                subject: s.into(),
                sid: sid.into(),
                reply: r,
                headers: Bytes::from_static(b"NATS/1.0 503\r\n\r\n"),
                payload: p.into(),
            }
        }),
    ]
}

fn encode_all(ops: &[Op]) -> BytesMut {
    let mut out = BytesMut::new();
    for op in ops {
        encode(op, &mut out);
    }
    out
}

/// Feeds `data` in chunks ending at each cut, parsing after every chunk.
fn parse_chunked(data: &[u8], cuts: &[usize]) -> Vec<Op> {
    let mut parser = Parser::new(Limits::default());
    let mut buf = BytesMut::new();
    let mut ops = Vec::new();
    let mut last = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    points.sort_unstable();
    points.push(data.len());
    for p in points {
        buf.extend_from_slice(&data[last..p.max(last)]);
        last = p.max(last);
        while let Some(op) = parser.parse(&mut buf).expect("valid stream") {
            ops.push(op);
        }
    }
    assert!(buf.is_empty());
    ops
}

proptest! {
    #[test]
    fn encode_then_parse_is_identity(ops in prop::collection::vec(op(), 1..20)) {
        let wire = encode_all(&ops);
        prop_assert_eq!(parse_all(Limits::default(), &wire).unwrap(), ops);
    }

    #[test]
    fn any_split_parses_the_same(ops in prop::collection::vec(op(), 1..10),
                                 cuts in prop::collection::vec(any::<usize>(), 0..12)) {
        let wire = encode_all(&ops);
        prop_assert_eq!(parse_chunked(&wire, &cuts), ops);
    }

    #[test]
    fn byte_by_byte_parses_the_same(ops in prop::collection::vec(op(), 1..5)) {
        let wire = encode_all(&ops);
        let cuts: Vec<usize> = (0..wire.len()).collect();
        prop_assert_eq!(parse_chunked(&wire, &cuts), ops);
    }

    #[test]
    fn garbage_never_panics(data in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_all(Limits::default(), &data);
    }
}

/// Parses `chunks` fed one after another into one buffer.
fn parse_pieces(limits: Limits, chunks: &[&[u8]]) -> Result<Vec<Op>, ProtoError> {
    let mut parser = Parser::new(limits);
    let mut buf = BytesMut::new();
    let mut ops = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some(op) = parser.parse(&mut buf)? {
            ops.push(op);
        }
    }
    Ok(ops)
}

// Found by the `parser` fuzz target: a control line whose arguments are
// exactly at the limit was accepted whole but rejected when it arrived split
// after its CR, or in the middle of the separators after the verb, because
// the early (no newline yet) check counted the separators and the CR.
#[test]
fn control_line_limit_does_not_depend_on_splits() {
    let limits = Limits {
        max_control_line: 3,
        max_payload: 16,
    };
    let sub = Op::Sub {
        subject: b("a"),
        queue: None,
        sid: b("1"),
    };
    assert_eq!(parse_all(limits, b"SUB a 1\r\n"), Ok(vec![sub.clone()]));
    assert_eq!(
        parse_pieces(limits, &[b"SUB a 1\r", b"\n"]),
        Ok(vec![sub.clone()])
    );
    assert_eq!(parse_pieces(limits, &[b"SUB  a 1", b"\r\n"]), Ok(vec![sub]));
    let chunks: Vec<&[u8]> = b"PUB foo bar 0\r\n\r\n".chunks(1).collect();
    let limits = Limits {
        max_control_line: 9,
        ..limits
    };
    assert_eq!(
        parse_pieces(limits, &chunks),
        parse_all(limits, b"PUB foo bar 0\r\n\r\n")
    );
}

// A line without a newline must not be buffered without bound: whatever it
// would be rejected for once complete, it is rejected for as soon as the
// bytes that decide it have arrived.
#[test]
fn unterminated_lines_are_bounded() {
    let limits = Limits {
        max_control_line: 16,
        max_payload: 16,
    };
    let long = |head: &str, fill: u8| {
        let mut v = head.as_bytes().to_vec();
        v.resize(head.len() + 1000, fill);
        v
    };
    // Trailing junk after PING counts as its arguments, complete or not.
    assert_eq!(
        parse_all(limits, &[&long("PING", b'x')[..], b"\r\n"].concat()),
        Err(ProtoError::MaxControlLine)
    );
    assert_eq!(
        parse_all(limits, &long("PING", b'x')),
        Err(ProtoError::MaxControlLine)
    );
    // CONNECT needs no separator: what follows it is its (too long) argument.
    assert_eq!(
        parse_all(limits, &long("CONNECT", b'x')),
        Err(ProtoError::MaxControlLine)
    );
    // An endless run of separators after the verb.
    assert_eq!(
        parse_all(limits, &long("SUB", b' ')),
        Err(ProtoError::MaxControlLine)
    );
    assert_eq!(
        parse_all(limits, &[&long("SUB", b' ')[..], b"a 1\r\n"].concat()),
        Err(ProtoError::MaxControlLine)
    );
}

// nats-server reads INFO and CONNECT as prefixes: what follows the verb and
// any spaces or tabs is the argument, even with no separator at all.
#[test]
fn info_and_connect_need_no_separator() {
    assert_eq!(one("INFO{}\r\n"), Op::Info(b("{}")));
    assert_eq!(one("info\t {}\r\n"), Op::Info(b("{}")));
    assert_eq!(one("INFO\r\n"), Op::Info(b("")));
    assert_eq!(one("INFOX {}\r\n"), Op::Info(b("X {}")));
    assert_eq!(one("CONNECT{\"a\":1}\r\n"), Op::Connect(b("{\"a\":1}")));
    assert_eq!(one("CONNECTX {}\r\n"), Op::Connect(b("X {}")));
    assert_eq!(one("CONNECT\r\n"), Op::Connect(b("")));
    // The other verbs with arguments still need their separator.
    assert_eq!(err("SUBX foo 1\r\n"), ProtoError::UnknownOp);
    assert_eq!(err("-ERRx\r\n"), ProtoError::UnknownOp);
}

// A server refuses HPUB from a client that did not announce headers before
// it looks at the arguments, so no size error can come first.
#[test]
fn hpub_refused_when_not_allowed() {
    let limits = Limits {
        max_control_line: 64,
        max_payload: 16,
    };
    for line in [
        &b"HPUB foo 12 12\r\n"[..],
        b"HPUB foo 2 2000\r\n",
        b"HPUB foo x y\r\n",
        b"hpub foo\r\n",
    ] {
        let mut p = Parser::new(limits);
        p.set_hpub_allowed(false);
        let mut buf = BytesMut::from(line);
        assert_eq!(p.parse(&mut buf), Err(ProtoError::HeadersNotSupported));
        assert_eq!(ProtoError::HeadersNotSupported.client_error_text(), None);
    }
    // Only once the line is complete.
    let mut p = Parser::new(limits);
    p.set_hpub_allowed(false);
    let mut buf = BytesMut::from(&b"HPUB foo 12 12"[..]);
    assert_eq!(p.parse(&mut buf), Ok(None));
    // PUB and HMSG are unaffected, and allowing it again restores HPUB.
    let mut p = Parser::new(limits);
    p.set_hpub_allowed(false);
    let mut buf = BytesMut::from(&b"PUB a 1\r\nx\r\nHMSG a 1 12 12\r\nNATS/1.0\r\n\r\n\r\n"[..]);
    assert!(matches!(p.parse(&mut buf), Ok(Some(Op::Pub { .. }))));
    assert!(matches!(p.parse(&mut buf), Ok(Some(Op::HMsg { .. }))));
    p.set_hpub_allowed(true);
    let mut buf = BytesMut::from(&b"HPUB foo 12 12\r\nNATS/1.0\r\n\r\n\r\n"[..]);
    assert!(matches!(p.parse(&mut buf), Ok(Some(Op::HPub { .. }))));
}

// The byte after the payload must be CR and the next LF; each is checked as
// soon as it arrives, so a wrong one fails without waiting for more input.
#[test]
fn payload_terminator_checked_byte_by_byte() {
    let limits = Limits::default();
    for bad in [
        &b"PUB a 3\r\nab\r\n"[..],
        b"PUB a 2\r\nabX",
        b"PUB a 2\r\nab\rX",
        b"PUB a 2\r\nab\n",
        b"PUB a 0\r\n\n",
        b"HPUB a 12 12\r\nNATS/1.0\r\n\r\nX",
        b"MSG a 1 2\r\nab\r\r",
    ] {
        assert_eq!(
            parse_all(limits, bad),
            Err(ProtoError::UnknownOp),
            "{bad:?}"
        );
        let pieces: Vec<&[u8]> = bad.chunks(1).collect();
        assert_eq!(
            parse_pieces(limits, &pieces),
            Err(ProtoError::UnknownOp),
            "{bad:?} byte by byte"
        );
    }
    // A good first byte on its own keeps waiting.
    assert_eq!(parse_all(limits, b"PUB a 2\r\nab\r"), Ok(vec![]));
    assert_eq!(parse_all(limits, b"PUB a 2\r\nab"), Ok(vec![]));
}

/// Feeds `chunks` one after another; returns the operations and then either
/// the bytes left unconsumed or the error that stopped the parse.
fn outcome(limits: Limits, chunks: &[&[u8]]) -> (Vec<Op>, Result<Vec<u8>, ProtoError>) {
    let mut parser = Parser::new(limits);
    let mut buf = BytesMut::new();
    let mut ops = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match parser.parse(&mut buf) {
                Ok(Some(op)) => ops.push(op),
                Ok(None) => break,
                Err(e) => return (ops, Err(e)),
            }
        }
    }
    (ops, Ok(buf.to_vec()))
}

/// Streams built from protocol fragments, so that they reach payloads,
/// terminators, prefix verbs and limits far more often than random bytes.
fn protocol_soup() -> impl Strategy<Value = Vec<u8>> {
    let pieces: &[&[u8]] = &[
        b"PUB ",
        b"HPUB ",
        b"SUB ",
        b"MSG ",
        b"HMSG ",
        b"UNSUB ",
        b"INFO",
        b"CONNECT",
        b"PING",
        b"+OK",
        b"-ERR ",
        b"a ",
        b"1 ",
        b"2 ",
        b"12 ",
        b"0",
        b"\r",
        b"\n",
        b"\r\n",
        b"x",
        b"{}",
        b" ",
        b"\t",
        b"NATS/1.0\r\n\r\n",
    ];
    prop::collection::vec(prop::sample::select(pieces), 0..24).prop_map(|v| v.concat())
}

proptest! {
    // The fuzz target's split invariant, on protocol-shaped input: where a
    // stream is cut (or fed byte by byte) never changes what comes out, the
    // early payload-terminator check included.
    #[test]
    fn protocol_soup_parses_the_same_however_split(data in protocol_soup(),
                                                   cut in any::<usize>(),
                                                   small in any::<bool>()) {
        let limits = if small {
            Limits { max_control_line: 8, max_payload: 12 }
        } else {
            Limits::default()
        };
        let whole = outcome(limits, &[&data]);
        let (head, tail) = data.split_at(cut % (data.len() + 1));
        prop_assert_eq!(&outcome(limits, &[head, tail]), &whole);
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        prop_assert_eq!(&outcome(limits, &bytes), &whole);
    }
}
