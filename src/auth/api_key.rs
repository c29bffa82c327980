//! API keys: `sik_<id>_<secret>`. The id is a public lookup handle; the
//! 256-bit secret is stored only as its SHA-256 (a slow password hash buys
//! nothing for a random secret of that size) and compared in constant time.

use super::principal::Principal;
use crate::store::api_keys::{self, ApiKeyRecord};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use uuid::Uuid;

const PREFIX: &str = "sik_";

/// A newly issued key: the token (shown once) and its stored record.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    pub token: String,
    pub record: ApiKeyRecord,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Splits a token into (id, secret) if it has the shape of one of our keys.
pub fn split(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let is_hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (is_hex(id, 16) && is_hex(secret, 64)).then_some((id, secret))
}

/// True if `token` looks like an API key rather than a JWT.
pub fn looks_like_key(token: &str) -> bool {
    token.starts_with(PREFIX)
}

/// Issues a key for `company` with `scopes`.
pub async fn issue(
    pool: &PgPool,
    company: Uuid,
    scopes: &[String],
    name: Option<&str>,
) -> Result<IssuedKey, crate::store::StoreError> {
    let id = hex(&rand::random::<[u8; 8]>());
    let secret = hex(&rand::random::<[u8; 32]>());
    let record = api_keys::insert(pool, &id, company, scopes, name, &hash_secret(&secret)).await?;
    Ok(IssuedKey {
        token: format!("{PREFIX}{id}_{secret}"),
        record,
    })
}

/// The principal a key stands for, or None if the key is unknown, revoked
/// or its secret does not match.
pub async fn verify(
    pool: &PgPool,
    token: &str,
) -> Result<Option<Principal>, crate::store::StoreError> {
    let Some((id, secret)) = split(token) else {
        return Ok(None);
    };
    let Some(stored) = api_keys::find(pool, id).await? else {
        return Ok(None);
    };
    let matches: bool = hash_secret(secret).ct_eq(&stored.secret_hash).into();
    if !matches || stored.revoked_at.is_some() {
        return Ok(None);
    }
    Ok(Some(Principal {
        subject: format!("key:{id}"),
        company: stored.company_guid,
        roles: Vec::new(),
        scopes: stored.scopes,
    }))
}

/// The lookup id named by `id_or_token`: an id as `list` shows it, or a
/// whole key.
pub fn key_id(id_or_token: &str) -> &str {
    split(id_or_token).map_or(id_or_token, |(id, _)| id)
}
