//! Counts `MSG` frames in a byte stream without building operations.
//!
//! A fanout subscriber on a two-core machine has to read as many bytes as
//! the server writes, so it cannot afford a full parse per message. The
//! counter compares each frame against the one header it expects and skips
//! the whole frame; anything else (another subject, `HMSG`, `PING`, a frame
//! split across reads) goes through a small line scanner. Tests check it
//! against `nats_proto::Parser`.

/// The longest control line accepted before the stream is declared garbage.
const MAX_LINE: usize = 64 * 1024;

/// What one call to [`MsgCounter::feed`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fed {
    /// Bytes consumed from the front of the input; the rest is an
    /// incomplete control line to be fed again with more bytes.
    pub consumed: usize,
    /// Messages whose header was seen.
    pub msgs: u64,
    /// Server PINGs that need a PONG.
    pub pings: u32,
}

/// Incremental `MSG` counter for one subscription.
#[derive(Debug)]
pub(crate) struct MsgCounter {
    /// `MSG subject sid size\r\n` exactly as the server is expected to send it.
    header: Vec<u8>,
    /// Header plus payload plus trailing CRLF.
    frame_len: usize,
    /// Payload (and CRLF) bytes of the current message still to skip.
    skip: usize,
}

impl MsgCounter {
    /// A counter whose fast path recognises `MSG subject sid size`.
    pub fn new(subject: &str, sid: &str, size: usize) -> Self {
        let header = format!("MSG {subject} {sid} {size}\r\n").into_bytes();
        let frame_len = header.len() + size + 2;
        MsgCounter {
            header,
            frame_len,
            skip: 0,
        }
    }

    /// Consumes as many complete items from `buf` as possible.
    pub fn feed(&mut self, buf: &[u8]) -> Result<Fed, String> {
        let mut fed = Fed::default();
        let mut i = 0;
        if self.skip > 0 {
            let n = self.skip.min(buf.len());
            self.skip -= n;
            i = n;
            if self.skip > 0 {
                fed.consumed = i;
                return Ok(fed);
            }
        }
        let hlen = self.header.len();
        loop {
            let rest = &buf[i..];
            if rest.len() >= self.frame_len
                && rest[..hlen] == self.header[..]
                && rest[self.frame_len - 2..self.frame_len] == *b"\r\n"
            {
                i += self.frame_len;
                fed.msgs += 1;
                continue;
            }
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                if rest.len() > MAX_LINE {
                    return Err("control line too long in server output".into());
                }
                break;
            };
            let line = &rest[..nl];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            i += nl + 1;
            let verb_end = line
                .iter()
                .position(|&b| b == b' ' || b == b'\t')
                .unwrap_or(line.len());
            let verb = &line[..verb_end];
            if verb.eq_ignore_ascii_case(b"MSG") || verb.eq_ignore_ascii_case(b"HMSG") {
                // The last argument is the payload size (total size for HMSG).
                let size = line
                    .rsplit(|&b| b == b' ' || b == b'\t')
                    .next()
                    .and_then(|s| std::str::from_utf8(s).ok())
                    .and_then(|s| s.parse::<usize>().ok())
                    .ok_or_else(|| {
                        format!("bad message header {:?}", String::from_utf8_lossy(line))
                    })?;
                fed.msgs += 1;
                let want = size + 2;
                let n = want.min(buf.len() - i);
                i += n;
                if n < want {
                    self.skip = want - n;
                    break;
                }
            } else if verb.eq_ignore_ascii_case(b"PING") {
                fed.pings += 1;
            } else if verb.eq_ignore_ascii_case(b"-ERR") {
                return Err(format!(
                    "server error: {}",
                    String::from_utf8_lossy(&line[verb_end..]).trim()
                ));
            } else if verb.eq_ignore_ascii_case(b"PONG")
                || verb.eq_ignore_ascii_case(b"+OK")
                || verb.eq_ignore_ascii_case(b"INFO")
            {
            } else {
                return Err(format!(
                    "unexpected line from server: {:?}",
                    String::from_utf8_lossy(line)
                ));
            }
        }
        fed.consumed = i;
        Ok(fed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use nats_proto::{encode, Limits, Op, Parser};

    /// A server-like stream: expected frames, other subjects, HMSG, PING, +OK.
    fn stream() -> (Vec<u8>, u64, u32) {
        let mut out = BytesMut::new();
        let mut msgs = 0;
        let mut pings = 0;
        for i in 0..500usize {
            let payload = [b'x'; 16];
            match i % 7 {
                0 => {
                    encode::write_msg(
                        &mut out,
                        b"other.subj",
                        b"9",
                        Some(b"r.x"),
                        &payload[..i % 5],
                    );
                    msgs += 1;
                }
                1 => {
                    encode::write_hmsg(
                        &mut out,
                        b"bench.s",
                        b"1",
                        None,
                        b"NATS/1.0\r\n\r\n",
                        b"hi",
                    );
                    msgs += 1;
                }
                2 if i % 3 == 0 => {
                    out.extend_from_slice(b"PING\r\n");
                    pings += 1;
                }
                3 if i % 2 == 0 => out.extend_from_slice(b"+OK\r\n"),
                _ => {
                    // Payload containing CRLF and "MSG" to trip a naive scanner.
                    let p = b"MSG a 1 3\r\nxyz\r\n";
                    encode::write_msg(&mut out, b"bench.s", b"1", None, p);
                    msgs += 1;
                }
            }
        }
        (out.to_vec(), msgs, pings)
    }

    fn count_in_chunks(data: &[u8], chunk: usize) -> (u64, u32) {
        let mut c = MsgCounter::new("bench.s", "1", 16);
        let mut buf: Vec<u8> = Vec::new();
        let (mut msgs, mut pings) = (0, 0);
        for piece in data.chunks(chunk) {
            buf.extend_from_slice(piece);
            let fed = c.feed(&buf).unwrap();
            msgs += fed.msgs;
            pings += fed.pings;
            buf.drain(..fed.consumed);
        }
        assert!(
            buf.is_empty(),
            "left over: {:?}",
            String::from_utf8_lossy(&buf)
        );
        (msgs, pings)
    }

    #[test]
    fn agrees_with_parser_at_any_split() {
        let (data, msgs, pings) = stream();
        let ops = nats_proto::parser::parse_all(Limits::default(), &data).unwrap();
        let parsed = ops
            .iter()
            .filter(|o| matches!(o, Op::Msg { .. } | Op::HMsg { .. }))
            .count() as u64;
        assert_eq!(parsed, msgs);
        for chunk in [1, 2, 3, 7, 16, 33, 100, 4096, data.len()] {
            assert_eq!(
                count_in_chunks(&data, chunk),
                (msgs, pings),
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn fast_path_counts_expected_frames() {
        let mut out = BytesMut::new();
        for _ in 0..1000 {
            encode::write_msg(&mut out, b"bench.s", b"1", None, &[7u8; 16]);
        }
        let mut c = MsgCounter::new("bench.s", "1", 16);
        let fed = c.feed(&out).unwrap();
        assert_eq!((fed.msgs, fed.consumed), (1000, out.len()));
        // And the parser agrees on the same bytes.
        let mut p = Parser::new(Limits::default());
        let mut b = out.clone();
        let mut n = 0;
        while p.parse(&mut b).unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 1000);
    }

    #[test]
    fn err_is_reported() {
        let mut c = MsgCounter::new("s", "1", 1);
        let e = c.feed(b"-ERR 'Slow Consumer'\r\n").unwrap_err();
        assert!(e.contains("Slow Consumer"), "{e}");
    }
}
