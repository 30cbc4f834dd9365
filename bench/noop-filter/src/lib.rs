//! Not yet built: see docs/architecture.md for who owns this crate.
