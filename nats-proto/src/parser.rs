//! Incremental parser: feed it a growing buffer, take operations out.
//!
//! The parser never copies: it splits complete frames off the caller's
//! `BytesMut` and hands out `Bytes` slices of them. An operation split across
//! reads at any byte boundary parses exactly as if it had arrived whole.
//! Errors carry what nats-server would do about them, so the server can answer
//! with the same `-ERR` text and the same close/keep-open choice.

use bytes::{Buf, BytesMut};
use std::fmt;
use std::ops::Range;

use crate::op::Op;

/// Size limits the parser enforces while reading, before payloads are buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest argument part of a control line, in bytes.
    pub max_control_line: usize,
    /// Largest message (headers plus payload), in bytes.
    pub max_payload: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_control_line: crate::DEFAULT_MAX_CONTROL_LINE,
            max_payload: crate::DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// Why a byte stream could not be parsed. Every variant is fatal for the
/// connection, as it is in nats-server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoError {
    /// Not a known verb, a verb without its separator, or a payload not
    /// followed by CRLF. nats-server answers `-ERR 'Unknown Protocol Operation'`.
    UnknownOp,
    /// The control line grew past `max_control_line`. nats-server answers
    /// `-ERR 'maximum control line exceeded'`.
    MaxControlLine,
    /// A declared size over `max_payload`. nats-server answers
    /// `-ERR 'Maximum Payload Violation'`.
    MaxPayload { size: usize },
    /// The verb was fine but its arguments were not (wrong count, bad size).
    /// nats-server logs it and closes the connection without an `-ERR`.
    BadArgs {
        verb: &'static str,
        reason: &'static str,
    },
    /// An `HPUB` line from a client that did not announce `headers` in its
    /// CONNECT (see [`Parser::set_hpub_allowed`]). nats-server refuses it
    /// before looking at its arguments and closes without an `-ERR`.
    HeadersNotSupported,
}

impl ProtoError {
    /// The `-ERR` text nats-server sends for this error, if it sends one.
    pub fn client_error_text(&self) -> Option<&'static str> {
        match self {
            ProtoError::UnknownOp => Some("Unknown Protocol Operation"),
            ProtoError::MaxControlLine => Some("maximum control line exceeded"),
            ProtoError::MaxPayload { .. } => Some("Maximum Payload Violation"),
            ProtoError::BadArgs { .. } | ProtoError::HeadersNotSupported => None,
        }
    }
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::UnknownOp => f.write_str("unknown protocol operation"),
            ProtoError::MaxControlLine => f.write_str("maximum control line exceeded"),
            ProtoError::MaxPayload { size } => write!(f, "maximum payload exceeded: {size}"),
            ProtoError::BadArgs { verb, reason } => write!(f, "{verb}: {reason}"),
            ProtoError::HeadersNotSupported => f.write_str("HPUB without headers support"),
        }
    }
}

impl std::error::Error for ProtoError {}

/// Which verbs carry a payload after their control line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MsgVerb {
    Pub,
    HPub,
    Msg,
    HMsg,
}

/// A parsed control line whose payload has not fully arrived yet. Ranges are
/// relative to the start of the frame (the buffer's start).
#[derive(Debug, Clone)]
struct PendingMsg {
    verb: MsgVerb,
    subject: Range<usize>,
    sid: Range<usize>,
    reply: Option<Range<usize>>,
    /// Where the payload (headers included) starts.
    body_start: usize,
    /// Header bytes at the start of the body (0 for PUB/MSG).
    header_len: usize,
    /// Body bytes (headers plus payload).
    total_len: usize,
}

impl PendingMsg {
    fn frame_len(&self) -> usize {
        self.body_start + self.total_len + 2
    }
}

/// Stateful, incremental NATS protocol parser.
#[derive(Debug, Clone)]
pub struct Parser {
    limits: Limits,
    pending: Option<PendingMsg>,
    /// Bytes of the buffer already searched for a newline.
    scanned: usize,
    /// Whether a complete `HPUB` line is parsed (true) or refused with
    /// [`ProtoError::HeadersNotSupported`].
    hpub_allowed: bool,
}

