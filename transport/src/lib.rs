//! Listeners and links.
