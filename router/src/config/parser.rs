//! A hand-written single-pass parser for nats-server's config syntax.
//!
//! It reproduces the observable behaviour of nats-server's lexer (value
//! typing, terminators, include and variable rules) so existing config files
//! parse to the same values, while reporting every error with a position.
//! Where nats-server silently produces garbage (e.g. `key: ;`, a map key with
//! no value, an unknown size suffix) this parser reports an error instead.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::value::{Entry, Map, Pos, Value, ValueKind};
use super::ConfigError;

/// Deepest include nesting accepted; guards against runaway recursion.
const MAX_INCLUDE_DEPTH: usize = 32;

/// State shared by a parser and the sub-parsers it starts for included files
/// and environment-variable values.
#[derive(Default)]
pub(crate) struct Shared {
    /// Environment variables whose values are being parsed (cycle detection).
    env_in_progress: Vec<String>,
    /// Files currently being parsed (cycle detection), canonicalized if possible.
    include_chain: Vec<PathBuf>,
}

impl Shared {
    pub(crate) fn with_file(path: &Path) -> Self {
        Shared {
            env_in_progress: Vec::new(),
            include_chain: vec![canonical(path)],
        }
    }
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

pub(crate) struct Parser<'s> {
    chars: Vec<char>,
    i: usize,
    line: u32,
    col: u32,
    file: Option<Arc<str>>,
    /// Directory that relative include paths are resolved against.
    base_dir: PathBuf,
    /// Maps being built, outermost first; `$name` looks through them innermost first.
    scopes: Vec<Map>,
    shared: &'s mut Shared,
}

