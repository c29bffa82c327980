//! sync-ingest: a queue-driven bulk synchronization API for manufacturing
//! data. See `README.md` and `../shared/SPEC.md` for the contract.

pub mod api;
pub mod app;
pub mod auth;
pub mod backlog;
pub mod config;
pub mod domain;
pub mod queue;
pub mod retention;
pub mod store;
pub mod telemetry;
pub mod worker;
