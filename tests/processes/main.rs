//! Tests against real `sync-ingest` processes (api and workers spawned from
//! the built binary):
//! - `faults` (SPEC §6): killed workers, a broker restart, a database restart,
//!   poison messages, SIGTERM — audited for every batch answered 202 being
//!   applied exactly once, in order, and nothing else. These scenarios run
//!   one at a time: some stop the machine's shared RabbitMQ or PostgreSQL.
//! - `shards` (SPEC §6 "Workers share the shards"): the split over several
//!   workers, hand-overs under ordered load, a frozen worker fenced off.
//! - `hostile`: stalled uploads closed after the
//!   body timeout, what they cost the api.
//! - `telemetry` (SPEC §7): metrics scraped from each process, trace context
//!   across processes, JSON logs.

mod cluster;
mod faults;
mod hostile;
mod load;
mod shards;
mod telemetry;
