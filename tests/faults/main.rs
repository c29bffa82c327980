//! Fault tests (SPEC §6): real `sync-ingest` processes, real faults — killed
//! workers, a broker restart, a database restart, poison messages, SIGTERM —
//! and an audit that every batch answered 202 was applied exactly once, in
//! order, and nothing else was. Scenarios run one at a time: some of them
//! stop the machine's shared RabbitMQ or PostgreSQL.

mod cluster;
mod load;
mod scenarios;
