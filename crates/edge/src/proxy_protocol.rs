//! PROXY protocol v2 (placeholder).
