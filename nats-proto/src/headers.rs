//! The `NATS/1.0` header block carried by HPUB and HMSG.
//!
//! The server forwards header blocks untouched; this type exists for the
//! places that must read or build one (no-responders status, tests, tools)
//! and to check a block's framing against its declared size.

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;

const VERSION_LINE: &[u8] = b"NATS/1.0";

/// A parsed header block: an optional inline status (`NATS/1.0 503`) with
/// its description, and header fields in order, names possibly repeated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    /// Three-digit status such as 503 (no responders) or 408, if present.
    pub status: Option<u16>,
    /// Text after the status, e.g. `No Responders`.
    pub description: Option<String>,
    /// Fields as `(name, value)`, in wire order, duplicates kept.
    pub fields: Vec<(String, String)>,
}

/// Why a header block is malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// The block does not start with `NATS/1.0`.
    MissingVersion,
    /// The block does not end with an empty line (`\r\n\r\n`).
    Unterminated,
    /// A field line without a `:`.
    BadField(String),
    /// The status after the version is not a three-digit number.
    BadStatus,
    /// Not valid UTF-8.
    NotUtf8,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::MissingVersion => f.write_str("header block does not start with NATS/1.0"),
            HeaderError::Unterminated => {
                f.write_str("header block is not terminated by an empty line")
            }
            HeaderError::BadField(l) => write!(f, "malformed header line: {l:?}"),
            HeaderError::BadStatus => f.write_str("malformed status code"),
            HeaderError::NotUtf8 => f.write_str("header block is not UTF-8"),
        }
    }
}

impl std::error::Error for HeaderError {}

impl Headers {
    /// An empty block (`NATS/1.0\r\n\r\n`).
    pub fn new() -> Self {
        Self::default()
    }

    /// A status-only block, as used for no-responders (503) replies.
    pub fn with_status(status: u16, description: Option<&str>) -> Self {
        Headers {
            status: Some(status),
            description: description.map(str::to_owned),
            fields: Vec::new(),
        }
    }

    /// Adds a field, keeping earlier ones with the same name.
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.fields.push((name.into(), value.into()));
        self
    }

    /// All values of `name`, compared case-sensitively as nats-server does.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Parses a complete block, exactly the bytes an HPUB/HMSG declares as headers.
    pub fn parse(block: &[u8]) -> Result<Headers, HeaderError> {
        let text = std::str::from_utf8(block).map_err(|_| HeaderError::NotUtf8)?;
        if !block.starts_with(VERSION_LINE) {
            return Err(HeaderError::MissingVersion);
        }
        let body = text
            .strip_suffix("\r\n\r\n")
            .ok_or(HeaderError::Unterminated)?;
        let mut lines = body.split("\r\n");
        let first = lines.next().unwrap_or_default();
        let rest = first[VERSION_LINE.len()..].trim_start();
        let mut headers = Headers::new();
        if !rest.is_empty() {
            let (code, desc) = match rest.split_once([' ', '\t']) {
                Some((c, d)) => (c, Some(d.trim())),
                None => (rest, None),
            };
            if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HeaderError::BadStatus);
            }
            headers.status = Some(code.parse().map_err(|_| HeaderError::BadStatus)?);
            headers.description = desc.filter(|d| !d.is_empty()).map(str::to_owned);
        }
        for l in lines {
            let (name, value) = l
                .split_once(':')
                .ok_or_else(|| HeaderError::BadField(l.to_owned()))?;
            headers
                .fields
                .push((name.trim().to_owned(), value.trim().to_owned()));
        }
        Ok(headers)
    }

    /// The wire form, ending with the blank line.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(64);
        out.put_slice(VERSION_LINE);
        if let Some(s) = self.status {
            out.put_slice(format!(" {s:03}").as_bytes());
            if let Some(d) = &self.description {
                out.put_u8(b' ');
                out.put_slice(d.as_bytes());
            }
        }
        out.put_slice(b"\r\n");
        for (n, v) in &self.fields {
            out.put_slice(n.as_bytes());
            out.put_slice(b": ");
            out.put_slice(v.as_bytes());
            out.put_slice(b"\r\n");
        }
        out.put_slice(b"\r\n");
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_repeated_fields() {
        let h =
            Headers::parse(b"NATS/1.0 503 No Responders\r\nA: 1\r\nA: 2\r\nB:x\r\n\r\n").unwrap();
        assert_eq!(h.status, Some(503));
        assert_eq!(h.description.as_deref(), Some("No Responders"));
        assert_eq!(h.get_all("A").collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(h.get_all("B").collect::<Vec<_>>(), ["x"]);
    }

    #[test]
    fn bare_status_and_empty_block() {
        assert_eq!(
            Headers::parse(b"NATS/1.0 503\r\n\r\n").unwrap(),
            Headers::with_status(503, None)
        );
        assert_eq!(Headers::parse(b"NATS/1.0\r\n\r\n").unwrap(), Headers::new());
    }

    #[test]
    fn malformed_blocks() {
        assert_eq!(
            Headers::parse(b"HTTP/1.1\r\n\r\n"),
            Err(HeaderError::MissingVersion)
        );
        assert_eq!(
            Headers::parse(b"NATS/1.0\r\nA: 1\r\n"),
            Err(HeaderError::Unterminated)
        );
        assert_eq!(
            Headers::parse(b"NATS/1.0 5x3\r\n\r\n"),
            Err(HeaderError::BadStatus)
        );
        assert!(matches!(
            Headers::parse(b"NATS/1.0\r\nnocolon\r\n\r\n"),
            Err(HeaderError::BadField(_))
        ));
    }

    #[test]
    fn round_trip() {
        let mut h = Headers::with_status(408, Some("Request Timeout"));
        h.append("K", "v1").append("K", "v2");
        assert_eq!(Headers::parse(&h.to_bytes()).unwrap(), h);
    }
}
