//! Parser for nats-server's configuration file format, so Tern can be a
//! drop-in replacement that reads the same files.
//!
//! This module only turns text into positioned [`Value`]s; mapping them onto
//! server options lives elsewhere. Supported syntax, as nats-server accepts it:
//!
//! * `key: value`, `key = value`, `key value`; keys may be quoted.
//! * Maps `name { ... }` / `name: { ... }`, arrays `[a, b]` (commas or new
//!   lines), optionally a top-level `{ ... }` wrapper (JSON-style files).
//! * `#` and `//` comments; values end at a new line, `;` or `,`.
//! * Strings unquoted, `"double"` (escapes `\t \n \r \" \\ \xHH`), `'single'`
//!   (raw), and `( ... )` raw blocks closed by `)` alone on a line.
//! * Integers with size suffixes (`1k` = 1000, `1kb`/`1ki`/`1kib` = 1024, also
//!   m, g, t, p, e), floats, booleans `true/false/yes/no/on/off` (any case),
//!   IP:port words like `0.0.0.0:4222` and datetimes (kept as strings).
//! * `include path` (relative to the including file), `$name` variables
//!   (earlier key in this or an enclosing map, else the environment).

mod parser;
mod value;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use value::{Entry, Map, Pos, Value, ValueKind};

/// A config problem with the place it was found, so users can fix the right
/// line. `line`/`column` are 1-based; both are 0 when no position applies
/// (e.g. the file could not be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// What is wrong.
    pub message: String,
    /// The file the problem is in (an included file if it is there), if any.
    pub file: Option<String>,
    /// 1-based line, or 0.
    pub line: u32,
    /// 1-based column in characters, or 0.
    pub column: u32,
}

impl ConfigError {
    /// An error at a parsed position (for the option mapping's own checks).
    pub fn at(pos: &Pos, message: impl Into<String>) -> Self {
        ConfigError {
            message: message.into(),
            file: pos.file.as_deref().map(str::to_owned),
            line: pos.line,
            column: pos.column,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}:")?;
        }
        if self.line > 0 {
            write!(f, "{}:{}:", self.line, self.column)?;
        }
        if self.file.is_some() || self.line > 0 {
            f.write_str(" ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Parses config text that has no file of its own; `include` paths are
/// resolved against the current directory.
pub fn parse_str(text: &str) -> Result<Map, ConfigError> {
    let mut shared = parser::Shared::default();
    parser::Parser::new(text, None, PathBuf::from("."), &mut shared).parse_document()
}

/// Reads and parses a config file; `include` paths are resolved against the
/// file's directory and errors name the file.
pub fn parse_file(path: &Path) -> Result<Map, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        message: format!("cannot read config file: {e}"),
        file: Some(name.clone()),
        line: 0,
        column: 0,
    })?;
    let base_dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut shared = parser::Shared::with_file(path);
    let file: Arc<str> = name.into();
    parser::Parser::new(&text, Some(file), base_dir, &mut shared).parse_document()
}
