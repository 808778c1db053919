//! Parsed config values, their source positions, and the typed accessors the
//! option mapping uses to turn them into server settings.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::ConfigError;

/// Where a key or value starts in the config text (1-based line and column,
/// columns counted in characters), so problems can be reported precisely even
/// when the value came from an included file. The `Default` (line 0,
/// column 0, no file) means "no position" and is displayed without one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Pos {
    /// 1-based line number.
    pub line: u32,
    /// 1-based column, in characters.
    pub column: u32,
    /// The file the text came from; `None` for `parse_str` input.
    pub file: Option<Arc<str>>,
}

impl Pos {
    /// A position without a file, mostly useful in tests and for values built by hand.
    pub fn new(line: u32, column: u32) -> Self {
        Pos {
            line,
            column,
            file: None,
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{file}:{}:{}", self.line, self.column),
            None => write!(f, "{}:{}", self.line, self.column),
        }
    }
}

/// A parsed config value together with where it was written, so the option
/// mapping can point at the offending text when a value is unusable.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    /// What was parsed.
    pub kind: ValueKind,
    /// Where it was written (for `$VAR` references: where the reference was written).
    pub pos: Pos,
}

/// The value types nats-server's config grammar produces.
///
/// There is no duration or datetime variant because the grammar has none:
/// durations are strings (`"2m"`) or bare seconds, interpreted by
/// [`Value::as_duration`]; ISO 8601 Zulu datetimes (`2016-05-04T18:53:41Z`)
/// are kept verbatim as strings.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueKind {
    /// Quoted or unquoted text (also IP:port forms, `10s`-style words, datetimes).
    String(String),
    /// A whole number, with any size suffix (`1MB`, `64k`) already applied.
    Integer(i64),
    /// A number with a decimal point.
    Float(f64),
    /// `true`/`false`/`yes`/`no`/`on`/`off`, unquoted, any letter case.
    Bool(bool),
    /// `[a, b, c]`.
    Array(Vec<Value>),
    /// `{ key: value ... }` (and the top level of a file).
    Map(Map),
}

impl ValueKind {
    /// A short human name for the type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            ValueKind::String(_) => "string",
            ValueKind::Integer(_) => "integer",
            ValueKind::Float(_) => "float",
            ValueKind::Bool(_) => "boolean",
            ValueKind::Array(_) => "array",
            ValueKind::Map(_) => "map",
        }
    }
}

/// One `key: value` pair of a [`Map`], keeping the key's own position so an
/// unknown or misplaced key can be reported where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The key exactly as written (quotes removed, case preserved).
    pub key: String,
    /// Where the key starts.
    pub key_pos: Pos,
    /// The value assigned to the key.
    pub value: Value,
    /// True when a later `$key` reference read this entry. nats-server does
    /// not report such keys as unknown fields (they are variable definitions),
    /// so the option mapping should skip them instead of rejecting them.
    pub used_as_variable: bool,
}

/// An ordered map of config keys to values.
///
/// Order is the order of (last) definition; defining the same key again
/// replaces the earlier entry, as nats-server does. nats-server matches option
/// names case-insensitively, so [`Map::get`] does too; variables (`$name`) are
/// matched exactly.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Map {
    entries: Vec<Entry>,
}

impl Map {
    /// An empty map.
    pub fn new() -> Self {
        Map::default()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in definition order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Iterates over the entries in definition order.
    pub fn iter(&self) -> std::slice::Iter<'_, Entry> {
        self.entries.iter()
    }

    /// The keys in definition order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.key.as_str())
    }

    /// Case-insensitive lookup, because nats-server option names are
    /// case-insensitive. If several keys differ only in case, the one defined
    /// last wins.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entry(key).map(|e| &e.value)
    }

    /// Case-insensitive lookup of the whole entry (key position included).
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.key.eq_ignore_ascii_case(key))
    }

    /// Case-sensitive lookup, the way `$variable` references resolve.
    pub fn get_exact(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|e| e.key == key).map(|e| &e.value)
    }

    /// True when [`Map::get`] would find the key.
    pub fn contains_key(&self, key: &str) -> bool {
        self.entry(key).is_some()
    }

    /// Adds an entry; an existing entry with exactly the same key is removed
    /// first, so the newest definition wins and sits last.
    pub fn insert(&mut self, entry: Entry) {
        self.entries.retain(|e| e.key != entry.key);
        self.entries.push(entry);
    }

    pub(crate) fn entry_exact_mut(&mut self, key: &str) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.key == key)
    }
}

