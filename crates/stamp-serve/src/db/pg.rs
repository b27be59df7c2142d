//! The task store on PostgreSQL, shared by several `stamp serve` processes: a claim takes the
//! oldest claimable task with `SELECT … FOR UPDATE SKIP LOCKED` and sets its lease in the same
//! transaction, so two processes never take the same task; heartbeats and finishes only
//! succeed for the lease's owner, so a process whose lease lapsed and was taken over learns
//! it and stops.
//!
//! Connections come from a small pool ([`MAX_CONNECTIONS`]), opened on demand and dropped
//! when broken (a restarted server is reconnected to on the next call).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use postgres::{Client, NoTls, Row};

use super::common::{
    self, IMAGE_COLUMNS, ImageRow, SNAPSHOT_COLUMNS, SnapshotRow, TAGGED_TABLES, TASK_COLUMNS,
    TaskRow, signed,
};
use super::schema::{self, Dialect};
use super::{Page, TaskEnd, TaskQuery, TaskStore, TaskUpdate};
use crate::task::{ImageRecord, Millis, NewTask, SnapshotRecord, Task, TaskKind, TaskState};
use crate::{Error, Result};

/// Connections a process keeps open at most: enough for the workers and API threads of one
/// process without exhausting the server's `max_connections` (100 by default) when several
/// processes share it.
pub const MAX_CONNECTIONS: usize = 8;

/// How long connecting may take when the URL does not say (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The advisory lock key that serialises schema migrations between processes ("stamp").
const MIGRATION_LOCK: i64 = 0x0073_7461_6d70;

/// The task store in a PostgreSQL database.
pub struct PgStore {
    config: postgres::Config,
    /// The URL without its password, for error messages.
    label: String,
    pool: Mutex<PoolState>,
    returned: Condvar,
}