impl Default for Parser {
    fn default() -> Self {
        Parser::new(Limits::default())
    }
}

/// Every verb, upper case, with whether it needs a space or tab after it.
/// `PING`, `PONG` and `+OK` accept anything up to the newline, as nats-server
/// does; for `INFO` and `CONNECT` everything after the verb (and any spaces or
/// tabs) is the argument, so `INFO{}` is INFO and `CONNECTX {}` is a CONNECT
/// whose JSON is bad.
const VERBS: &[(&[u8], bool)] = &[
    (b"PUB", true),
    (b"HPUB", true),
    (b"SUB", true),
    (b"UNSUB", true),
    (b"MSG", true),
    (b"HMSG", true),
    (b"INFO", false),
    (b"CONNECT", false),
    (b"PING", false),
    (b"PONG", false),
    (b"+OK", false),
    (b"-ERR", true),
];

fn is_sep(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// nats-server's size rule: 1 to 9 ASCII digits, anything else is invalid.
fn parse_size(d: &[u8]) -> Option<usize> {
    if d.is_empty() || d.len() > 9 {
        return None;
    }
    let mut n = 0usize;
    for &b in d {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + (b - b'0') as usize;
    }
    Some(n)
}

/// Splits `line[from..]` on runs of spaces and tabs into at most `N` ranges;
/// returns the count found (which may exceed `N`, meaning too many).
fn split_args<const N: usize>(line: &[u8], from: usize, out: &mut [Range<usize>; N]) -> usize {
    let mut count = 0;
    let mut start: Option<usize> = None;
    for (i, &b) in line.iter().enumerate().skip(from) {
        if is_sep(b) {
            if let Some(s) = start.take() {
                if count < N {
                    out[count] = s..i;
                }
                count += 1;
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        if count < N {
            out[count] = s..line.len();
        }
        count += 1;
    }
    count
}

impl Parser {
    /// A parser enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Parser {
            limits,
            pending: None,
            scanned: 0,
            hpub_allowed: true,
        }
    }

    /// Whether `HPUB` is accepted. A server turns it off for a client until
    /// that client's CONNECT announces `headers`: nats-server then closes on
    /// any HPUB line, whatever its arguments say. On by default.
    pub fn set_hpub_allowed(&mut self, allowed: bool) {
        self.hpub_allowed = allowed;
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Changes the limits, e.g. once a client's account is known.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// How many more bytes must arrive before the next operation can
    /// complete, when that is known (a message body is being awaited).
    /// Readers use it to size their next read.
    pub fn bytes_wanted(&self, buffered: usize) -> usize {
        match &self.pending {
            Some(p) => p.frame_len().saturating_sub(buffered),
            None => 0,
        }
    }

    /// Takes the next complete operation off the front of `buf`.
    ///
    /// Returns `Ok(None)` when more bytes are needed; the bytes stay in `buf`.
    pub fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<Op>, ProtoError> {
        if self.pending.is_some() {
            return self.finish_msg(buf);
        }
        let nl = match memchr::memchr(b'\n', &buf[self.scanned..]) {
            Some(i) => self.scanned + i,
            None => {
                self.check_partial(buf)?;
                self.scanned = buf.len();
                return Ok(None);
            }
        };
        self.scanned = 0;
        let line_end = if nl > 0 && buf[nl - 1] == b'\r' {
            nl - 1
        } else {
            nl
        };
        let line = &buf[..line_end];
        let (verb, arg_start) = match_verb(line).ok_or(ProtoError::UnknownOp)?;
        self.check_line_len(verb, arg_start, line_end)?;
        let simple = |buf: &mut BytesMut, op: Op| {
            buf.advance(nl + 1);
            Ok(Some(op))
        };
        match verb {
            b"PING" => simple(buf, Op::Ping),
            b"PONG" => simple(buf, Op::Pong),
            b"+OK" => simple(buf, Op::Ok),
            b"INFO" | b"CONNECT" | b"-ERR" => {
                let frame = buf.split_to(nl + 1).freeze();
                let arg = frame.slice(arg_start..line_end);
                Ok(Some(match verb {
                    b"INFO" => Op::Info(arg),
                    b"CONNECT" => Op::Connect(arg),
                    _ => Op::Err(arg),
                }))
            }
            b"SUB" => {
                let mut a: [Range<usize>; 3] = Default::default();
                let n = split_args(line, arg_start, &mut a);
                let (subject, queue, sid) = match n {
                    2 => (a[0].clone(), None, a[1].clone()),
                    3 => (a[0].clone(), Some(a[1].clone()), a[2].clone()),
                    _ => return Err(bad("SUB", "wrong number of arguments")),
                };
                let frame = buf.split_to(nl + 1).freeze();
                Ok(Some(Op::Sub {
                    subject: frame.slice(subject),
                    queue: queue.map(|q| frame.slice(q)),
                    sid: frame.slice(sid),
                }))
            }
            b"UNSUB" => {
                let mut a: [Range<usize>; 2] = Default::default();
                let n = split_args(line, arg_start, &mut a);
                let max = match n {
                    1 => None,
                    2 => Some(parse_size(&line[a[1].clone()]).unwrap_or(0) as u64),
                    _ => return Err(bad("UNSUB", "wrong number of arguments")),
                };
                let frame = buf.split_to(nl + 1).freeze();
                Ok(Some(Op::Unsub {
                    sid: frame.slice(a[0].clone()),
                    max,
                }))
            }
            b"HPUB" if !self.hpub_allowed => Err(ProtoError::HeadersNotSupported),
            _ => {
                let pending = self.parse_msg_line(verb, line, arg_start, nl + 1)?;
                self.pending = Some(pending);
                self.finish_msg(buf)
            }
        }
    }

    /// Parses the arguments of PUB, HPUB, MSG and HMSG.
    fn parse_msg_line(
        &self,
        verb: &[u8],
        line: &[u8],
        arg_start: usize,
        body_start: usize,
    ) -> Result<PendingMsg, ProtoError> {
        let mut a: [Range<usize>; 5] = Default::default();
        let n = split_args(line, arg_start, &mut a);
        let (mv, name, with_sid, with_hdr) = match verb {
            b"PUB" => (MsgVerb::Pub, "PUB", false, false),
            b"HPUB" => (MsgVerb::HPub, "HPUB", false, true),
            b"MSG" => (MsgVerb::Msg, "MSG", true, false),
            _ => (MsgVerb::HMsg, "HMSG", true, true),
        };
        // Fixed arguments: subject, [sid], [header size], size; reply is optional.
        let fixed = 2 + with_sid as usize + with_hdr as usize;
        let has_reply = if n == fixed {
            false
        } else if n == fixed + 1 {
            true
        } else {
            return Err(bad(name, "wrong number of arguments"));
        };
        let mut i = 0;
        let mut next = || {
            i += 1;
            a[i - 1].clone()
        };
        let subject = next();
        let sid = if with_sid { next() } else { 0..0 };
        let reply = if has_reply { Some(next()) } else { None };
        let header_len = if with_hdr {
            parse_size(&line[next()]).ok_or(bad(name, "bad or missing header size"))?
        } else {
            0
        };
        let total_len = parse_size(&line[next()]).ok_or(bad(name, "bad or missing size"))?;
        if header_len > total_len {
            return Err(bad(name, "header size larger than total size"));
        }
        if total_len > self.limits.max_payload {
            return Err(ProtoError::MaxPayload { size: total_len });
        }
        Ok(PendingMsg {
            verb: mv,
            subject,
            sid,
            reply,
            body_start,
            header_len,
            total_len,
        })
    }

    /// Completes a message whose control line has been parsed, once its body
    /// and trailing CRLF are buffered.
    fn finish_msg(&mut self, buf: &mut BytesMut) -> Result<Option<Op>, ProtoError> {
        let p = self.pending.as_ref().expect("pending message");
        let frame_len = p.frame_len();
        // Check each terminator byte as soon as it is visible, like
        // nats-server: a wrong byte right after the payload fails at once,
        // without waiting for the rest of a CRLF that will never come.
        let term = &buf[(frame_len - 2).min(buf.len())..frame_len.min(buf.len())];
        if term.iter().zip(b"\r\n").any(|(got, want)| got != want) {
            return Err(ProtoError::UnknownOp);
        }
        if buf.len() < frame_len {
            return Ok(None);
        }
        let p = self.pending.take().expect("pending message");
        let frame = buf.split_to(frame_len).freeze();
        let body_end = p.body_start + p.total_len;
        let split = p.body_start + p.header_len;
        let subject = frame.slice(p.subject);
        let reply = p.reply.map(|r| frame.slice(r));
        let payload = frame.slice(split..body_end);
        Ok(Some(match p.verb {
            MsgVerb::Pub => Op::Pub {
                subject,
                reply,
                payload,
            },
            MsgVerb::HPub => Op::HPub {
                subject,
                reply,
                headers: frame.slice(p.body_start..split),
                payload,
            },
            MsgVerb::Msg => Op::Msg {
                subject,
                sid: frame.slice(p.sid),
                reply,
                payload,
            },
            MsgVerb::HMsg => Op::HMsg {
                subject,
                sid: frame.slice(p.sid),
                reply,
                headers: frame.slice(p.body_start..split),
                payload,
            },
        }))
    }

    /// The control line limit, applied alike to complete and partial lines
    /// (`end` excludes the CR of CRLF): the arguments may not pass it, nor
    /// may the run of separators before them, so that a line still waiting
    /// for its newline is never buffered without bound.
    fn check_line_len(&self, verb: &[u8], arg_start: usize, end: usize) -> Result<(), ProtoError> {
        let max = self.limits.max_control_line;
        if end - arg_start > max || arg_start - verb.len() > max {
            return Err(ProtoError::MaxControlLine);
        }
        Ok(())
    }

    /// Rejects a line without its newline as early as nats-server does: a
    /// byte that cannot continue any verb, or arguments past the limit.
    ///
    /// It measures exactly what the complete line will be measured by, so a
    /// stream is accepted or rejected the same however it is split: a line
    /// rejected here would be rejected, with the same error, once complete.
    fn check_partial(&self, buf: &[u8]) -> Result<(), ProtoError> {
        // A final CR may be the start of the CRLF, which is never counted.
        let line = buf.strip_suffix(b"\r").unwrap_or(buf);
        match match_verb(line) {
            Some((verb, arg_start)) => self.check_line_len(verb, arg_start, line.len()),
            // Not a verb yet, but it may still become one ("SU", or "SUB"
            // awaiting its separator).
            None if VERBS.iter().any(|(v, _)| {
                line.len() <= v.len() && v[..line.len()].eq_ignore_ascii_case(line)
            }) =>
            {
                Ok(())
            }
            None => Err(ProtoError::UnknownOp),
        }
    }
}

fn bad(verb: &'static str, reason: &'static str) -> ProtoError {
    ProtoError::BadArgs { verb, reason }
}

/// Identifies the verb of a complete line; returns it (upper case) and where
/// its arguments start.
fn match_verb(line: &[u8]) -> Option<(&'static [u8], usize)> {
    for &(verb, needs_sep) in VERBS {
        if line.len() < verb.len() || !line[..verb.len()].eq_ignore_ascii_case(verb) {
            continue;
        }
        let rest = &line[verb.len()..];
        if needs_sep {
            match rest.first() {
                Some(&b) if is_sep(b) => {}
                _ => continue,
            }
        }
        let skip = rest.iter().take_while(|&&b| is_sep(b)).count();
        return Some((verb, verb.len() + skip));
    }
    None
}

/// Convenience for tests and tools: parses every complete operation in `data`.
pub fn parse_all(limits: Limits, data: &[u8]) -> Result<Vec<Op>, ProtoError> {
    let mut parser = Parser::new(limits);
    let mut buf = BytesMut::from(data);
    let mut ops = Vec::new();
    while let Some(op) = parser.parse(&mut buf)? {
        ops.push(op);
    }
    Ok(ops)
}