fn is_nl(c: char) -> bool {
    c == '\n' || c == '\r'
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Characters that end an unquoted string (a `'` also ends it, and is swallowed).
fn ends_unquoted(c: char) -> bool {
    is_nl(c) || is_blank(c) || matches!(c, ';' | ',' | ']' | '}')
}

/// Characters that end a number; anything else turns `123abc` into a string.
fn ends_number(c: char) -> bool {
    is_nl(c) || is_blank(c) || matches!(c, ';' | ',' | ']' | '}')
}

fn is_size_suffix(c: char) -> bool {
    matches!(c.to_ascii_lowercase(), 'k' | 'm' | 'g' | 't' | 'p' | 'e')
}

fn describe(c: Option<char>) -> String {
    match c {
        None => "end of input".into(),
        Some('\n') => "a new line".into(),
        Some('\r') => "a carriage return".into(),
        Some('\t') => "a tab".into(),
        Some(c) => format!("'{c}'"),
    }
}

fn bool_word(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" => Some(true),
        "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn push_char(buf: &mut Vec<u8>, c: char) {
    let mut tmp = [0u8; 4];
    buf.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
}

/// Gives every position inside `v` the position `pos` (used for values that
/// came from an environment variable, whose own text has no useful location).
fn relocate(v: &mut Value, pos: &Pos) {
    v.pos = pos.clone();
    match &mut v.kind {
        ValueKind::Array(items) => items.iter_mut().for_each(|i| relocate(i, pos)),
        ValueKind::Map(m) => {
            let entries: Vec<Entry> = std::mem::take(m).into_iter().collect();
            for mut e in entries {
                e.key_pos = pos.clone();
                relocate(&mut e.value, pos);
                m.insert(e);
            }
        }
        _ => {}
    }
}

impl<'s> Parser<'s> {
    pub(crate) fn new(
        text: &str,
        file: Option<Arc<str>>,
        base_dir: PathBuf,
        shared: &'s mut Shared,
    ) -> Self {
        // nats-server would treat a UTF-8 byte-order mark as part of the first
        // key; skipping it is friendlier and cannot change a working config.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        Parser {
            chars: text.chars().collect(),
            i: 0,
            line: 1,
            col: 1,
            file,
            base_dir,
            scopes: Vec::new(),
            shared,
        }
    }

    // ---- character cursor -------------------------------------------------

    fn peek(&self) -> Option<char> {
        self.chars.get(self.i).copied()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.chars.get(self.i + n).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.i += 1;
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            column: self.col,
            file: self.file.clone(),
        }
    }

    fn error_here(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::at(&self.pos(), message)
    }

    fn skip_blanks(&mut self) {
        while self.peek().is_some_and(is_blank) {
            self.bump();
        }
    }

    fn skip_all_space(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn at_comment(&self) -> bool {
        match self.peek() {
            Some('#') => true,
            Some('/') => self.peek_at(1) == Some('/'),
            _ => false,
        }
    }

    /// Skips a comment up to (not including) the end of the line.
    fn skip_comment(&mut self) {
        while self.peek().is_some_and(|c| !is_nl(c)) {
            self.bump();
        }
    }

    fn skip_space_and_comments(&mut self) {
        loop {
            self.skip_all_space();
            if self.at_comment() {
                self.skip_comment();
            } else {
                return;
            }
        }
    }

    fn current_scope(&mut self) -> &mut Map {
        self.scopes.last_mut().expect("parser always has a scope")
    }

    // ---- document structure ----------------------------------------------

    /// Parses the whole input as a top-level map.
    pub(crate) fn parse_document(mut self) -> Result<Map, ConfigError> {
        self.scopes.push(Map::new());
        loop {
            self.skip_space_and_comments();
            match self.peek() {
                None => break,
                // A top-level `{ ... }` wrapper (JSON-style config): its keys
                // are top-level keys.
                Some('{') => {
                    self.bump();
                    self.parse_top_block()?;
                }
                Some('}') => {
                    // nats-server tolerates one trailing '}' at the end of a
                    // file, so JSON-like configs with an extra brace still load.
                    let pos = self.pos();
                    self.bump();
                    self.skip_all_space();
                    if self.peek().is_none() {
                        break;
                    }
                    return Err(ConfigError::at(&pos, "unexpected '}'"));
                }
                Some(_) => {
                    self.parse_entry(true)?;
                    self.end_top_value(false)?;
                }
            }
        }
        Ok(self.scopes.pop().expect("top-level scope"))
    }

    /// Body of a top-level `{ ... }` wrapper, after the `{`.
    fn parse_top_block(&mut self) -> Result<(), ConfigError> {
        loop {
            self.skip_space_and_comments();
            match self.peek() {
                // nats-server also accepts a wrapper left open at end of file.
                None => return Ok(()),
                Some('{') => {
                    self.bump();
                    self.parse_top_block()?;
                }
                Some('}') => {
                    self.bump();
                    return Ok(());
                }
                Some(_) => {
                    self.parse_entry(true)?;
                    self.end_top_value(true)?;
                }
            }
        }
    }

    /// What may follow a top-level value: blanks, then a comment, new line,
    /// `;`, `,`, `}` or end of input.
    fn end_top_value(&mut self, in_block: bool) -> Result<(), ConfigError> {
        self.skip_blanks();
        match self.peek() {
            None => Ok(()),
            Some(c) if is_nl(c) || c == ';' || c == ',' => {
                self.bump();
                Ok(())
            }
            Some('}') => {
                // Inside a wrapper the '}' closes it. At the real top level
                // nats-server treats a '}' after a value as a separator.
                if !in_block {
                    self.bump();
                }
                Ok(())
            }
            _ if self.at_comment() => {
                self.skip_comment();
                Ok(())
            }
            c => Err(self.error_here(format!(
                "expected a new line, ';', ',' or a comment after the value, found {}",
                describe(c)
            ))),
        }
    }

    /// Parses `key [:|=] value` (or `include path`) into the current scope.
    fn parse_entry(&mut self, top_level: bool) -> Result<(), ConfigError> {
        let key_pos = self.pos();
        let (key, quoted) = self.parse_key()?;
        if !quoted
            && key.eq_ignore_ascii_case("include")
            && self.peek().is_some_and(char::is_whitespace)
        {
            return self.parse_include();
        }
        self.skip_all_space();
        let had_separator = matches!(self.peek(), Some(':' | '='));
        if had_separator {
            self.bump();
            // At the top level the value must be on the same line as the
            // separator; inside maps new lines are skipped (as nats-server does).
            if top_level {
                self.skip_blanks();
            } else {
                self.skip_all_space();
            }
        }
        match self.peek() {
            None => {
                return Err(ConfigError::at(
                    &key_pos,
                    format!("key '{key}' has no value"),
                ))
            }
            Some(c) if is_nl(c) => {
                return Err(self.error_here(format!(
                    "expected a value for key '{key}' but found a new line"
                )))
            }
            _ => {}
        }
        let value = self.parse_value()?;
        self.current_scope().insert(Entry {
            key,
            key_pos,
            value,
            used_as_variable: false,
        });
        Ok(())
    }

    /// A key: `"quoted"`, `'quoted'` (both raw), or bare text up to
    /// whitespace, `:` or `=`. Returns whether it was quoted.
    fn parse_key(&mut self) -> Result<(String, bool), ConfigError> {
        let start = self.pos();
        match self.peek() {
            Some(q @ ('"' | '\'')) => {
                self.bump();
                let mut key = String::new();
                loop {
                    match self.bump() {
                        None => return Err(ConfigError::at(&start, "unterminated quoted key")),
                        Some(c) if c == q => return Ok((key, true)),
                        Some(c) => key.push(c),
                    }
                }
            }
            Some(c @ (':' | '=')) => Err(self.error_here(format!(
                "unexpected key separator '{c}' where a key was expected"
            ))),
            _ => {
                let mut key = String::new();
                while let Some(c) = self.peek() {
                    if c.is_whitespace() || c == ':' || c == '=' {
                        break;
                    }
                    key.push(c);
                    self.bump();
                }
                Ok((key, false))
            }
        }
    }

    // ---- values -------------------------------------------------------------

    fn parse_value(&mut self) -> Result<Value, ConfigError> {
        let pos = self.pos();
        match self.peek() {
            None => Err(self.error_here("expected a value but found end of input")),
            Some('[') => self.parse_array(),
            Some('{') => self.parse_map(),
            Some('"') => {
                self.bump();
                let s = self.parse_dq_string(&pos)?;
                Ok(Value::new(ValueKind::String(s), pos))
            }
            Some('\'') => {
                self.bump();
                let mut s = String::new();
                loop {
                    match self.bump() {
                        None => {
                            return Err(ConfigError::at(&pos, "unterminated single-quoted string"))
                        }
                        Some('\'') => break,
                        Some(c) => s.push(c),
                    }
                }
                Ok(Value::new(ValueKind::String(s), pos))
            }
            Some('(') => self.parse_block_string(),
            Some('-') => self.parse_negative_number(),
            Some(c) if c.is_ascii_digit() => self.parse_number_like(),
            Some('.') => Err(self.error_here(
                "floats must start with a digit (quote strings that start with '.', e.g. \"./data\")",
            )),
            Some(c) if is_nl(c) => Err(self.error_here("expected a value but found a new line")),
            Some(_) => self.parse_unquoted(pos, String::new()),
        }
    }

    /// An unquoted string, boolean or `$variable`. `prefix` is text already
    /// consumed (digits of something that turned out not to be a number).
    fn parse_unquoted(&mut self, pos: Pos, prefix: String) -> Result<Value, ConfigError> {
        let mut buf = prefix.into_bytes();
        let mut escaped = false;
        loop {
            match self.peek() {
                None => break,
                Some(c) if ends_unquoted(c) => break,
                Some('\'') => {
                    self.bump();
                    break;
                }
                Some('\\') => {
                    self.bump();
                    self.parse_escape(&mut buf)?;
                    escaped = true;
                }
                Some(c) => {
                    self.bump();
                    push_char(&mut buf, c);
                }
            }
        }
        let s = into_utf8(buf, &pos)?;
        if escaped {
            return Ok(Value::new(ValueKind::String(s), pos));
        }
        if s.is_empty() {
            return Err(self.error_here(format!(
                "expected a value but found {}",
                describe(self.peek())
            )));
        }
        if let Some(b) = bool_word(&s) {
            return Ok(Value::new(ValueKind::Bool(b), pos));
        }
        if let Some(name) = s.strip_prefix('$') {
            return self.resolve_variable(name, pos);
        }
        Ok(Value::new(ValueKind::String(s), pos))
    }

    /// Handles the character(s) after a backslash in double-quoted and
    /// unquoted strings: `\t \n \r \" \\ \xHH`.
    fn parse_escape(&mut self, buf: &mut Vec<u8>) -> Result<(), ConfigError> {
        let pos = self.pos();
        match self.bump() {
            Some('t') => buf.push(b'\t'),
            Some('n') => buf.push(b'\n'),
            Some('r') => buf.push(b'\r'),
            Some('"') => buf.push(b'"'),
            Some('\\') => buf.push(b'\\'),
            Some('x') => {
                let mut byte = 0u8;
                for _ in 0..2 {
                    match self.peek() {
                        Some(c) if c.is_ascii_hexdigit() => {
                            self.bump();
                            byte = byte * 16 + c.to_digit(16).expect("hex digit") as u8;
                        }
                        c => {
                            return Err(self.error_here(format!(
                                "expected two hexadecimal digits after '\\x', found {}",
                                describe(c)
                            )))
                        }
                    }
                }
                buf.push(byte);
            }
            c => {
                return Err(ConfigError::at(
                    &pos,
                    format!(
                        "invalid escape {}; only \\xHH, \\t, \\n, \\r, \\\" and \\\\ are allowed",
                        match c {
                            Some(c) if !c.is_whitespace() => format!("'\\{c}'"),
                            other => format!("'\\' followed by {}", describe(other)),
                        }
                    ),
                ))
            }
        }
        Ok(())
    }

    /// Body of a `"..."` string after the opening quote; may span lines.
    fn parse_dq_string(&mut self, start: &Pos) -> Result<String, ConfigError> {
        let mut buf = Vec::new();
        loop {
            match self.bump() {
                None => return Err(ConfigError::at(start, "unterminated double-quoted string")),
                Some('"') => break,
                Some('\\') => self.parse_escape(&mut buf)?,
                Some(c) => push_char(&mut buf, c),
            }
        }
        into_utf8(buf, start)
    }

    /// `( ...raw text... \n)`: a raw multi-line string, closed by a `)` that
    /// is alone at the start of a line. The text keeps its final new line.
    fn parse_block_string(&mut self) -> Result<Value, ConfigError> {
        let pos = self.pos();
        self.bump();
        let mut s = String::new();
        loop {
            match self.bump() {
                None => {
                    return Err(ConfigError::at(
                        &pos,
                        "unterminated block string: close it with ')' alone on its own line",
                    ))
                }
                Some(')')
                    if s.ends_with('\n') && matches!(self.peek(), None | Some('\n' | '\r')) =>
                {
                    break
                }
                Some(c) => s.push(c),
            }
        }
        Ok(Value::new(ValueKind::String(s), pos))
    }

    fn read_digits(&mut self, text: &mut String) {
        while let Some(c) = self.peek().filter(char::is_ascii_digit) {
            text.push(c);
            self.bump();
        }
    }

    fn parse_negative_number(&mut self) -> Result<Value, ConfigError> {
        let pos = self.pos();
        self.bump();
        match self.peek() {
            Some(c) if c.is_ascii_digit() => {}
            Some('.') => return Err(self.error_here("floats must start with a digit")),
            c => {
                return Err(
                    self.error_here(format!("expected a digit after '-', found {}", describe(c)))
                )
            }
        }
        let mut text = String::from("-");
        self.read_digits(&mut text);
        match self.peek() {
            Some('.') => self.parse_float_or_ip(text, pos),
            Some(c) if is_size_suffix(c) => self.parse_suffixed(text, pos),
            // Anything else is left for the caller's "what follows a value" check.
            _ => integer(&text, "", pos),
        }
    }

    /// A value starting with a digit: integer (maybe with size suffix), float,
    /// IP address, ISO 8601 datetime, or a string like `10s` / `3xyz`.
    fn parse_number_like(&mut self) -> Result<Value, ConfigError> {
        let pos = self.pos();
        let mut text = String::new();
        self.read_digits(&mut text);
        match self.peek() {
            Some('-') => {
                if text.len() != 4 {
                    return Err(self.error_here(
                        "dates must be in full ISO 8601 Zulu form (YYYY-MM-DDTHH:MM:SSZ)",
                    ));
                }
                self.parse_datetime(text, pos)
            }
            Some('.') => self.parse_float_or_ip(text, pos),
            Some(c) if is_size_suffix(c) => self.parse_suffixed(text, pos),
            None => integer(&text, "", pos),
            Some(c) if ends_number(c) => integer(&text, "", pos),
            Some(_) => self.parse_unquoted(pos, text),
        }
    }

    /// `YYYY` has been read and the next char is '-': the rest must be
    /// `-MM-DDTHH:MM:SSZ`. Kept as a string.
    fn parse_datetime(&mut self, mut text: String, pos: Pos) -> Result<Value, ConfigError> {
        for expected in "-00-00T00:00:00Z".chars() {
            let c = self.peek();
            let ok = match expected {
                '0' => c.is_some_and(|c| c.is_ascii_digit()),
                e => c == Some(e),
            };
            if !ok {
                let want = if expected == '0' {
                    "a digit".to_string()
                } else {
                    format!("'{expected}'")
                };
                return Err(self.error_here(format!(
                    "expected {want} in ISO 8601 datetime (YYYY-MM-DDTHH:MM:SSZ), found {}",
                    describe(c)
                )));
            }
            text.push(self.bump().expect("peeked"));
        }
        Ok(Value::new(ValueKind::String(text), pos))
    }

    /// Digits have been read and the next char is '.': a float, or (with a
    /// second '.') an IP address such as `0.0.0.0:4222`, kept as a string.
    fn parse_float_or_ip(&mut self, mut text: String, pos: Pos) -> Result<Value, ConfigError> {
        text.push('.');
        self.bump();
        if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
            return Err(self.error_here(format!(
                "floats must have a digit after the '.', found {}",
                describe(self.peek())
            )));
        }
        self.read_digits(&mut text);
        if self.peek() == Some('.') {
            while let Some(c) = self
                .peek()
                .filter(|c| c.is_ascii_digit() || matches!(c, '.' | ':' | '-'))
            {
                text.push(c);
                self.bump();
            }
            return Ok(Value::new(ValueKind::String(text), pos));
        }
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Value::new(ValueKind::Float(f), pos)),
            _ => Err(ConfigError::at(
                &pos,
                format!("float '{text}' is out of range"),
            )),
        }
    }

    /// Digits have been read and the next char is a size letter. If the word
    /// ends right after the suffix it is a sized integer, otherwise (`10ms`,
    /// `1k5`, `2mx`) the whole word is a string.
    fn parse_suffixed(&mut self, mut text: String, pos: Pos) -> Result<Value, ConfigError> {
        let digits_len = text.len();
        text.push(self.bump().expect("peeked"));
        while let Some(c) = self.peek().filter(|c| matches!(c, 'b' | 'B' | 'i' | 'I')) {
            text.push(c);
            self.bump();
        }
        let at_end = match self.peek() {
            None => true,
            Some(c) => ends_number(c),
        };
        if at_end {
            let (num, suffix) = text.split_at(digits_len);
            integer(num, suffix, pos)
        } else {
            self.parse_unquoted(pos, text)
        }
    }

    fn parse_array(&mut self) -> Result<Value, ConfigError> {
        let pos = self.pos();
        self.bump();
        let unterminated = |p: &Pos| ConfigError::at(p, "unterminated array: missing ']'");
        let mut items = Vec::new();
        loop {
            self.skip_space_and_comments();
            match self.peek() {
                None => return Err(unterminated(&pos)),
                Some(',') => {
                    return Err(self.error_here("unexpected ',' in array: expected a value or ']'"))
                }
                Some(']') => {
                    self.bump();
                    break;
                }
                Some(_) => {}
            }
            items.push(self.parse_value()?);
            self.skip_blanks();
            match self.peek() {
                Some(c) if c == ',' || is_nl(c) => {
                    self.bump();
                }
                Some(']') => {
                    self.bump();
                    break;
                }
                _ if self.at_comment() => self.skip_comment(),
                None => return Err(unterminated(&pos)),
                c => {
                    return Err(self.error_here(format!(
                        "expected ',', a new line or ']' after an array element, found {}",
                        describe(c)
                    )))
                }
            }
        }
        Ok(Value::new(ValueKind::Array(items), pos))
    }

    fn parse_map(&mut self) -> Result<Value, ConfigError> {
        let pos = self.pos();
        self.bump();
        let unterminated = |p: &Pos| ConfigError::at(p, "unterminated map: missing '}'");
        self.scopes.push(Map::new());
        loop {
            self.skip_space_and_comments();
            match self.peek() {
                None => return Err(unterminated(&pos)),
                Some('}') => {
                    self.bump();
                    break;
                }
                Some(']') => return Err(self.error_here("unexpected ']' inside a map")),
                Some(_) => {}
            }
            self.parse_entry(false)?;
            self.skip_blanks();
            match self.peek() {
                Some(c) if c == ',' || c == ';' || is_nl(c) => {
                    self.bump();
                }
                Some('}') => {
                    self.bump();
                    break;
                }
                _ if self.at_comment() => self.skip_comment(),
                None => return Err(unterminated(&pos)),
                c => {
                    return Err(self.error_here(format!(
                        "expected ',', ';', a new line or '}}' after a map value, found {}",
                        describe(c)
                    )))
                }
            }
        }
        let map = self.scopes.pop().expect("map scope");
        Ok(Value::new(ValueKind::Map(map), pos))
    }

    // ---- variables ----------------------------------------------------------

    /// `$name`: the nearest earlier definition of `name` in this or an
    /// enclosing map (exact case), else the environment variable `name`,
    /// whose text is parsed as a config value (so `4222` is an integer).
    fn resolve_variable(&mut self, name: &str, pos: Pos) -> Result<Value, ConfigError> {
        // A bcrypt hash ($2a$...) written unquoted is a literal, not a variable.
        if name.starts_with("2a$") {
            return Ok(Value::new(ValueKind::String(format!("${name}")), pos));
        }
        for scope in self.scopes.iter_mut().rev() {
            if let Some(entry) = scope.entry_exact_mut(name) {
                entry.used_as_variable = true;
                let mut v = entry.value.clone();
                v.pos = pos;
                return Ok(v);
            }
        }
        if self.shared.env_in_progress.iter().any(|n| n == name) {
            return Err(ConfigError::at(
                &pos,
                format!("variable reference cycle for '{name}'"),
            ));
        }
        let text = match std::env::var(name) {
            Ok(t) => t,
            Err(std::env::VarError::NotPresent) => {
                return Err(ConfigError::at(
                    &pos,
                    format!(
                        "variable reference for '{name}' can not be found: no earlier key \
                         '{name}' in scope and no environment variable of that name"
                    ),
                ))
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(ConfigError::at(
                    &pos,
                    format!("environment variable '{name}' is not valid UTF-8"),
                ))
            }
        };
        if text.trim_matches(is_blank).is_empty() {
            return Ok(Value::new(ValueKind::String(String::new()), pos));
        }
        self.shared.env_in_progress.push(name.to_string());
        let parsed = Parser::new(
            &format!("pk={text}"),
            None,
            self.base_dir.clone(),
            self.shared,
        )
        .parse_document();
        self.shared.env_in_progress.pop();
        let map = parsed.map_err(|e| {
            ConfigError::at(
                &pos,
                format!(
                    "variable reference for '{name}' could not be parsed: {}",
                    e.message
                ),
            )
        })?;
        let mut v = map.get_exact("pk").cloned().ok_or_else(|| {
            ConfigError::at(
                &pos,
                format!("environment variable '{name}' has no usable value"),
            )
        })?;
        relocate(&mut v, &pos);
        Ok(v)
    }

    // ---- includes -----------------------------------------------------------

    /// `include path` (the keyword has been read): parses the file and merges
    /// its keys into the current map. The included file has its own variable
    /// scope, as in nats-server.
    fn parse_include(&mut self) -> Result<(), ConfigError> {
        self.skip_blanks();
        let pos = self.pos();
        let path_text = match self.peek() {
            Some(q @ ('"' | '\'')) => {
                self.bump();
                let mut s = String::new();
                loop {
                    match self.bump() {
                        None => return Err(ConfigError::at(&pos, "unterminated include path")),
                        Some(c) if c == q => break,
                        Some(c) => s.push(c),
                    }
                }
                s
            }
            c @ (None | Some('[' | '{' | '(' | '-' | '\\' | '0'..='9' | '\n' | '\r')) => {
                let what = match c {
                    Some('[') => "the start of an array".to_string(),
                    Some('{') => "the start of a map".to_string(),
                    Some('(') => "the start of a block".to_string(),
                    Some('\\') => "an escape sequence".to_string(),
                    Some('-' | '0'..='9') => "the start of a number".to_string(),
                    other => describe(other),
                };
                return Err(self.error_here(format!("expected an include path, found {what}")));
            }
            Some(_) => {
                let mut s = String::new();
                while let Some(c) = self.peek() {
                    if is_nl(c) || is_blank(c) || c == ';' || c == '}' {
                        break;
                    }
                    self.bump();
                    if c == '\'' {
                        break;
                    }
                    s.push(c);
                }
                s
            }
        };
        if path_text.is_empty() {
            return Err(ConfigError::at(&pos, "empty include path"));
        }
        let target = self.resolve_include_path(&path_text);
        let map = self.parse_included_file(&target, &pos)?;
        let scope = self.current_scope();
        for entry in map {
            scope.insert(entry);
        }
        Ok(())
    }

    /// nats-server joins the include path onto the including file's directory
    /// even when it is absolute. We do the same, but fall back to the absolute
    /// path itself when the joined one does not exist.
    fn resolve_include_path(&self, text: &str) -> PathBuf {
        let p = Path::new(text);
        if !p.is_absolute() {
            return self.base_dir.join(p);
        }
        let relative: PathBuf = p
            .components()
            .filter(|c| !matches!(c, Component::RootDir | Component::Prefix(_)))
            .collect();
        let joined = self.base_dir.join(relative);
        if joined.exists() {
            joined
        } else {
            p.to_path_buf()
        }
    }

    fn parse_included_file(&mut self, target: &Path, pos: &Pos) -> Result<Map, ConfigError> {
        if self.shared.include_chain.len() > MAX_INCLUDE_DEPTH {
            return Err(ConfigError::at(
                pos,
                format!("includes are nested more than {MAX_INCLUDE_DEPTH} levels deep"),
            ));
        }
        let canon = canonical(target);
        if self.shared.include_chain.contains(&canon) {
            return Err(ConfigError::at(
                pos,
                format!(
                    "include cycle: '{}' is already being parsed",
                    target.display()
                ),
            ));
        }
        let text = std::fs::read_to_string(target).map_err(|e| {
            ConfigError::at(
                pos,
                format!("cannot read include file '{}': {e}", target.display()),
            )
        })?;
        let base_dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        self.shared.include_chain.push(canon);
        let file: Arc<str> = target.display().to_string().into();
        let result = Parser::new(&text, Some(file), base_dir, self.shared).parse_document();
        self.shared.include_chain.pop();
        result.map_err(|mut e| {
            if e.file.is_some() {
                e.message = format!("{} (in file included from {pos})", e.message);
            }
            e
        })
    }
}

