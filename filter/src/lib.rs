//! Placeholder until the adapter lands (see docs/architecture.md).
