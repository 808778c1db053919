//! Encoders: typed operations and message frames to wire bytes.
//!
//! The `write_*` functions append straight into an output buffer so the
//! server can build a subscriber's `MSG` frame without intermediate
//! allocations; [`encode`] covers every [`Op`] for clients and tests.

use bytes::{BufMut, BytesMut};

use crate::op::Op;

/// Appends a decimal number without allocating.
#[inline]
pub fn put_usize(out: &mut BytesMut, mut n: usize) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&tmp[i..]);
}

/// Appends any message frame: `VERB subject [sid] [reply] [hdr_len] total\r\n`,
/// then headers and payload and CRLF. The four message verbs differ only in
/// which of the optional arguments they carry.
#[inline]
fn write_frame(
    out: &mut BytesMut,
    verb: &[u8],
    subject: &[u8],
    sid: Option<&[u8]>,
    reply: Option<&[u8]>,
    headers: Option<&[u8]>,
    payload: &[u8],
) {
    let hdr_len = headers.map_or(0, <[u8]>::len);
    out.reserve(
        verb.len()
            + subject.len()
            + sid.map_or(0, |s| s.len() + 1)
            + reply.map_or(0, |r| r.len() + 1)
            + hdr_len
            + payload.len()
            + 32,
    );
    out.put_slice(verb);
    out.put_slice(subject);
    out.put_u8(b' ');
    for arg in [sid, reply].into_iter().flatten() {
        out.put_slice(arg);
        out.put_u8(b' ');
    }
    if headers.is_some() {
        put_usize(out, hdr_len);
        out.put_u8(b' ');
    }
    put_usize(out, hdr_len + payload.len());
    out.put_slice(b"\r\n");
    if let Some(h) = headers {
        out.put_slice(h);
    }
    out.put_slice(payload);
    out.put_slice(b"\r\n");
}

/// Appends `MSG subject sid [reply] size\r\npayload\r\n`.
#[inline]
pub fn write_msg(
    out: &mut BytesMut,
    subject: &[u8],
    sid: &[u8],
    reply: Option<&[u8]>,
    payload: &[u8],
) {
    write_frame(out, b"MSG ", subject, Some(sid), reply, None, payload);
}

/// Appends `HMSG subject sid [reply] hdr_len total_len\r\nheaders payload\r\n`.
#[inline]
pub fn write_hmsg(
    out: &mut BytesMut,
    subject: &[u8],
    sid: &[u8],
    reply: Option<&[u8]>,
    headers: &[u8],
    payload: &[u8],
) {
    write_frame(
        out,
        b"HMSG ",
        subject,
        Some(sid),
        reply,
        Some(headers),
        payload,
    );
}

/// Appends `PUB subject [reply] size\r\npayload\r\n`.
pub fn write_pub(out: &mut BytesMut, subject: &[u8], reply: Option<&[u8]>, payload: &[u8]) {
    write_frame(out, b"PUB ", subject, None, reply, None, payload);
}

/// Appends `HPUB subject [reply] hdr_len total_len\r\nheaders payload\r\n`.
pub fn write_hpub(
    out: &mut BytesMut,
    subject: &[u8],
    reply: Option<&[u8]>,
    headers: &[u8],
    payload: &[u8],
) {
    write_frame(out, b"HPUB ", subject, None, reply, Some(headers), payload);
}

/// Appends `-ERR 'text'\r\n`.
pub fn write_err(out: &mut BytesMut, text: &str) {
    out.put_slice(b"-ERR '");
    out.put_slice(text.as_bytes());
    out.put_slice(b"'\r\n");
}

/// Appends any operation in its canonical form (upper-case verb, single spaces, CRLF).
pub fn encode(op: &Op, out: &mut BytesMut) {
    match op {
        Op::Info(json) => line(out, b"INFO ", json),
        Op::Connect(json) => line(out, b"CONNECT ", json),
        Op::Pub {
            subject,
            reply,
            payload,
        } => write_pub(out, subject, reply.as_deref(), payload),
        Op::HPub {
            subject,
            reply,
            headers,
            payload,
        } => write_hpub(out, subject, reply.as_deref(), headers, payload),
        Op::Sub {
            subject,
            queue,
            sid,
        } => {
            out.put_slice(b"SUB ");
            out.put_slice(subject);
            out.put_u8(b' ');
            if let Some(q) = queue {
                out.put_slice(q);
                out.put_u8(b' ');
            }
            out.put_slice(sid);
            out.put_slice(b"\r\n");
        }
        Op::Unsub { sid, max } => {
            out.put_slice(b"UNSUB ");
            out.put_slice(sid);
            if let Some(m) = max {
                out.put_u8(b' ');
                put_usize(out, *m as usize);
            }
            out.put_slice(b"\r\n");
        }
        Op::Msg {
            subject,
            sid,
            reply,
            payload,
        } => write_msg(out, subject, sid, reply.as_deref(), payload),
        Op::HMsg {
            subject,
            sid,
            reply,
            headers,
            payload,
        } => write_hmsg(out, subject, sid, reply.as_deref(), headers, payload),
        Op::Ping => out.put_slice(b"PING\r\n"),
        Op::Pong => out.put_slice(b"PONG\r\n"),
        Op::Ok => out.put_slice(b"+OK\r\n"),
        Op::Err(text) => line(out, b"-ERR ", text),
    }
}

fn line(out: &mut BytesMut, verb: &[u8], arg: &[u8]) {
    out.put_slice(verb);
    out.put_slice(arg);
    out.put_slice(b"\r\n");
}
