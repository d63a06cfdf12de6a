//! Transactions (placeholder).
