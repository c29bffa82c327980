//! The five kinds of record a source can push.

use serde::{Deserialize, Serialize};
use std::{fmt, str::FromStr};

/// An entity type, spelled in URLs, table names and messages as `as_str()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Entity {
    Projects,
    Components,
    Assemblies,
    Pieces,
    Articles,
}

impl Entity {
    /// Every entity, in dependency order (referenced before referencing).
    pub const ALL: [Entity; 5] = [
        Entity::Projects,
        Entity::Articles,
        Entity::Components,
        Entity::Assemblies,
        Entity::Pieces,
    ];

    /// The URL segment and table name.
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Projects => "projects",
            Entity::Components => "components",
            Entity::Assemblies => "assemblies",
            Entity::Pieces => "pieces",
            Entity::Articles => "articles",
        }
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The segment named no entity.
#[derive(Debug, thiserror::Error)]
#[error("unknown entity `{0}`")]
pub struct UnknownEntity(pub String);

impl FromStr for Entity {
    type Err = UnknownEntity;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Entity::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| UnknownEntity(s.to_owned()))
    }
}

/// What a job does with its items: upsert them, or delete them.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    #[default]
    Upsert,
    Delete,
}

impl Operation {
    /// The stored and answered spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Upsert => "upsert",
            Operation::Delete => "delete",
        }
    }
}

impl FromStr for Operation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Operation::Upsert, Operation::Delete]
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| format!("unknown operation `{s}`"))
    }
}

/// How the `operation` column is read back.
impl TryFrom<String> for Operation {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}
