//! Router core.
