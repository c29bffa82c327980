//! Tenant checks: which company's data a caller may write.

use super::Principal;
use crate::domain::Manifest;

/// Indexes of the batch's items the caller may not write: items of another
/// company, unless the caller is a SystemAdmin.
pub fn forbidden_items(principal: &Principal, manifest: &Manifest) -> Vec<usize> {
    if principal.is_system_admin() {
        return Vec::new();
    }
    manifest
        .companies
        .iter()
        .enumerate()
        .filter(|(_, company)| **company != principal.company)
        .map(|(index, _)| index)
        .collect()
}
