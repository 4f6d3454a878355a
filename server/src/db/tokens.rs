//! Bearer tokens managed by API: one row per token, found by the id its secret carries, holding
//! only the secret's SHA-256.

use chrono::NaiveDateTime;
use diesel::{OptionalExtension, prelude::*};
use diesel_async::RunQueryDsl;

use super::{Conn, Error, Result};
use crate::{config::Role, db_run, model::UnknownValue};

/// A token's catalog row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// Id (UUIDv7 in simple form: sorts by creation).
    pub id: String,
    /// Name for people and records.
    pub name: String,
    /// Granted role.
    pub role: Role,
    /// File owners it is limited to; empty: not scoped.
    pub owners: Vec<String>,
    /// Hex SHA-256 of the whole secret.
    pub secret_sha256: String,
    /// Who created it.
    pub created_by: String,
    /// When (the database's time).
    pub created_at: NaiveDateTime,
    /// When it stops working.
    pub expires_at: Option<NaiveDateTime>,
    /// Last recorded use.
    pub last_used_at: Option<NaiveDateTime>,
    /// When it was revoked.
    pub revoked_at: Option<NaiveDateTime>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
}

/// The columns as read; [`TokenRow`]'s `TryFrom` is the one place their text is parsed.
#[derive(Queryable)]
struct Stored {
    id: String,
    name: String,
    role: String,
    owners: String,
    secret_sha256: String,
    created_by: String,
    created_at: NaiveDateTime,
    expires_at: Option<NaiveDateTime>,
    last_used_at: Option<NaiveDateTime>,
    revoked_at: Option<NaiveDateTime>,
    revoked_by: Option<String>,
}

impl TryFrom<Stored> for TokenRow {
    type Error = Error;
    fn try_from(r: Stored) -> Result<Self> {
        Ok(TokenRow {
            role: r.role.parse().map_err(|_| UnknownValue { what: "token role", value: r.role.clone() })?,
            owners: serde_json::from_str(&r.owners)
                .map_err(|_| UnknownValue { what: "token owners", value: r.owners.clone() })?,
            id: r.id,
            name: r.name,
            secret_sha256: r.secret_sha256,
            created_by: r.created_by,
            created_at: r.created_at,
            expires_at: r.expires_at,
            last_used_at: r.last_used_at,
            revoked_at: r.revoked_at,
            revoked_by: r.revoked_by,
        })
    }
}

/// Stores a new token.
pub async fn insert(conn: &mut Conn, r: &TokenRow) -> Result<()> {
    let owners = serde_json::to_string(&r.owners).expect("strings serialize");
    db_run!(conn, {
        use schema::tokens as t;
        diesel::insert_into(t::table)
            .values((
                t::id.eq(&r.id),
                t::name.eq(&r.name),
                t::role.eq(r.role.as_str()),
                t::owners.eq(&owners),
                t::secret_sha256.eq(&r.secret_sha256),
                t::created_by.eq(&r.created_by),
                t::created_at.eq(r.created_at),
                t::expires_at.eq(r.expires_at),
                t::last_used_at.eq(r.last_used_at),
                t::revoked_at.eq(r.revoked_at),
                t::revoked_by.eq(&r.revoked_by),
            ))
            .execute(conn)
            .await?
    });
    Ok(())
}

/// The token `id`.
pub async fn get(conn: &mut Conn, id: &str) -> Result<Option<TokenRow>> {
    let row = db_run!(conn, {
        use schema::tokens as t;
        t::table.filter(t::id.eq(id)).first::<Stored>(conn).await.optional()?
    });
    row.map(TokenRow::try_from).transpose()
}

/// Tokens newest first, those older than `before` (an id) when given; only the ones that work at
/// `now` (not revoked, not expired) unless `all`.
pub async fn list(
    conn: &mut Conn,
    before: Option<&str>,
    all: bool,
    now: NaiveDateTime,
    limit: i64,
) -> Result<Vec<TokenRow>> {
    let rows = db_run!(conn, {
        use schema::tokens as t;
        let mut q = t::table.order(t::id.desc()).limit(limit).into_boxed();
        if let Some(b) = before {
            q = q.filter(t::id.lt(b));
        }
        if !all {
            q = q.filter(t::revoked_at.is_null()).filter(t::expires_at.is_null().or(t::expires_at.gt(now)));
        }
        q.load::<Stored>(conn).await?
    });
    rows.into_iter().map(TokenRow::try_from).collect()
}

/// Revokes token `id` by `by` at `now` unless it is revoked already; returns it as it is then
/// (None: no such token).
pub async fn revoke(conn: &mut Conn, id: &str, by: &str, now: NaiveDateTime) -> Result<Option<TokenRow>> {
    db_run!(conn, {
        use schema::tokens as t;
        diesel::update(t::table.filter(t::id.eq(id)).filter(t::revoked_at.is_null()))
            .set((t::revoked_at.eq(now), t::revoked_by.eq(by)))
            .execute(conn)
            .await?
    });
    get(conn, id).await
}

/// Records that tokens `ids` were used at `now` (never moving a later mark back).
pub async fn touch(conn: &mut Conn, ids: &[String], now: NaiveDateTime) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    db_run!(conn, {
        use schema::tokens as t;
        diesel::update(t::table.filter(t::id.eq_any(ids)).filter(t::last_used_at.is_null().or(t::last_used_at.lt(now))))
            .set(t::last_used_at.eq(now))
            .execute(conn)
            .await?
    });
    Ok(())
}
