//! The portal's router against a real SQLite users database, request by request
//! (`tower::ServiceExt::oneshot`): the seed's rows for the portal (wrong password once: the
//! message, the `TRUCO_KO` line, the guard event; more than ten: eleven events, then the
//! ban refused), cookie and bearer sessions, logout, the token check, forged tokens on a
//! protected route; and the login page in headless Chromium.

mod browser;
mod router;
