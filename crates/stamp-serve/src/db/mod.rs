//! The task store: tasks, snapshots and images, on SQLite (the default: one process, a file)
//! or PostgreSQL (several `stamp serve` processes share it: claims with `FOR UPDATE SKIP
//! LOCKED`, leases renewed by heartbeats, taken over when they lapse).
//!
//! Every method is blocking; the HTTP layer calls them from a blocking thread. Tenants are
//! enforced here: a tenant never sees, changes or cancels another's records.
//!
//! [`open`] takes the `--db` value: `sqlite:PATH` ([`SqliteStore`]) or `postgres://…`
//! ([`PgStore`]). Both keep the same schema ([`schema`]): a `schema_version` table and
//! `tasks`, `snapshots`, `images`, with lists (a task's request, tags, an image's snapshot ids)
//! and results/checkpoints as JSON text columns; tags live in a `tags` column of the resource
//! they belong to (a JSON array of `[key, value]` pairs, in the order they were first set).
//! Listings are ordered by `(created_at, id)`; their next tokens are that pair of the last
//! record returned, base64url-encoded, so a page continues exactly where the previous ended
//! even while tasks are added.

use std::time::Duration;

use crate::task::{ImageRecord, Millis, NewTask, SnapshotRecord, Task, TaskKind, TaskState};
use crate::{Error, Result};

mod common;
mod pg;
pub mod schema;
mod sqlite;

pub use pg::PgStore;
pub use sqlite::SqliteStore;

/// The largest page a listing returns, whatever `max_results` asks (AWS's Describe calls
/// return at most 1000 per page too); the rest follows with the next token.
pub const MAX_PAGE: usize = 1000;

/// The most ids a listing may filter on (keeps the statement's parameter count bounded).
pub const MAX_IDS: usize = 1000;

/// The most tags a resource may have: AWS's limit per resource.
pub const MAX_TAGS: usize = 50;

/// Opens the task store named by a `--db` value: `sqlite:PATH` (created if missing;
/// `sqlite::memory:` for a private in-memory one) or `postgres://…`/`postgresql://…` (a
/// libpq-style URL; a Unix socket directory as a percent-encoded host). The schema is created
/// or migrated on open.
///
/// ```
/// use stamp_serve::db::{self, TaskQuery};
/// use stamp_serve::task::{NewTask, TaskKind};
///
/// let store = db::open("sqlite::memory:")?;
/// let task = NewTask {
///     id: TaskKind::ImportImage.new_id(),
///     tenant: "alice".into(),
///     kind: TaskKind::ImportImage,
///     request: vec![("Action".into(), "ImportImage".into())],
///     client_token: Some("token-1".into()),
///     description: None,
///     tags: vec![],
/// };
/// let created = store.create_task(&task, 1_000)?;
/// // The same client token again: the same task.
/// assert_eq!(store.create_task(&task, 2_000)?.id, created.id);
/// assert_eq!(store.tasks("alice", &TaskQuery::default())?.items, vec![created]);
/// # Ok::<(), stamp_serve::Error>(())
/// ```
pub fn open(url: &str) -> Result<Box<dyn TaskStore>> {
    if let Some(path) = url.strip_prefix("sqlite:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if path == ":memory:" {
            return Ok(Box::new(SqliteStore::open_in_memory()?));
        }
        if path.is_empty() {
            return Err(Error::Config(format!("--db {url}: no path after sqlite:")));
        }
        return Ok(Box::new(SqliteStore::open(std::path::Path::new(path))?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Box::new(PgStore::connect(url)?));
    }
    Err(Error::Config(format!(
        "--db {url}: expected sqlite:PATH or postgres://…"
    )))
}

/// Which tasks a listing returns (all of the tenant's of these kinds when empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskQuery {
    /// Only these kinds (empty: all).
    pub kinds: Vec<TaskKind>,
    /// Only these ids (empty: all; at most [`MAX_IDS`]).
    pub ids: Vec<String>,
    /// At most this many (the API's MaxResults); `None`: all. A page never holds more than
    /// [`MAX_PAGE`]: the rest follows with the next token.
    pub max_results: Option<usize>,
    /// Continue after the page that returned this token.
    pub next_token: Option<String>,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The records, oldest first.
    pub items: Vec<T>,
    /// Set when more follow.
    pub next_token: Option<String>,
}

/// What a worker reports while it runs a task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskUpdate {
    /// A new status message (`converting`, `validating`, ...).
    pub status_message: Option<String>,
    /// A new percentage.
    pub progress: Option<u8>,
    /// A new byte count.
    pub bytes_converted: Option<u64>,
    /// A new checkpoint.
    pub checkpoint: Option<serde_json::Value>,
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEnd {
    /// `Completed` or `Cancelled` (failed tasks are cancelled with a reason).
    pub state: TaskState,
    /// The final status message (`completed`, or why it failed).
    pub status_message: String,
    /// What it produced.
    pub result: Option<serde_json::Value>,
}

