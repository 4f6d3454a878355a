//! Bearer tokens managed by API: created with a role, an optional expiry and an optional scope of
//! file owners; stored only as the SHA-256 of their secret; checked on every call through a short
//! per-instance cache ([`TokenCache`]), so that a revocation or an expiry reaches every instance
//! within `token_cache_ttl` without a catalog read per call.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::Engine as _;
use chrono::{DateTime, NaiveDateTime, Utc};
use sha2::{Digest, Sha256};

use super::{Context, Error, Result};
use crate::{
    config::Role,
    db::{self, tokens::TokenRow},
};

/// What every API token's secret starts with: secret scanners (and people) recognise it.
pub const SECRET_PREFIX: &str = "strata_";
/// Random bytes in a secret (256 bits, 43 base64url characters).
const SECRET_BYTES: usize = 32;
/// Use is recorded at most this often per token and instance.
const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// Entries the cache holds before it forgets the stale ones (and, if all are fresh, all of them).
const CACHE_MAX: usize = 10_000;
/// The longest expiry a token may be given.
const MAX_TTL: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// A token as callers see it (never its secret or hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// Id (the part of the secret after the prefix).
    pub id: String,
    /// Name for people and records.
    pub name: String,
    /// Granted role.
    pub role: Role,
    /// File owners it is limited to; empty: not scoped.
    pub owners: Vec<String>,
    /// Who created it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When it stops working.
    pub expires_at: Option<DateTime<Utc>>,
    /// Last recorded use.
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
}

impl From<TokenRow> for Token {
    fn from(r: TokenRow) -> Self {
        Token {
            id: r.id,
            name: r.name,
            role: r.role,
            owners: r.owners,
            created_by: r.created_by,
            created_at: r.created_at.and_utc(),
            expires_at: r.expires_at.map(|t| t.and_utc()),
            last_used_at: r.last_used_at.map(|t| t.and_utc()),
            revoked_at: r.revoked_at.map(|t| t.and_utc()),
            revoked_by: r.revoked_by,
        }
    }
}

/// What CreateToken asks for.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Scope; empty: none.
    pub owners: Vec<String>,
    /// How long it works; None: until revoked.
    pub ttl: Option<Duration>,
}

/// Checks a token name: 1-100 letters, digits, '.', '_', '-', ':', '@'.
fn check_token_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 100 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-:@".contains(c)) {
        return Err(Error::InvalidArgument(format!(
            "token name {name:?} must be 1-100 characters of letters, digits, '.', '_', '-', ':', '@'"
        )));
    }
    Ok(())
}

/// Checks a file owner as a scope names it: an upload's owner, and not empty.
pub(crate) fn check_owner(owner: &str) -> Result<()> {
    if owner.is_empty() {
        return Err(Error::InvalidArgument("a token's owners must not be empty".into()));
    }
    super::files::check_owner(owner)
}

/// The hex SHA-256 stored for a secret.
fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The id an API token's secret carries (`strata_<id>_<random>`), or None when it is not one.
pub fn secret_id(secret: &str) -> Option<&str> {
    let (id, random) = secret.strip_prefix(SECRET_PREFIX)?.split_once('_')?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !random.is_empty()).then_some(id)
}