impl<'a> IntoIterator for &'a Map {
    type Item = &'a Entry;
    type IntoIter = std::slice::Iter<'a, Entry>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter()
    }
}

impl IntoIterator for Map {
    type Item = Entry;
    type IntoIter = std::vec::IntoIter<Entry>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl Value {
    /// Builds a value; mostly for tests and synthesized defaults.
    pub fn new(kind: ValueKind, pos: Pos) -> Self {
        Value { kind, pos }
    }

    /// An error located at this value, for the option mapping's own checks
    /// (e.g. "port out of range").
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::at(&self.pos, message)
    }

    fn type_error(&self, expected: &str) -> ConfigError {
        let found = match &self.kind {
            ValueKind::String(s) => format!("string \"{}\"", s.escape_debug()),
            ValueKind::Integer(i) => format!("integer {i}"),
            ValueKind::Float(f) => format!("float {f}"),
            ValueKind::Bool(b) => format!("boolean {b}"),
            other => other.type_name().to_string(),
        };
        self.error(format!("expected {expected}, found {found}"))
    }

    /// The text of a string value. Other types are an error, as in
    /// nats-server (an unquoted `true` is a boolean, not a string).
    pub fn as_str(&self) -> Result<&str, ConfigError> {
        match &self.kind {
            ValueKind::String(s) => Ok(s),
            _ => Err(self.type_error("a string")),
        }
    }

    /// An integer value (size suffixes already applied).
    pub fn as_i64(&self) -> Result<i64, ConfigError> {
        match self.kind {
            ValueKind::Integer(i) => Ok(i),
            _ => Err(self.type_error("an integer")),
        }
    }

    /// A number as seconds-like float: floats and integers both accepted,
    /// as nats-server does for e.g. `authorization { timeout }`.
    pub fn as_f64(&self) -> Result<f64, ConfigError> {
        match self.kind {
            ValueKind::Float(f) => Ok(f),
            ValueKind::Integer(i) => Ok(i as f64),
            _ => Err(self.type_error("a number")),
        }
    }

    /// A boolean (`true/false/yes/no/on/off`, unquoted). A quoted `"true"` is
    /// a string and rejected, matching nats-server.
    pub fn as_bool(&self) -> Result<bool, ConfigError> {
        match self.kind {
            ValueKind::Bool(b) => Ok(b),
            _ => Err(self.type_error("a boolean (true/false, yes/no, on/off)")),
        }
    }

    /// A byte size.
    ///
    /// Integers are taken as they are: unquoted size suffixes were already
    /// applied by the parser with nats-server's meaning (`k`/`m`/`g`/`t`/`p`/`e`
    /// are powers of 1000; `kb`/`ki`/`kib`, `mb`/`mi`/`mib`, ... are powers of
    /// 1024; any letter case). Strings follow nats-server's storage-size rule:
    /// empty means 0, otherwise a number followed by exactly one of `K`, `M`,
    /// `G`, `T` (uppercase, powers of 1024), so `"1G"` is 2^30 while the
    /// unquoted `1G` is 10^9.
    pub fn as_size_bytes(&self) -> Result<i64, ConfigError> {
        match &self.kind {
            ValueKind::Integer(i) => Ok(*i),
            ValueKind::String(s) => parse_storage_size(s).map_err(|m| self.error(m)),
            _ => {
                Err(self.type_error("a size (integer like 1048576 or 1MB, or string like \"1G\")"))
            }
        }
    }

