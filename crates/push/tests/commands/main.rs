//! The client tools' binaries (`sync-ingest-push`, `sync-ingest-jobs`)
//! against a real service, started in-process on its own database and
//! queue prefix by the service's own test harness (shared by path, so that
//! there is one of it).

#[allow(dead_code)]
#[path = "../../../../tests/api/gate.rs"]
mod gate;
#[allow(dead_code)]
#[path = "../../../../tests/api/helpers.rs"]
mod helpers;

mod push;