/// Creates a token; returns it and its secret (shown only now).
pub async fn create(ctx: &Context, req: NewToken, by: &str) -> Result<(Token, String)> {
    check_token_name(&req.name)?;
    let mut owners = Vec::new();
    for o in req.owners {
        check_owner(&o)?;
        if !owners.contains(&o) {
            owners.push(o);
        }
    }
    if owners.len() > 100 {
        return Err(Error::InvalidArgument("a token may be scoped to at most 100 owners".into()));
    }
    let now = ctx.now();
    let expires_at = match req.ttl {
        None => None,
        Some(t) if t.is_zero() || t > MAX_TTL => {
            return Err(Error::InvalidArgument("ttl must be more than 0 and at most 10 years".into()));
        }
        Some(t) => Some(now + chrono::Duration::from_std(t).expect("bounded above")),
    };
    let id = uuid::Uuid::now_v7().simple().to_string();
    let mut random = [0u8; SECRET_BYTES];
    getrandom::fill(&mut random).map_err(|e| Error::Unavailable(format!("no randomness for a secret: {e}")))?;
    let secret = format!("{SECRET_PREFIX}{id}_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random));
    let row = TokenRow {
        id,
        name: req.name,
        role: req.role,
        owners,
        secret_sha256: hex::encode(digest(&secret)),
        created_by: by.to_owned(),
        created_at: now,
        expires_at,
        last_used_at: None,
        revoked_at: None,
        revoked_by: None,
    };
    db::tokens::insert(&mut ctx.db.write().await?, &row).await?;
    tracing::info!(token = %row.id, name = %row.name, role = row.role.as_str(), scoped = !row.owners.is_empty(), by, "token created");
    Ok((row.into(), secret))
}

/// The token `id`.
pub async fn get(ctx: &Context, id: &str) -> Result<Token> {
    let (mut conn, _) = ctx.db.read_prefer_primary().await?;
    db::tokens::get(&mut conn, id).await?.map(Token::from).ok_or_else(|| Error::NotFound(format!("token {id}")))
}

/// A page of tokens newest first (with revoked and expired ones when `all`), and the next page's
/// token.
pub async fn list(
    ctx: &Context,
    page_token: Option<&str>,
    all: bool,
    limit: i64,
) -> Result<(Vec<Token>, Option<String>)> {
    if let Some(t) = page_token
        && (t.len() != 32 || !t.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(Error::InvalidArgument("invalid page_token".into()));
    }
    let (mut conn, _) = ctx.db.read_prefer_primary().await?;
    let rows = db::tokens::list(&mut conn, page_token, all, ctx.now(), limit).await?;
    let next = (rows.len() as i64 == limit).then(|| rows.last().map(|r| r.id.clone())).flatten();
    Ok((rows.into_iter().map(Token::from).collect(), next))
}

/// Revokes token `id` (a revoked one is returned as it is).
pub async fn revoke(ctx: &Context, id: &str, by: &str) -> Result<Token> {
    let row = db::tokens::revoke(&mut ctx.db.write().await?, id, by, ctx.now())
        .await?
        .ok_or_else(|| Error::NotFound(format!("token {id}")))?;
    ctx.tokens.forget(id);
    tracing::info!(token = %row.id, name = %row.name, by, "token revoked");
    Ok(row.into())
}

/// What a valid API token grants its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The token's id.
    pub id: String,
    /// Its name: the caller's name in records.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its scope; None: not scoped.
    pub owners: Option<Arc<[String]>>,
}

/// Why a presented API token was refused (UNAUTHENTICATED, with this as the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such token, or not its secret.
    Unknown,
    /// Revoked.
    Revoked,
    /// Past its expiry.
    Expired,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Unknown => "invalid token",
            Refusal::Revoked => "the token was revoked",
            Refusal::Expired => "the token has expired",
        })
    }
}

/// What the cache keeps of a token: what a check needs.
#[derive(Debug, Clone)]
struct Known {
    sha256: [u8; 32],
    grant: Grant,
    expires_at: Option<NaiveDateTime>,
    revoked: bool,
}

/// What an instance remembers of API tokens: each answer read from the catalog (also "no such
/// token") for `token_cache_ttl`, and when each token's use was last recorded.
#[derive(Default)]
pub struct TokenCache {
    known: Mutex<HashMap<String, (Option<Known>, Instant)>>,
    touched: Mutex<HashMap<String, Instant>>,
}

impl TokenCache {
    fn get(&self, id: &str, ttl: Duration) -> Option<Option<Known>> {
        let known = self.known.lock().expect("token cache");
        known.get(id).filter(|(_, at)| at.elapsed() < ttl).map(|(k, _)| k.clone())
    }

    fn remember(&self, id: &str, k: Option<Known>, ttl: Duration) {
        let mut known = self.known.lock().expect("token cache");
        if known.len() >= CACHE_MAX {
            known.retain(|_, (_, at)| at.elapsed() < ttl);
            if known.len() >= CACHE_MAX {
                known.clear();
            }
        }
        known.insert(id.to_owned(), (k, Instant::now()));
    }

