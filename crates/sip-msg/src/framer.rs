//! Stream framer (placeholder).
