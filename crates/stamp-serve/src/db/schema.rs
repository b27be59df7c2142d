//! The schema, the same on SQLite and PostgreSQL, and its migrations.
//!
//! `schema_version` holds one row per migration applied; a store opens by applying, in one
//! transaction, every migration newer than the highest version recorded (refusing a database
//! written by a newer stamp). The tables:
//!
//! - `tasks`: every [`crate::task::Task`] field; `request` and `tags` as JSON arrays of
//!   `[key, value]` pairs, `result` and `checkpoint` as JSON text; the lease as `lease_owner`
//!   and `lease_expires` (milliseconds). A tenant's client tokens are unique.
//! - `snapshots`: [`crate::task::SnapshotRecord`] plus its `tags`.
//! - `images`: [`crate::task::ImageRecord`] with `snapshot_ids` and `tags` as JSON; names are
//!   unique among a tenant's images that are not deregistered.
//!
//! Integers are SQLite `INTEGER` (64-bit) and PostgreSQL `BIGINT`.

/// The SQL dialect a migration is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite 3.35 or later.
    Sqlite,
    /// PostgreSQL 12 or later.
    Postgres,
}

/// The schema version this build writes.
pub const VERSION: i64 = 1;

/// Creates the version table if it is missing.
pub const CREATE_VERSION_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL PRIMARY KEY)";

/// Migration 1: the tables and their indexes (written for SQLite; see [`migrations`]).
const V1: &[&str] = &[
    "CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        status_message TEXT,
        progress INTEGER NOT NULL DEFAULT 0,
        bytes_converted INTEGER NOT NULL DEFAULT 0,
        request TEXT NOT NULL,
        client_token TEXT,
        description TEXT,
        tags TEXT NOT NULL DEFAULT '[]',
        result TEXT,
        checkpoint TEXT,
        scratch_bytes INTEGER NOT NULL DEFAULT 0,
        lease_owner TEXT,
        lease_expires INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        finished_at INTEGER
    )",
    "CREATE UNIQUE INDEX tasks_client_token ON tasks (tenant, client_token)
        WHERE client_token IS NOT NULL",
    "CREATE INDEX tasks_by_tenant ON tasks (tenant, created_at, id)",
    "CREATE INDEX tasks_claimable ON tasks (created_at, id)
        WHERE state IN ('active', 'cancelling')",
    "CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL",
    "CREATE TABLE snapshots (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        object_key TEXT NOT NULL,
        format TEXT NOT NULL,
        size INTEGER NOT NULL,
        description TEXT,
        task_id TEXT NOT NULL,
        tags TEXT NOT NULL DEFAULT '[]',
        created_at INTEGER NOT NULL
    )",
    "CREATE INDEX snapshots_by_tenant ON snapshots (tenant, created_at, id)",
    "CREATE TABLE images (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        description TEXT,
        architecture TEXT NOT NULL,
        boot_mode TEXT,
        platform TEXT,
        snapshot_ids TEXT NOT NULL,
        state TEXT NOT NULL,
        tags TEXT NOT NULL DEFAULT '[]',
        task_id TEXT NOT NULL,
        created_at INTEGER NOT NULL
    )",
    "CREATE UNIQUE INDEX images_name ON images (tenant, name) WHERE state <> 'deregistered'",
    "CREATE INDEX images_by_tenant ON images (tenant, created_at, id)",
];

/// Every migration as `(version, statements)`, oldest first, in `dialect`.
pub fn migrations(dialect: Dialect) -> Vec<(i64, Vec<String>)> {
    let adapt = |s: &&str| match dialect {
        Dialect::Sqlite => s.to_string(),
        Dialect::Postgres => s.replace("INTEGER", "BIGINT"),
    };
    vec![(1, V1.iter().map(adapt).collect())]
}

/// [`crate::Error::Db`] if a database is at a version this build does not know.
pub fn check_version(found: i64, what: &str) -> crate::Result<()> {
    if found > VERSION {
        return Err(crate::Error::Db(format!(
            "{what}: schema version {found} is newer than this stamp's ({VERSION}); \
             upgrade stamp"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_migration_is_the_version() {
        for d in [Dialect::Sqlite, Dialect::Postgres] {
            let m = migrations(d);
            assert_eq!(m.last().map(|m| m.0), Some(VERSION));
            assert!(m.windows(2).all(|w| w[0].0 < w[1].0));
        }
        assert!(
            migrations(Dialect::Postgres)[0]
                .1
                .iter()
                .all(|s| !s.contains("INTEGER"))
        );
        assert!(check_version(VERSION + 1, "x").is_err());
    }
}