    /// Forgets token `id` (revoked here: refused here at once).
    fn forget(&self, id: &str) {
        self.known.lock().expect("token cache").remove(id);
    }

    /// Whether the use of `id` is due to be recorded (at most once per [`TOUCH_EVERY`]).
    fn touch_due(&self, id: &str) -> bool {
        let mut touched = self.touched.lock().expect("token uses");
        if touched.get(id).is_some_and(|at| at.elapsed() < TOUCH_EVERY) {
            return false;
        }
        if touched.len() >= CACHE_MAX {
            touched.retain(|_, at| at.elapsed() < TOUCH_EVERY);
        }
        touched.insert(id.to_owned(), Instant::now());
        true
    }
}

/// Checks `secret` (an API token's) against the catalog, through the instance's [`TokenCache`];
/// Ok(Err) when it is refused, Err when the catalog could not be read.
pub async fn verify(ctx: &Context, secret: &str) -> Result<std::result::Result<Grant, Refusal>> {
    let Some(id) = secret_id(secret) else {
        return Ok(Err(Refusal::Unknown));
    };
    let ttl = ctx.config.token_cache_ttl;
    let known = match ctx.tokens.get(id, ttl) {
        Some(k) => k,
        None => {
            let (mut conn, _) = ctx.db.read_prefer_primary().await?;
            let known = db::tokens::get(&mut conn, id).await?.and_then(|r| {
                let mut sha256 = [0u8; 32];
                hex::decode_to_slice(&r.secret_sha256, &mut sha256).ok()?;
                Some(Known {
                    sha256,
                    expires_at: r.expires_at,
                    revoked: r.revoked_at.is_some(),
                    grant: Grant {
                        owners: (!r.owners.is_empty()).then(|| r.owners.into()),
                        id: r.id,
                        name: r.name,
                        role: r.role,
                    },
                })
            });
            ctx.tokens.remember(id, known.clone(), ttl);
            known
        }
    };
    // Every refusal below is decided after the digest comparison, which takes the same time
    // whether or not the token exists.
    let presented = digest(secret);
    let Some(k) = known.filter(|k| equal(&k.sha256, &presented)) else {
        return Ok(Err(Refusal::Unknown));
    };
    if k.revoked {
        return Ok(Err(Refusal::Revoked));
    }
    if k.expires_at.is_some_and(|t| t <= ctx.now()) {
        return Ok(Err(Refusal::Expired));
    }
    if ctx.tokens.touch_due(&k.grant.id) {
        // Off the call's path.
        let (ctx, ids) = (ctx.clone(), vec![k.grant.id.clone()]);
        tokio::spawn(async move {
            let res = async { db::tokens::touch(&mut ctx.db.write().await?, &ids, ctx.now()).await }.await;
            if let Err(e) = res {
                tracing::debug!(error = %e, "could not record a token's use");
            }
        });
    }
    Ok(Ok(k.grant))
}

/// Compares two digests in time independent of where they differ.
fn equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_carry_their_id() {
        let id = "0193a1b2c3d4e5f60718293a4b5c6d7e";
        assert_eq!(secret_id(&format!("strata_{id}_abc_-def")), Some(id));
        assert_eq!(secret_id(&format!("strata_{id}_")), None);
        assert_eq!(secret_id(&format!("strata_{id}")), None);
        assert_eq!(secret_id(&format!("other_{id}_abc")), None);
        assert_eq!(secret_id("strata_xyz_abc"), None);
        assert_eq!(secret_id("plain-config-token"), None);
    }

    #[test]
    fn names_and_owners_are_checked() {
        assert!(check_token_name("ci-deployer@prod").is_ok());
        for bad in ["", "with space", "slash/", &"x".repeat(101)] {
            assert!(check_token_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_owner("tenant-42").is_ok());
        assert!(check_owner("").is_err());
        assert!(check_owner("a\nb").is_err());
    }
}