/// Where tasks, snapshots and images live.
pub trait TaskStore: Send + Sync {
    /// Creates a task (state active, status `pending`). If the tenant already has a task with
    /// the same client token, returns that one instead.
    fn create_task(&self, t: &NewTask, now: Millis) -> Result<Task>;

    /// The tenant's task `id`.
    fn task(&self, tenant: &str, id: &str) -> Result<Option<Task>>;

    /// The tenant's tasks matching `q`, oldest first.
    fn tasks(&self, tenant: &str, q: &TaskQuery) -> Result<Page<Task>>;

    /// Asks to cancel the tenant's task: an active one becomes cancelling (a worker stops it,
    /// or the next claim finishes it as cancelled). Returns the task as it is now, or `None`
    /// if the tenant has no such task. A final task is returned unchanged.
    fn cancel(&self, tenant: &str, id: &str, reason: &str, now: Millis) -> Result<Option<Task>>;

    /// Claims the oldest task that is active or cancelling and not leased (or whose lease
    /// lapsed), for `owner` until `now + lease`; counts the attempt. Only tasks whose
    /// `scratch_bytes` estimate fits in `scratch_free` are taken. Several processes may call
    /// this at once: each task goes to exactly one.
    fn claim(
        &self,
        owner: &str,
        lease: Duration,
        scratch_free: u64,
        now: Millis,
    ) -> Result<Option<Task>>;

    /// Renews `owner`'s lease on `id` and applies `update` (fields left `None` keep their
    /// values; a cancelling task keeps its status message, the cancel's reason). Returns the task (its state tells a worker whether it is being cancelled), or
    /// `None` if the lease was lost: another process took the task over, or it ended. A lease
    /// that lapsed but that no one took over yet is renewed. Owners must be unique per process
    /// run (a restarted process takes a new one).
    fn heartbeat(
        &self,
        owner: &str,
        id: &str,
        lease: Duration,
        update: &TaskUpdate,
        now: Millis,
    ) -> Result<Option<Task>>;

    /// Ends `owner`'s task (state, status message, result, `finished_at`; the lease is
    /// released); false if the lease was lost (nothing changed). An `end.state` that is not
    /// final is [`Error::Invalid`].
    fn finish(&self, owner: &str, id: &str, end: &TaskEnd, now: Millis) -> Result<bool>;

    /// Sets the scratch estimate of a task (from the size of its source, once known).
    fn set_scratch(&self, id: &str, bytes: u64) -> Result<()>;

    /// Deletes tasks that ended (`finished_at`) before `before`; returns how many. Their
    /// snapshots and images stay.
    fn purge(&self, before: Millis) -> Result<u64>;

    /// Count of tasks by kind and state (for /metrics).
    fn counts(&self) -> Result<Vec<(TaskKind, TaskState, u64)>>;

    /// Stores a snapshot an import made.
    fn put_snapshot(&self, s: &SnapshotRecord) -> Result<()>;

    /// The tenant's snapshot `id`.
    fn snapshot(&self, tenant: &str, id: &str) -> Result<Option<SnapshotRecord>>;

    /// Stores (or replaces) an image.
    fn put_image(&self, i: &ImageRecord) -> Result<()>;

    /// The tenant's image `id`.
    fn image(&self, tenant: &str, id: &str) -> Result<Option<ImageRecord>>;

    /// The tenant's images (`ids` empty: all), oldest first, paged like [`TaskStore::tasks`].
    fn images(
        &self,
        tenant: &str,
        ids: &[String],
        max_results: Option<usize>,
        next_token: Option<&str>,
    ) -> Result<Page<ImageRecord>>;

    /// Removes the tenant's image; false if there was none.
    fn delete_image(&self, tenant: &str, id: &str) -> Result<bool>;

    /// Adds (or replaces) tags on the tenant's task, image or snapshot `id`; false if none.
    /// More than [`MAX_TAGS`] in all is [`Error::Invalid`] (nothing changes).
    fn set_tags(&self, tenant: &str, id: &str, tags: &[(String, String)]) -> Result<bool>;

    /// Removes tags (`value` `None`: whatever the value) from the tenant's resource `id`.
    fn delete_tags(
        &self,
        tenant: &str,
        id: &str,
        tags: &[(String, Option<String>)],
    ) -> Result<bool>;

    /// The tags of the tenant's task, image or snapshot `id`; `None` if there is none.
    fn tags(&self, tenant: &str, id: &str) -> Result<Option<Vec<(String, String)>>>;
}
