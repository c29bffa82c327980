//! Who is calling, on behalf of which company, allowed to do what.

use uuid::Uuid;

/// The scope needed to submit batches (and read their jobs).
pub const SCOPE_WRITE: &str = "sync:write";
/// The scope needed to read jobs.
pub const SCOPE_READ: &str = "sync:read";

/// A JWT role that matters to this service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// May write items of any company.
    SystemAdmin,
    /// May sync its own company's items.
    CompanyAdmin,
    /// A connector: may sync its own company's items.
    Integration,
}

impl Role {
    /// The role named by a JWT `roles` entry, if it is one we know.
    pub fn from_claim(name: &str) -> Option<Role> {
        match name {
            "SystemAdmin" => Some(Role::SystemAdmin),
            "CompanyAdmin" => Some(Role::CompanyAdmin),
            "Integration" => Some(Role::Integration),
            _ => None,
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Key id or JWT `sub`, for the job's `submitted_by` and logs.
    pub subject: String,
    /// The caller's own company.
    pub company: Uuid,
    pub roles: Vec<Role>,
    pub scopes: Vec<String>,
}

impl Principal {
    /// True for a SystemAdmin, who may act for any company.
    pub fn is_system_admin(&self) -> bool {
        self.roles.contains(&Role::SystemAdmin)
    }

    fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// May submit batches.
    pub fn can_write(&self) -> bool {
        !self.roles.is_empty() || self.has_scope(SCOPE_WRITE)
    }

    /// May read jobs.
    pub fn can_read(&self) -> bool {
        self.can_write() || self.has_scope(SCOPE_READ)
    }

    /// The company whose jobs this caller may see; None means every company.
    pub fn visible_company(&self) -> Option<Uuid> {
        (!self.is_system_admin()).then_some(self.company)
    }
}