struct PoolState {
    idle: Vec<Client>,
    open: usize,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("database", &self.label)
            .finish()
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user@host/db`; a Unix socket directory
    /// as a percent-encoded host) and creates or migrates its schema.
    pub fn connect(url: &str) -> Result<PgStore> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| Error::Config(format!("--db {}: {e}", redact(url))))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let store = PgStore {
            config,
            label: redact(url),
            pool: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
            }),
            returned: Condvar::new(),
        };
        store.with("migration", migrate)?;
        Ok(store)
    }

    fn state(&self) -> MutexGuard<'_, PoolState> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on a pooled connection; a failure becomes [`Error::Db`] naming `what`. When a
    /// pooled connection turns out to be broken (the server restarted or ended it), it and the
    /// idle ones are dropped and `f` runs once more on a new connection: the server rolled
    /// back what the broken one had not committed.
    fn with<T>(
        &self,
        what: &str,
        f: impl Fn(&mut Client) -> std::result::Result<T, PgError>,
    ) -> Result<T> {
        let (mut client, reused) = self.take().map_err(|e| self.err(what, e))?;
        let r = f(&mut client);
        // Not an error the server sent: the connection broke (or a row did not decode, which
        // fails again the same way).
        let broken = matches!(&r, Err(PgError::Pg(e)) if e.as_db_error().is_none());
        if !(broken && reused) {
            self.give_back(client);
            return r.map_err(|e| self.err(what, e));
        }
        drop(client);
        let stale = std::mem::take(&mut self.state().idle);
        self.forget(stale.len() + 1);
        drop(stale);
        let (mut client, _) = self.take().map_err(|e| self.err(what, e))?;
        let r = f(&mut client);
        self.give_back(client);
        r.map_err(|e| self.err(what, e))
    }

    /// Takes an idle connection (`true`) or opens one (`false`), waiting while
    /// [`MAX_CONNECTIONS`] are in use.
    fn take(&self) -> std::result::Result<(Client, bool), PgError> {
        let mut st = self.state();
        loop {
            if let Some(c) = st.idle.pop() {
                if !c.is_closed() {
                    return Ok((c, true));
                }
                st.open = st.open.saturating_sub(1);
                continue;
            }
            if st.open < MAX_CONNECTIONS {
                st.open += 1;
                drop(st);
                return match self.config.connect(NoTls) {
                    Ok(c) => Ok((c, false)),
                    Err(e) => {
                        self.forget(1);
                        Err(PgError::Pg(e))
                    }
                };
            }
            st = self.returned.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Counts `n` connections as closed, making room for new ones.
    fn forget(&self, n: usize) {
        let mut st = self.state();
        st.open = st.open.saturating_sub(n);
        drop(st);
        self.returned.notify_all();
    }

    fn give_back(&self, client: Client) {
        if client.is_closed() {
            drop(client);
            self.forget(1);
            return;
        }
        self.state().idle.push(client);
        self.returned.notify_one();
    }

    fn err(&self, what: &str, e: PgError) -> Error {
        match e {
            PgError::Pg(e) => Error::Db(format!("postgres {}: {what}: {}", self.label, detail(&e))),
            PgError::Store(e) => e,
        }
    }
}

/// A failure inside a pooled call: from the server, or from checking what it returned.
enum PgError {
    Pg(postgres::Error),
    Store(Error),
}

impl From<postgres::Error> for PgError {
    fn from(e: postgres::Error) -> PgError {
        PgError::Pg(e)
    }
}

impl From<Error> for PgError {
    fn from(e: Error) -> PgError {
        PgError::Store(e)
    }
}

/// The server's message too: a `postgres::Error` alone says only "db error".
fn detail(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{e}: {db}"),
        None => e.to_string(),
    }
}

/// `url` with any password replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

fn migrate(c: &mut Client) -> std::result::Result<(), PgError> {
    let mut tx = c.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(schema::CREATE_VERSION_TABLE)?;
    let found: i64 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])?
        .try_get(0)?;
    schema::check_version(found, "postgres")?;
    for (version, statements) in schema::migrations(Dialect::Postgres) {
        if version <= found {
            continue;
        }
        for s in &statements {
            tx.batch_execute(s)?;
        }
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&version],
        )?;
    }
    tx.commit()?;
    Ok(())
}

fn task_row(r: &Row) -> std::result::Result<TaskRow, PgError> {
    Ok(TaskRow {
        id: r.try_get(0)?,
        tenant: r.try_get(1)?,
        kind: r.try_get(2)?,
        state: r.try_get(3)?,
        status_message: r.try_get(4)?,
        progress: r.try_get(5)?,
        bytes_converted: r.try_get(6)?,
        request: r.try_get(7)?,
        client_token: r.try_get(8)?,
        description: r.try_get(9)?,
        tags: r.try_get(10)?,
        result: r.try_get(11)?,
        checkpoint: r.try_get(12)?,
        scratch_bytes: r.try_get(13)?,
        lease_owner: r.try_get(14)?,
        lease_expires: r.try_get(15)?,
        attempts: r.try_get(16)?,
        created_at: r.try_get(17)?,
        updated_at: r.try_get(18)?,
        finished_at: r.try_get(19)?,
    })
}

fn task(r: &Row) -> std::result::Result<Task, PgError> {
    Ok(task_row(r)?.into_task()?)
}

fn snapshot(r: &Row) -> std::result::Result<SnapshotRecord, PgError> {
    Ok(SnapshotRow {
        id: r.try_get(0)?,
        tenant: r.try_get(1)?,
        object_key: r.try_get(2)?,
        format: r.try_get(3)?,
        size: r.try_get(4)?,
        description: r.try_get(5)?,
        task_id: r.try_get(6)?,
        created_at: r.try_get(7)?,
    }
    .into_record()?)
}

fn image(r: &Row) -> std::result::Result<ImageRecord, PgError> {
    Ok(ImageRow {
        id: r.try_get(0)?,
        tenant: r.try_get(1)?,
        name: r.try_get(2)?,
        description: r.try_get(3)?,
        architecture: r.try_get(4)?,
        boot_mode: r.try_get(5)?,
        platform: r.try_get(6)?,
        snapshot_ids: r.try_get(7)?,
        state: r.try_get(8)?,
        tags: r.try_get(9)?,
        task_id: r.try_get(10)?,
        created_at: r.try_get(11)?,
    }
    .into_record()?)
}

/// A next token as the `(created_at, id)` query parameters (both null without a token).
fn cursor(token: Option<&str>) -> Result<(Option<i64>, Option<String>)> {
    Ok(match token {
        Some(t) => {
            let c = common::decode_token(t)?;
            (Some(c.created_at), Some(c.id))
        }
        None => (None, None),
    })
}

impl TaskStore for PgStore {
    fn create_task(&self, t: &NewTask, now: Millis) -> Result<Task> {
        let request = common::pairs_to_json(&t.request)?;
        let tags = common::pairs_to_json(&t.tags)?;
        let insert = format!(
            "INSERT INTO tasks (id, tenant, kind, state, status_message, request, client_token,
                description, tags, created_at, updated_at)
             VALUES ($1, $2, $3, 'active', 'pending', $4, $5, $6, $7, $8, $8)
             ON CONFLICT (tenant, client_token) WHERE client_token IS NOT NULL DO NOTHING
             RETURNING {TASK_COLUMNS}"
        );
        let existing =
            format!("SELECT {TASK_COLUMNS} FROM tasks WHERE tenant = $1 AND client_token = $2");
        self.with("create task", |c| {
            let rows = c.query(
                &insert,
                &[
                    &t.id,
                    &t.tenant,
                    &t.kind.as_str(),
                    &request,
                    &t.client_token,
                    &t.description,
                    &tags,
                    &now,
                ],
            )?;
            match rows.first() {
                Some(r) => task(r),
                // The token's task committed before ours: ON CONFLICT saw it, so it is visible.
                None => task(&c.query_one(&existing, &[&t.tenant, &t.client_token])?),
            }
        })
    }

    fn task(&self, tenant: &str, id: &str) -> Result<Option<Task>> {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE tenant = $1 AND id = $2");
        self.with("read task", |c| {
            c.query_opt(&sql, &[&tenant, &id])?
                .as_ref()
                .map(task)
                .transpose()
        })
    }

    fn tasks(&self, tenant: &str, q: &TaskQuery) -> Result<Page<Task>> {
        common::check_ids(&q.ids)?;
        let kinds: Vec<&str> = q.kinds.iter().map(|k| k.as_str()).collect();
        let (after_at, after_id) = cursor(q.next_token.as_deref())?;
        let limit = i64::try_from(common::fetch_limit(q.max_results)).unwrap_or(i64::MAX);
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks
             WHERE tenant = $1
               AND (cardinality($2::text[]) = 0 OR kind = ANY($2))
               AND (cardinality($3::text[]) = 0 OR id = ANY($3))
               AND ($4::bigint IS NULL OR created_at > $4 OR (created_at = $4 AND id > $5))
             ORDER BY created_at, id LIMIT $6"
        );
        let tasks = self.with("list tasks", |c| {
            c.query(
                &sql,
                &[&tenant, &kinds, &q.ids, &after_at, &after_id, &limit],
            )?
            .iter()
            .map(task)
            .collect::<std::result::Result<Vec<_>, _>>()
        })?;
        Ok(common::page(tasks, q.max_results, |t| {
            (t.created_at, t.id.as_str())
        }))
    }

    fn cancel(&self, tenant: &str, id: &str, reason: &str, now: Millis) -> Result<Option<Task>> {
        let update = format!(
            "UPDATE tasks SET state = 'cancelling', status_message = $3, updated_at = $4
             WHERE tenant = $1 AND id = $2 AND state = 'active'
             RETURNING {TASK_COLUMNS}"
        );
        let read = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE tenant = $1 AND id = $2");
        self.with("cancel task", |c| {
            if let Some(r) = c.query_opt(&update, &[&tenant, &id, &reason, &now])? {
                return task(&r).map(Some);
            }
            c.query_opt(&read, &[&tenant, &id])?
                .as_ref()
                .map(task)
                .transpose()
        })
    }

    fn claim(
        &self,
        owner: &str,
        lease: Duration,
        scratch_free: u64,
        now: Millis,
    ) -> Result<Option<Task>> {
        let scratch_free = i64::try_from(scratch_free).unwrap_or(i64::MAX);
        let expires = common::expiry(now, lease);
        let take = format!(
            "UPDATE tasks SET lease_owner = $2, lease_expires = $3, attempts = attempts + 1,
                updated_at = $4
             WHERE id = $1 RETURNING {TASK_COLUMNS}"
        );
        self.with("claim", |c| {
            let mut tx = c.transaction()?;
            // SKIP LOCKED: a task another process is claiming right now is passed over, not
            // waited for; FOR UPDATE re-checks the lease on the row's latest version.
            let found = tx.query_opt(
                "SELECT id FROM tasks
                 WHERE state IN ('active', 'cancelling')
                   AND (lease_owner IS NULL OR lease_expires IS NULL OR lease_expires <= $1)
                   AND scratch_bytes <= $2
                 ORDER BY created_at, id LIMIT 1
                 FOR UPDATE SKIP LOCKED",
                &[&now, &scratch_free],
            )?;
            let Some(found) = found else {
                return Ok(None);
            };
            let id: String = found.try_get(0)?;
            let row = tx.query_one(&take, &[&id, &owner, &expires, &now])?;
            let t = task(&row)?;
            tx.commit()?;
            Ok(Some(t))
        })
    }

    fn heartbeat(
        &self,
        owner: &str,
        id: &str,
        lease: Duration,
        update: &TaskUpdate,
        now: Millis,
    ) -> Result<Option<Task>> {
        let bytes = update
            .bytes_converted
            .map(|b| signed(b, "bytes converted"))
            .transpose()?;
        let progress = update.progress.map(|p| i64::from(p.min(100)));
        let checkpoint = common::json_to_text(update.checkpoint.as_ref());
        let expires = common::expiry(now, lease);
        let sql = format!(
            "UPDATE tasks SET lease_expires = $3, updated_at = $4,
                status_message = CASE WHEN state = 'cancelling' THEN status_message
                    ELSE COALESCE($5, status_message) END,
                progress = COALESCE($6, progress),
                bytes_converted = COALESCE($7, bytes_converted),
                checkpoint = COALESCE($8, checkpoint)
             WHERE id = $1 AND lease_owner = $2
             RETURNING {TASK_COLUMNS}"
        );
        self.with("heartbeat", |c| {
            c.query_opt(
                &sql,
                &[
                    &id,
                    &owner,
                    &expires,
                    &now,
                    &update.status_message,
                    &progress,
                    &bytes,
                    &checkpoint,
                ],
            )?
            .as_ref()
            .map(task)
            .transpose()
        })
    }

    fn finish(&self, owner: &str, id: &str, end: &TaskEnd, now: Millis) -> Result<bool> {
        common::check_end(end.state)?;
        let result = common::json_to_text(end.result.as_ref());
        let n = self.with("finish task", |c| {
            Ok(c.execute(
                "UPDATE tasks SET state = $3, status_message = $4, result = $5,
                    finished_at = $6, updated_at = $6, lease_owner = NULL, lease_expires = NULL
                 WHERE id = $1 AND lease_owner = $2",
                &[
                    &id,
                    &owner,
                    &end.state.as_str(),
                    &end.status_message,
                    &result,
                    &now,
                ],
            )?)
        })?;
        Ok(n > 0)
    }

    fn set_scratch(&self, id: &str, bytes: u64) -> Result<()> {
        let bytes = signed(bytes, "scratch bytes")?;
        self.with("set scratch estimate", |c| {
            c.execute(
                "UPDATE tasks SET scratch_bytes = $2 WHERE id = $1",
                &[&id, &bytes],
            )?;
            Ok(())
        })
    }

    fn purge(&self, before: Millis) -> Result<u64> {
        self.with("purge tasks", |c| {
            Ok(c.execute(
                "DELETE FROM tasks WHERE finished_at IS NOT NULL AND finished_at < $1
                   AND state IN ('completed', 'cancelled')",
                &[&before],
            )?)
        })
    }

    fn counts(&self) -> Result<Vec<(TaskKind, TaskState, u64)>> {
        let rows = self.with("count tasks", |c| {
            c.query(
                "SELECT kind, state, COUNT(*) FROM tasks GROUP BY kind, state ORDER BY kind, state",
                &[],
            )?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<std::result::Result<Vec<(String, String, i64)>, PgError>>()
        })?;
        rows.into_iter()
            .map(|(k, s, n)| common::counted(&k, &s, n))
            .collect()
    }

    fn put_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
        let size = signed(s.size, "snapshot size")?;
        let n = self.with("store snapshot", |c| {
            Ok(c.execute(
                "INSERT INTO snapshots (id, tenant, object_key, format, size, description,
                    task_id, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (id) DO UPDATE SET object_key = excluded.object_key,
                    format = excluded.format, size = excluded.size,
                    description = excluded.description, task_id = excluded.task_id,
                    created_at = excluded.created_at
                 WHERE snapshots.tenant = excluded.tenant",
                &[
                    &s.id,
                    &s.tenant,
                    &s.object_key,
                    &s.format,
                    &size,
                    &s.description,
                    &s.task_id,
                    &s.created_at,
                ],
            )?)
        })?;
        if n == 0 {
            return Err(Error::Db(format!(
                "postgres {}: store snapshot: {} belongs to another tenant",
                self.label, s.id
            )));
        }
        Ok(())
    }

    fn snapshot(&self, tenant: &str, id: &str) -> Result<Option<SnapshotRecord>> {
        let sql = format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE tenant = $1 AND id = $2");
        self.with("read snapshot", |c| {
            c.query_opt(&sql, &[&tenant, &id])?
                .as_ref()
                .map(snapshot)
                .transpose()
        })
    }

    fn put_image(&self, i: &ImageRecord) -> Result<()> {
        let snapshot_ids = serde_json::to_string(&i.snapshot_ids)
            .map_err(|e| Error::Db(format!("image {}: encoding snapshot ids: {e}", i.id)))?;
        let tags = common::pairs_to_json(&i.tags)?;
        let n = self.with("store image", |c| {
            Ok(c.execute(
                "INSERT INTO images (id, tenant, name, description, architecture, boot_mode,
                    platform, snapshot_ids, state, tags, task_id, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name,
                    description = excluded.description, architecture = excluded.architecture,
                    boot_mode = excluded.boot_mode, platform = excluded.platform,
                    snapshot_ids = excluded.snapshot_ids, state = excluded.state,
                    tags = excluded.tags, task_id = excluded.task_id,
                    created_at = excluded.created_at
                 WHERE images.tenant = excluded.tenant",
                &[
                    &i.id,
                    &i.tenant,
                    &i.name,
                    &i.description,
                    &i.architecture,
                    &i.boot_mode,
                    &i.platform,
                    &snapshot_ids,
                    &i.state,
                    &tags,
                    &i.task_id,
                    &i.created_at,
                ],
            )?)
        })?;
        if n == 0 {
            return Err(Error::Db(format!(
                "postgres {}: store image: {} belongs to another tenant",
                self.label, i.id
            )));
        }
        Ok(())
    }

    fn image(&self, tenant: &str, id: &str) -> Result<Option<ImageRecord>> {
        let sql = format!("SELECT {IMAGE_COLUMNS} FROM images WHERE tenant = $1 AND id = $2");
        self.with("read image", |c| {
            c.query_opt(&sql, &[&tenant, &id])?
                .as_ref()
                .map(image)
                .transpose()
        })
    }

    fn images(
        &self,
        tenant: &str,
        ids: &[String],
        max_results: Option<usize>,
        next_token: Option<&str>,
    ) -> Result<Page<ImageRecord>> {
        common::check_ids(ids)?;
        let (after_at, after_id) = cursor(next_token)?;
        let limit = i64::try_from(common::fetch_limit(max_results)).unwrap_or(i64::MAX);
        let sql = format!(
            "SELECT {IMAGE_COLUMNS} FROM images
             WHERE tenant = $1
               AND (cardinality($2::text[]) = 0 OR id = ANY($2))
               AND ($3::bigint IS NULL OR created_at > $3 OR (created_at = $3 AND id > $4))
             ORDER BY created_at, id LIMIT $5"
        );
        let images = self.with("list images", |c| {
            c.query(&sql, &[&tenant, &ids, &after_at, &after_id, &limit])?
                .iter()
                .map(image)
                .collect::<std::result::Result<Vec<_>, _>>()
        })?;
        Ok(common::page(images, max_results, |i| {
            (i.created_at, i.id.as_str())
        }))
    }

    fn delete_image(&self, tenant: &str, id: &str) -> Result<bool> {
        let n = self.with("delete image", |c| {
            Ok(c.execute(
                "DELETE FROM images WHERE tenant = $1 AND id = $2",
                &[&tenant, &id],
            )?)
        })?;
        Ok(n > 0)
    }

    fn set_tags(&self, tenant: &str, id: &str, tags: &[(String, String)]) -> Result<bool> {
        self.edit_tags(tenant, id, |stored| common::merge_tags(stored, id, tags))
    }

    fn delete_tags(
        &self,
        tenant: &str,
        id: &str,
        tags: &[(String, Option<String>)],
    ) -> Result<bool> {
        self.edit_tags(tenant, id, |stored| common::remove_tags(stored, id, tags))
    }

    fn tags(&self, tenant: &str, id: &str) -> Result<Option<Vec<(String, String)>>> {
        self.with("read tags", |c| {
            for table in TAGGED_TABLES {
                let sql = format!("SELECT tags FROM {table} WHERE tenant = $1 AND id = $2");
                if let Some(r) = c.query_opt(&sql, &[&tenant, &id])? {
                    let stored: String = r.try_get(0)?;
                    return Ok(Some(common::tags_from_text(&stored, id)?));
                }
            }
            Ok(None)
        })
    }
}

impl PgStore {
    /// Replaces the tags of the tenant's resource `id` by `edit` of them, the row locked for
    /// the transaction; false if the tenant has no such resource.
    fn edit_tags(
        &self,
        tenant: &str,
        id: &str,
        edit: impl Fn(&str) -> Result<String>,
    ) -> Result<bool> {
        self.with("tags", |c| {
            let mut tx = c.transaction()?;
            for table in TAGGED_TABLES {
                let read =
                    format!("SELECT tags FROM {table} WHERE tenant = $1 AND id = $2 FOR UPDATE");
                if let Some(r) = tx.query_opt(&read, &[&tenant, &id])? {
                    let stored: String = r.try_get(0)?;
                    let tags = edit(&stored)?;
                    let write =
                        format!("UPDATE {table} SET tags = $3 WHERE tenant = $1 AND id = $2");
                    tx.execute(&write, &[&tenant, &id, &tags])?;
                    tx.commit()?;
                    return Ok(true);
                }
            }
            Ok(false)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redact("postgres://u:secret@db:5432/x"),
            "postgres://u:***@db:5432/x"
        );
        assert_eq!(redact("postgres://u@db/x"), "postgres://u@db/x");
        assert_eq!(redact("postgres://db/x"), "postgres://db/x");
    }

    #[test]
    fn bad_urls_are_config_errors() {
        assert!(matches!(
            PgStore::connect("postgres://u@h:notaport/x"),
            Err(Error::Config(_))
        ));
    }
}
