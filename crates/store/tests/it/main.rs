//! stg-store against real servers: its own redis-server (and sentinel) processes on free
//! ports, the machine's MariaDB and PostgreSQL (a database of its own per test, dropped at
//! the end), and temp dirs for the embedded store and SQLite.

mod bindings;
mod redis_server;
mod sentinel;
mod users;
