//! Integration tests against the real PostgreSQL and RabbitMQ; one binary,
//! each test with its own database and queue prefix.

mod bodies;
mod gate;
mod helpers;
mod jobs;

mod auth;
mod bounds;
mod contract;
mod deletes;
mod entities;
mod leases;
mod reading;
mod recorder;
mod router;
mod smoke;
mod submit;
mod tenancy;