/// Builds an integer value from its digits (with optional '-') and a size
/// suffix, using nats-server's meaning of the suffixes.
fn integer(num: &str, suffix: &str, pos: Pos) -> Result<Value, ConfigError> {
    let whole = format!("{num}{suffix}");
    let out_of_range =
        |pos: &Pos| ConfigError::at(pos, format!("integer '{whole}' is out of range"));
    let n: i64 = num.parse().map_err(|_| out_of_range(&pos))?;
    let lower = suffix.to_ascii_lowercase();
    let mut chars = lower.chars();
    let power = match chars.next() {
        None => return Ok(Value::new(ValueKind::Integer(n), pos)),
        Some('k') => 1,
        Some('m') => 2,
        Some('g') => 3,
        Some('t') => 4,
        Some('p') => 5,
        Some('e') => 6,
        Some(_) => unreachable!("only size letters reach here"),
    };
    let base: i64 = match chars.as_str() {
        "" => 1000,
        "b" | "i" | "ib" => 1024,
        _ => {
            return Err(ConfigError::at(
                &pos,
                format!(
                    "unknown size suffix in '{whole}': use k, m, g, t, p, e (powers of 1000) \
                     or kb/ki/kib, mb/mi/mib, ... (powers of 1024)"
                ),
            ))
        }
    };
    let value = base
        .checked_pow(power)
        .and_then(|m| n.checked_mul(m))
        .ok_or_else(|| out_of_range(&pos))?;
    Ok(Value::new(ValueKind::Integer(value), pos))
}

fn into_utf8(buf: Vec<u8>, pos: &Pos) -> Result<String, ConfigError> {
    String::from_utf8(buf).map_err(|_| {
        ConfigError::at(
            pos,
            "string is not valid UTF-8 after applying its \\x escapes",
        )
    })
}
