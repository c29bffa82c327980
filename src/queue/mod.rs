//! RabbitMQ: topology, publishing with confirms, the message envelope.

pub mod envelope;
pub mod guid_list;
pub mod publisher;
pub mod reconnect;
pub mod results;
pub mod topology;

pub use envelope::{BatchMessage, EnvelopeError, ForwardedMessage, MESSAGE_VERSION};
pub use publisher::{PublishError, Publisher};
pub use topology::Topology;
