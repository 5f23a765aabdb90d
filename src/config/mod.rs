//! The declaration: model, JSON Schema, semantic rules and diagnostics.
