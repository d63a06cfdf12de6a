//! stg-guard's integration tests: fail2ban's own annotated sample logs run through our
//! filter reader (the conformance suite, read from `$STG_CONFORMANCE_DIR`, never copied).

mod conformance;
mod garbage;
mod review;