    /// A duration.
    ///
    /// Strings use Go's `time.ParseDuration` syntax, as nats-server does:
    /// `"2m"`, `"10s"`, `"500ms"`, `"1h30m"`, `"1.5s"`, units `ns us µs ms s m h`.
    /// Bare integers are seconds (nats-server's legacy form, e.g.
    /// `ping_interval: 120`); floats are fractional seconds. Negative
    /// durations are rejected.
    pub fn as_duration(&self) -> Result<Duration, ConfigError> {
        match &self.kind {
            ValueKind::String(s) => parse_go_duration(s)
                .map_err(|m| self.error(format!("invalid duration \"{s}\": {m}"))),
            ValueKind::Integer(i) => u64::try_from(*i)
                .map(Duration::from_secs)
                .map_err(|_| self.error("durations cannot be negative")),
            ValueKind::Float(f) => {
                if *f < 0.0 {
                    return Err(self.error("durations cannot be negative"));
                }
                Duration::try_from_secs_f64(*f)
                    .map_err(|_| self.error(format!("invalid duration of {f} seconds")))
            }
            _ => Err(self.type_error("a duration (e.g. \"2m\", \"500ms\" or seconds)")),
        }
    }

    /// The elements of an array.
    pub fn as_array(&self) -> Result<&[Value], ConfigError> {
        match &self.kind {
            ValueKind::Array(items) => Ok(items),
            _ => Err(self.type_error("an array")),
        }
    }

    /// The entries of a map (a `{ ... }` block).
    pub fn as_map(&self) -> Result<&Map, ConfigError> {
        match &self.kind {
            ValueKind::Map(m) => Ok(m),
            _ => Err(self.type_error("a map")),
        }
    }
}

/// nats-server's rule for sizes given as strings (JetStream storage limits).
fn parse_storage_size(s: &str) -> Result<i64, String> {
    if s.is_empty() {
        return Ok(0);
    }
    let bad = || {
        format!("invalid size \"{s}\": sizes given as strings must be a number followed by K, M, G or T")
    };
    let (num, shift) = if let Some(n) = s.strip_suffix('K') {
        (n, 10)
    } else if let Some(n) = s.strip_suffix('M') {
        (n, 20)
    } else if let Some(n) = s.strip_suffix('G') {
        (n, 30)
    } else if let Some(n) = s.strip_suffix('T') {
        (n, 40)
    } else {
        return Err(bad());
    };
    let n: i64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(1i64 << shift)
        .ok_or_else(|| format!("size \"{s}\" is out of range"))
}

/// Parses Go `time.ParseDuration` syntax: an optionally signed sequence of
/// decimal numbers, each with an optional fraction and a required unit.
pub(crate) fn parse_go_duration(s: &str) -> Result<Duration, String> {
    const LIMIT: u128 = i64::MAX as u128; // Go durations are int64 nanoseconds.
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.bytes().take_while(u8::is_ascii_digit).count();
                a.split_at(n)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err("expected a number".into());
        }
        let unit_len = after
            .char_indices()
            .find(|&(_, c)| c == '.' || c.is_ascii_digit())
            .map_or(after.len(), |(i, _)| i);
        let (unit, after) = after.split_at(unit_len);
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err("missing unit (use ns, us, ms, s, m or h)".into()),
            other => {
                return Err(format!(
                    "unknown unit \"{other}\" (use ns, us, ms, s, m or h)"
                ))
            }
        };
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part
                .parse()
                .map_err(|_| "number out of range".to_string())?
        };
        // Keep at most 18 fraction digits; further digits are below 1ns anyway.
        let frac_digits = &frac_part[..frac_part.len().min(18)];
        let frac_nanos = if frac_digits.is_empty() {
            0
        } else {
            let f: u128 = frac_digits
                .parse()
                .map_err(|_| "bad fraction".to_string())?;
            f * nanos_per_unit / 10u128.pow(frac_digits.len() as u32)
        };
        total = whole
            .checked_mul(nanos_per_unit)
            .and_then(|v| v.checked_add(frac_nanos))
            .and_then(|v| v.checked_add(total))
            .filter(|&v| v <= LIMIT)
            .ok_or_else(|| "duration out of range".to_string())?;
        rest = after;
    }
    if neg && total > 0 {
        return Err("durations cannot be negative".into());
    }
    Ok(Duration::from_nanos(total as u64))
}
