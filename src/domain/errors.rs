//! What is wrong with a body, as the client is told.

use super::Entity;
use serde::Serialize;
use std::borrow::Cow;

/// What is wrong with one field's value, in words for the client.
pub type Problem = Cow<'static, str>;

/// One problem with one field of one item (or with the body as a whole,
/// when `index` and `field` are absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub index: Option<usize>,
    pub field: Option<String>,
    pub message: String,
}

impl FieldError {
    pub fn body(message: impl Into<String>) -> Self {
        FieldError {
            index: None,
            field: None,
            message: message.into(),
        }
    }

    pub fn item(index: usize, field: &str, message: impl Into<String>) -> Self {
        FieldError {
            index: Some(index),
            field: Some(field.to_owned()),
            message: message.into(),
        }
    }
}

/// Why a body is not a batch.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatchError {
    /// More items than the entity's limit.
    #[error("{count} items exceed the limit of {limit} for {entity}")]
    TooLarge {
        entity: Entity,
        count: usize,
        limit: usize,
    },
    /// The body or some items are invalid; every problem found is listed.
    #[error("{} validation error(s)", .0.len())]
    Invalid(Vec<FieldError>),
}
