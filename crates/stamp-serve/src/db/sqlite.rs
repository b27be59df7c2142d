//! The task store on SQLite: one file in WAL mode, one writing connection behind a mutex and
//! a few read-only ones ([`READERS`]; WAL lets them read while the writer commits), claims
//! and read-modify-writes in `BEGIN IMMEDIATE` transactions so that two processes on one file
//! (a restart overlapping the old process) still give each task to one of them.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior, params, params_from_iter,
};

use super::common::{
    self, IMAGE_COLUMNS, ImageRow, SNAPSHOT_COLUMNS, SnapshotRow, TAGGED_TABLES, TASK_COLUMNS,
    TaskRow, signed,
};
use super::schema::{self, Dialect};
use super::{Page, TaskEnd, TaskQuery, TaskStore, TaskUpdate};
use crate::task::{ImageRecord, Millis, NewTask, SnapshotRecord, Task, TaskKind, TaskState};
use crate::{Error, Result};

/// How long a statement waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Read-only connections a file store keeps besides the writer: listings and lookups from
/// the API's threads do not queue behind a commit's fsync.
pub const READERS: usize = 4;

/// The task store in an SQLite file.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// Read-only connections (none in memory: a private in-memory database has one).
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    /// The file, for error messages.
    label: String,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.label)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the store in the file `path`, in WAL mode, and creates or
    /// migrates its schema.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let label = path.display().to_string();
        let conn = Connection::open(path).map_err(|e| err(&label, "open", e))?;
        let mut store = Self::init(conn, label)?;
        for _ in 0..READERS {
            let r = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(store.e("open a reader"))?;
            r.busy_timeout(BUSY_TIMEOUT)
                .map_err(store.e("reader busy_timeout"))?;
            stable_plans(&r).map_err(store.e("reader query planner"))?;
            store.readers.push(Mutex::new(r));
        }
        Ok(store)
    }

    /// A private store in memory (gone when dropped): for tests and `sqlite::memory:`.
    pub fn open_in_memory() -> Result<SqliteStore> {
        let label = ":memory:".to_string();
        let conn = Connection::open_in_memory().map_err(|e| err(&label, "open", e))?;
        Self::init(conn, label)
    }

    fn init(mut conn: Connection, label: String) -> Result<SqliteStore> {
        let e = |what: &'static str| {
            let label = label.clone();
            move |e: rusqlite::Error| err(&label, what, e)
        };
        conn.busy_timeout(BUSY_TIMEOUT).map_err(e("busy_timeout"))?;
        stable_plans(&conn).map_err(e("query planner"))?;
        // WAL: readers never wait for the writer; FULL: a committed task survives power loss.
        // Switching to WAL takes the lock without SQLite's busy handler: when another process
        // opens the file at the same moment it fails at once with "database is locked", so it
        // is retried here for as long as the busy timeout.
        let began = std::time::Instant::now();
        loop {
            match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0)) {
                Ok(_) => break,
                Err(rusqlite::Error::SqliteFailure(f, _))
                    if f.code == rusqlite::ErrorCode::DatabaseBusy
                        && began.elapsed() < BUSY_TIMEOUT =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(other) => return Err(e("journal_mode")(other)),
            }
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(e("synchronous"))?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e("migration: begin"))?;
        tx.execute(schema::CREATE_VERSION_TABLE, [])
            .map_err(e("migration: schema_version"))?;
        let found: i64 = tx
            .query_row(
                "SELECT COALESCE(MAX(version), 0) FROM schema_version",
                [],
                |r| r.get(0),
            )
            .map_err(e("migration: read version"))?;
        schema::check_version(found, &label)?;
        for (version, statements) in schema::migrations(Dialect::Sqlite) {
            if version <= found {
                continue;
            }
            for s in &statements {
                tx.execute(s, []).map_err(e("migration"))?;
            }
            tx.execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                [version],
            )
            .map_err(e("migration: record version"))?;
        }
        tx.commit().map_err(e("migration: commit"))?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            readers: Vec::new(),
            next_reader: AtomicUsize::new(0),
            label,
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock rolled its transaction back (Transaction's drop), so
        // the connection is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A read-only connection: a free one if any, else the next in turn (the writer when
    /// there are none).
    fn reader(&self) -> MutexGuard<'_, Connection> {
        let n = self.readers.len();
        if n == 0 {
            return self.conn();
        }
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed) % n;
        for i in 0..n {
            match self.readers[(start + i) % n].try_lock() {
                Ok(g) => return g,
                Err(TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        self.readers[start]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn e(&self, what: &'static str) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
        move |e| err(&self.label, what, e)
    }
}

/// [`Error::Db`] for a failed SQLite call.
/// Turns on the query planner stability guarantee: without it, SQLite (built with STAT4, as
/// the bundled one is) marks a cached statement stale whenever a bound value could change its
/// plan, and re-parses it on every run; with it, each cached statement is planned once.
fn stable_plans(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map(|_| ())
}

fn err(label: &str, what: &str, e: rusqlite::Error) -> Error {
    Error::Db(format!("sqlite {label}: {what}: {e}"))
}

fn task_row(r: &Row<'_>) -> rusqlite::Result<TaskRow> {
    Ok(TaskRow {
        id: r.get(0)?,
        tenant: r.get(1)?,
        kind: r.get(2)?,
        state: r.get(3)?,
        status_message: r.get(4)?,
        progress: r.get(5)?,
        bytes_converted: r.get(6)?,
        request: r.get(7)?,
        client_token: r.get(8)?,
        description: r.get(9)?,
        tags: r.get(10)?,
        result: r.get(11)?,
        checkpoint: r.get(12)?,
        scratch_bytes: r.get(13)?,
        lease_owner: r.get(14)?,
        lease_expires: r.get(15)?,
        attempts: r.get(16)?,
        created_at: r.get(17)?,
        updated_at: r.get(18)?,
        finished_at: r.get(19)?,
    })
}

fn snapshot_row(r: &Row<'_>) -> rusqlite::Result<SnapshotRow> {
    Ok(SnapshotRow {
        id: r.get(0)?,
        tenant: r.get(1)?,
        object_key: r.get(2)?,
        format: r.get(3)?,
        size: r.get(4)?,
        description: r.get(5)?,
        task_id: r.get(6)?,
        created_at: r.get(7)?,
    })
}

fn image_row(r: &Row<'_>) -> rusqlite::Result<ImageRow> {
    Ok(ImageRow {
        id: r.get(0)?,
        tenant: r.get(1)?,
        name: r.get(2)?,
        description: r.get(3)?,
        architecture: r.get(4)?,
        boot_mode: r.get(5)?,
        platform: r.get(6)?,
        snapshot_ids: r.get(7)?,
        state: r.get(8)?,
        tags: r.get(9)?,
        task_id: r.get(10)?,
        created_at: r.get(11)?,
    })
}

/// `AND col IN (?, ?, …)` for `values` (nothing when empty), parameters appended to `params`.
fn in_list(sql: &mut String, params: &mut Vec<Value>, col: &str, values: &[String]) {
    if values.is_empty() {
        return;
    }
    sql.push_str(" AND ");
    sql.push_str(col);
    sql.push_str(" IN (");
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push('?');
        params.push(Value::Text(v.clone()));
    }
    sql.push(')');
}

/// `AND (created_at, id) > cursor` for a next token.
fn after(sql: &mut String, params: &mut Vec<Value>, token: Option<&str>) -> Result<()> {
    if let Some(t) = token {
        let c = common::decode_token(t)?;
        sql.push_str(" AND (created_at > ? OR (created_at = ? AND id > ?))");
        params.push(Value::Integer(c.created_at));
        params.push(Value::Integer(c.created_at));
        params.push(Value::Text(c.id));
    }
    Ok(())
}

impl TaskStore for SqliteStore {
    fn create_task(&self, t: &NewTask, now: Millis) -> Result<Task> {
        let request = common::pairs_to_json(&t.request)?;
        let tags = common::pairs_to_json(&t.tags)?;
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.e("create task: begin"))?;
        let sql = format!(
            "INSERT INTO tasks (id, tenant, kind, state, status_message, request, client_token,
                description, tags, created_at, updated_at)
             VALUES (?1, ?2, ?3, 'active', 'pending', ?4, ?5, ?6, ?7, ?8, ?8)
             ON CONFLICT (tenant, client_token) WHERE client_token IS NOT NULL DO NOTHING
             RETURNING {TASK_COLUMNS}"
        );
        let created = tx
            .query_row(
                &sql,
                params![
                    t.id,
                    t.tenant,
                    t.kind.as_str(),
                    request,
                    t.client_token,
                    t.description,
                    tags,
                    now
                ],
                task_row,
            )
            .optional()
            .map_err(self.e("create task"))?;
        let row = match created {
            Some(row) => row,
            None => tx
                .query_row(
                    &format!(
                        "SELECT {TASK_COLUMNS} FROM tasks WHERE tenant = ?1 AND client_token = ?2"
                    ),
                    params![t.tenant, t.client_token],
                    task_row,
                )
                .map_err(self.e("create task: read the task of the client token"))?,
        };
        tx.commit().map_err(self.e("create task: commit"))?;
        row.into_task()
    }

    fn task(&self, tenant: &str, id: &str) -> Result<Option<Task>> {
        let row = self
            .reader()
            .query_row(
                &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE tenant = ?1 AND id = ?2"),
                params![tenant, id],
                task_row,
            )
            .optional()
            .map_err(self.e("read task"))?;
        row.map(TaskRow::into_task).transpose()
    }

    fn tasks(&self, tenant: &str, q: &TaskQuery) -> Result<Page<Task>> {
        common::check_ids(&q.ids)?;
        let mut sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE tenant = ?");
        let mut params = vec![Value::Text(tenant.to_string())];
        let kinds: Vec<String> = q.kinds.iter().map(|k| k.as_str().to_string()).collect();
        in_list(&mut sql, &mut params, "kind", &kinds);
        in_list(&mut sql, &mut params, "id", &q.ids);
        after(&mut sql, &mut params, q.next_token.as_deref())?;
        sql.push_str(" ORDER BY created_at, id LIMIT ?");
        params.push(Value::Integer(
            i64::try_from(common::fetch_limit(q.max_results)).unwrap_or(i64::MAX),
        ));
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&sql).map_err(self.e("list tasks"))?;
        let rows = stmt
            .query_map(params_from_iter(params), task_row)
            .map_err(self.e("list tasks"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.e("list tasks"))?;
        drop(stmt);
        drop(conn);
        let tasks = rows
            .into_iter()
            .map(TaskRow::into_task)
            .collect::<Result<Vec<_>>>()?;
        Ok(common::page(tasks, q.max_results, |t| {
            (t.created_at, t.id.as_str())
        }))
    }

    fn cancel(&self, tenant: &str, id: &str, reason: &str, now: Millis) -> Result<Option<Task>> {
        let conn = self.conn();
        let updated = conn
            .query_row(
                &format!(
                    "UPDATE tasks SET state = 'cancelling', status_message = ?3, updated_at = ?4
                     WHERE tenant = ?1 AND id = ?2 AND state = 'active'
                     RETURNING {TASK_COLUMNS}"
                ),
                params![tenant, id, reason, now],
                task_row,
            )
            .optional()
            .map_err(self.e("cancel task"))?;
        drop(conn);
        match updated {
            Some(row) => row.into_task().map(Some),
            None => self.task(tenant, id),
        }
    }

    fn claim(
        &self,
        owner: &str,
        lease: Duration,
        scratch_free: u64,
        now: Millis,
    ) -> Result<Option<Task>> {
        let scratch_free = i64::try_from(scratch_free).unwrap_or(i64::MAX);
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.e("claim: begin"))?;
        let id: Option<String> = tx
            .query_row(
                "SELECT id FROM tasks
                 WHERE state IN ('active', 'cancelling')
                   AND (lease_owner IS NULL OR lease_expires IS NULL OR lease_expires <= ?1)
                   AND scratch_bytes <= ?2
                 ORDER BY created_at, id LIMIT 1",
                params![now, scratch_free],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.e("claim: find a task"))?;
        let Some(id) = id else {
            return Ok(None);
        };
        let row = tx
            .query_row(
                &format!(
                    "UPDATE tasks SET lease_owner = ?2, lease_expires = ?3,
                        attempts = attempts + 1, updated_at = ?4
                     WHERE id = ?1 RETURNING {TASK_COLUMNS}"
                ),
                params![id, owner, common::expiry(now, lease), now],
                task_row,
            )
            .map_err(self.e("claim: take the lease"))?;
        tx.commit().map_err(self.e("claim: commit"))?;
        row.into_task().map(Some)
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
        let row = self
            .conn()
            .query_row(
                &format!(
                    "UPDATE tasks SET lease_expires = ?3, updated_at = ?4,
                        status_message = CASE WHEN state = 'cancelling' THEN status_message
                            ELSE COALESCE(?5, status_message) END,
                        progress = COALESCE(?6, progress),
                        bytes_converted = COALESCE(?7, bytes_converted),
                        checkpoint = COALESCE(?8, checkpoint)
                     WHERE id = ?1 AND lease_owner = ?2
                     RETURNING {TASK_COLUMNS}"
                ),
                params![
                    id,
                    owner,
                    common::expiry(now, lease),
                    now,
                    update.status_message,
                    progress,
                    bytes,
                    checkpoint
                ],
                task_row,
            )
            .optional()
            .map_err(self.e("heartbeat"))?;
        row.map(TaskRow::into_task).transpose()
    }

    fn finish(&self, owner: &str, id: &str, end: &TaskEnd, now: Millis) -> Result<bool> {
        common::check_end(end.state)?;
        let result = common::json_to_text(end.result.as_ref());
        let n = self
            .conn()
            .execute(
                "UPDATE tasks SET state = ?3, status_message = ?4, result = ?5,
                    finished_at = ?6, updated_at = ?6, lease_owner = NULL, lease_expires = NULL
                 WHERE id = ?1 AND lease_owner = ?2",
                params![
                    id,
                    owner,
                    end.state.as_str(),
                    end.status_message,
                    result,
                    now
                ],
            )
            .map_err(self.e("finish task"))?;
        Ok(n > 0)
    }

    fn set_scratch(&self, id: &str, bytes: u64) -> Result<()> {
        let bytes = signed(bytes, "scratch bytes")?;
        self.conn()
            .execute(
                "UPDATE tasks SET scratch_bytes = ?2 WHERE id = ?1",
                params![id, bytes],
            )
            .map_err(self.e("set scratch estimate"))?;
        Ok(())
    }

    fn purge(&self, before: Millis) -> Result<u64> {
        let n = self
            .conn()
            .execute(
                "DELETE FROM tasks WHERE finished_at IS NOT NULL AND finished_at < ?1
                   AND state IN ('completed', 'cancelled')",
                [before],
            )
            .map_err(self.e("purge tasks"))?;
        Ok(n as u64)
    }

    fn counts(&self) -> Result<Vec<(TaskKind, TaskState, u64)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT kind, state, COUNT(*) FROM tasks GROUP BY kind, state ORDER BY kind, state",
            )
            .map_err(self.e("count tasks"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(self.e("count tasks"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.e("count tasks"))?;
        rows.into_iter()
            .map(|(k, s, n)| common::counted(&k, &s, n))
            .collect()
    }

    fn put_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
        let size = signed(s.size, "snapshot size")?;
        let n = self
            .conn()
            .execute(
                "INSERT INTO snapshots (id, tenant, object_key, format, size, description,
                    task_id, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (id) DO UPDATE SET object_key = excluded.object_key,
                    format = excluded.format, size = excluded.size,
                    description = excluded.description, task_id = excluded.task_id,
                    created_at = excluded.created_at
                 WHERE snapshots.tenant = excluded.tenant",
                params![
                    s.id,
                    s.tenant,
                    s.object_key,
                    s.format,
                    size,
                    s.description,
                    s.task_id,
                    s.created_at
                ],
            )
            .map_err(self.e("store snapshot"))?;
        if n == 0 {
            return Err(Error::Db(format!(
                "sqlite {}: store snapshot: {} belongs to another tenant",
                self.label, s.id
            )));
        }
        Ok(())
    }

    fn snapshot(&self, tenant: &str, id: &str) -> Result<Option<SnapshotRecord>> {
        let row = self
            .reader()
            .query_row(
                &format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE tenant = ?1 AND id = ?2"),
                params![tenant, id],
                snapshot_row,
            )
            .optional()
            .map_err(self.e("read snapshot"))?;
        row.map(SnapshotRow::into_record).transpose()
    }

    fn put_image(&self, i: &ImageRecord) -> Result<()> {
        let snapshot_ids = serde_json::to_string(&i.snapshot_ids)
            .map_err(|e| Error::Db(format!("image {}: encoding snapshot ids: {e}", i.id)))?;
        let tags = common::pairs_to_json(&i.tags)?;
        let n = self
            .conn()
            .execute(
                "INSERT INTO images (id, tenant, name, description, architecture, boot_mode,
                    platform, snapshot_ids, state, tags, task_id, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name,
                    description = excluded.description, architecture = excluded.architecture,
                    boot_mode = excluded.boot_mode, platform = excluded.platform,
                    snapshot_ids = excluded.snapshot_ids, state = excluded.state,
                    tags = excluded.tags, task_id = excluded.task_id,
                    created_at = excluded.created_at
                 WHERE images.tenant = excluded.tenant",
                params![
                    i.id,
                    i.tenant,
                    i.name,
                    i.description,
                    i.architecture,
                    i.boot_mode,
                    i.platform,
                    snapshot_ids,
                    i.state,
                    tags,
                    i.task_id,
                    i.created_at
                ],
            )
            .map_err(self.e("store image"))?;
        if n == 0 {
            return Err(Error::Db(format!(
                "sqlite {}: store image: {} belongs to another tenant",
                self.label, i.id
            )));
        }
        Ok(())
    }

    fn image(&self, tenant: &str, id: &str) -> Result<Option<ImageRecord>> {
        let row = self
            .reader()
            .query_row(
                &format!("SELECT {IMAGE_COLUMNS} FROM images WHERE tenant = ?1 AND id = ?2"),
                params![tenant, id],
                image_row,
            )
            .optional()
            .map_err(self.e("read image"))?;
        row.map(ImageRow::into_record).transpose()
    }

    fn images(
        &self,
        tenant: &str,
        ids: &[String],
        max_results: Option<usize>,
        next_token: Option<&str>,
    ) -> Result<Page<ImageRecord>> {
        common::check_ids(ids)?;
        let mut sql = format!("SELECT {IMAGE_COLUMNS} FROM images WHERE tenant = ?");
        let mut params = vec![Value::Text(tenant.to_string())];
        in_list(&mut sql, &mut params, "id", ids);
        after(&mut sql, &mut params, next_token)?;
        sql.push_str(" ORDER BY created_at, id LIMIT ?");
        params.push(Value::Integer(
            i64::try_from(common::fetch_limit(max_results)).unwrap_or(i64::MAX),
        ));
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&sql).map_err(self.e("list images"))?;
        let rows = stmt
            .query_map(params_from_iter(params), image_row)
            .map_err(self.e("list images"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.e("list images"))?;
        drop(stmt);
        drop(conn);
        let images = rows
            .into_iter()
            .map(ImageRow::into_record)
            .collect::<Result<Vec<_>>>()?;
        Ok(common::page(images, max_results, |i| {
            (i.created_at, i.id.as_str())
        }))
    }

    fn delete_image(&self, tenant: &str, id: &str) -> Result<bool> {
        let n = self
            .conn()
            .execute(
                "DELETE FROM images WHERE tenant = ?1 AND id = ?2",
                params![tenant, id],
            )
            .map_err(self.e("delete image"))?;
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
        let conn = self.reader();
        for table in TAGGED_TABLES {
            let stored: Option<String> = conn
                .query_row(
                    &format!("SELECT tags FROM {table} WHERE tenant = ?1 AND id = ?2"),
                    params![tenant, id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(self.e("read tags"))?;
            if let Some(stored) = stored {
                return common::tags_from_text(&stored, id).map(Some);
            }
        }
        Ok(None)
    }
}

impl SqliteStore {
    /// Replaces the tags of the tenant's resource `id` by `edit` of them, in one transaction;
    /// false if the tenant has no such resource.
    fn edit_tags(
        &self,
        tenant: &str,
        id: &str,
        edit: impl Fn(&str) -> Result<String>,
    ) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.e("tags: begin"))?;
        for table in TAGGED_TABLES {
            let stored: Option<String> = tx
                .query_row(
                    &format!("SELECT tags FROM {table} WHERE tenant = ?1 AND id = ?2"),
                    params![tenant, id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(self.e("tags: read"))?;
            if let Some(stored) = stored {
                let tags = edit(&stored)?;
                tx.execute(
                    &format!("UPDATE {table} SET tags = ?3 WHERE tenant = ?1 AND id = ?2"),
                    params![tenant, id, tags],
                )
                .map_err(self.e("tags: write"))?;
                tx.commit().map_err(self.e("tags: commit"))?;
                return Ok(true);
            }
        }
        Ok(false)
    }
}
