//! What both backends share: the columns and their conversions to and from the records, the
//! page tokens, tag merging and limits.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{MAX_IDS, MAX_PAGE, MAX_TAGS, Page};
use crate::task::{ImageRecord, Lease, Millis, SnapshotRecord, Task, TaskKind, TaskState};
use crate::{Error, Result};

/// The longest next token accepted (a timestamp, a colon and an id, base64url-encoded).
const MAX_TOKEN_LEN: usize = 512;

/// The longest id a next token may carry (AWS ids are under 32 characters).
const MAX_TOKEN_ID_LEN: usize = 256;

/// The task columns, in [`TaskRow`]'s order.
pub(crate) const TASK_COLUMNS: &str = "id, tenant, kind, state, status_message, progress, \
     bytes_converted, request, client_token, description, tags, result, checkpoint, \
     scratch_bytes, lease_owner, lease_expires, attempts, created_at, updated_at, finished_at";

/// The snapshot columns, in [`SnapshotRow`]'s order.
pub(crate) const SNAPSHOT_COLUMNS: &str =
    "id, tenant, object_key, format, size, description, task_id, created_at";

/// The image columns, in [`ImageRow`]'s order.
pub(crate) const IMAGE_COLUMNS: &str = "id, tenant, name, description, architecture, boot_mode, \
     platform, snapshot_ids, state, tags, task_id, created_at";

/// The tables whose rows carry tags, in the order [`super::TaskStore::set_tags`] looks.
pub(crate) const TAGGED_TABLES: [&str; 3] = ["tasks", "images", "snapshots"];

/// A task row as the database returns it, before its values are checked.
pub(crate) struct TaskRow {
    pub id: String,
    pub tenant: String,
    pub kind: String,
    pub state: String,
    pub status_message: Option<String>,
    pub progress: i64,
    pub bytes_converted: i64,
    pub request: String,
    pub client_token: Option<String>,
    pub description: Option<String>,
    pub tags: String,
    pub result: Option<String>,
    pub checkpoint: Option<String>,
    pub scratch_bytes: i64,
    pub lease_owner: Option<String>,
    pub lease_expires: Option<i64>,
    pub attempts: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

impl TaskRow {
    /// The task, or [`Error::Db`] naming the task and the column that holds a bad value.
    pub fn into_task(self) -> Result<Task> {
        let id = self.id;
        let bad = |col: &str, detail: &dyn std::fmt::Display| {
            Error::Db(format!("task {id}: column {col}: {detail}"))
        };
        let kind = TaskKind::parse(&self.kind).ok_or_else(|| bad("kind", &self.kind))?;
        let state = TaskState::parse(&self.state).ok_or_else(|| bad("state", &self.state))?;
        let progress = u8::try_from(self.progress)
            .ok()
            .filter(|p| *p <= 100)
            .ok_or_else(|| bad("progress", &self.progress))?;
        let lease = match (self.lease_owner, self.lease_expires) {
            (Some(owner), Some(expires_at)) => Some(Lease { owner, expires_at }),
            _ => None,
        };
        Ok(Task {
            kind,
            state,
            status_message: self.status_message,
            progress,
            bytes_converted: unsigned(self.bytes_converted)
                .ok_or_else(|| bad("bytes_converted", &self.bytes_converted))?,
            request: pairs_from_json(&self.request).map_err(|e| bad("request", &e))?,
            client_token: self.client_token,
            description: self.description,
            tags: pairs_from_json(&self.tags).map_err(|e| bad("tags", &e))?,
            result: json_from_text(self.result.as_deref()).map_err(|e| bad("result", &e))?,
            checkpoint: json_from_text(self.checkpoint.as_deref())
                .map_err(|e| bad("checkpoint", &e))?,
            scratch_bytes: unsigned(self.scratch_bytes)
                .ok_or_else(|| bad("scratch_bytes", &self.scratch_bytes))?,
            lease,
            attempts: u32::try_from(self.attempts).map_err(|e| bad("attempts", &e))?,
            created_at: self.created_at,
            updated_at: self.updated_at,
            finished_at: self.finished_at,
            tenant: self.tenant,
            id,
        })
    }
}

/// A snapshot row as the database returns it.
pub(crate) struct SnapshotRow {
    pub id: String,
    pub tenant: String,
    pub object_key: String,
    pub format: String,
    pub size: i64,
    pub description: Option<String>,
    pub task_id: String,
    pub created_at: i64,
}

impl SnapshotRow {
    /// The record, or [`Error::Db`] naming the snapshot and the bad column.
    pub fn into_record(self) -> Result<SnapshotRecord> {
        let size = unsigned(self.size).ok_or_else(|| {
            Error::Db(format!("snapshot {}: column size: {}", self.id, self.size))
        })?;
        Ok(SnapshotRecord {
            id: self.id,
            tenant: self.tenant,
            object_key: self.object_key,
            format: self.format,
            size,
            description: self.description,
            task_id: self.task_id,
            created_at: self.created_at,
        })
    }
}

/// An image row as the database returns it.
pub(crate) struct ImageRow {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub description: Option<String>,
    pub architecture: String,
    pub boot_mode: Option<String>,
    pub platform: Option<String>,
    pub snapshot_ids: String,
    pub state: String,
    pub tags: String,
    pub task_id: String,
    pub created_at: i64,
}

impl ImageRow {
    /// The record, or [`Error::Db`] naming the image and the bad column.
    pub fn into_record(self) -> Result<ImageRecord> {
        let id = self.id;
        let snapshot_ids: Vec<String> = serde_json::from_str(&self.snapshot_ids)
            .map_err(|e| Error::Db(format!("image {id}: column snapshot_ids: {e}")))?;
        let tags = pairs_from_json(&self.tags)
            .map_err(|e| Error::Db(format!("image {id}: column tags: {e}")))?;
        Ok(ImageRecord {
            id,
            tenant: self.tenant,
            name: self.name,
            description: self.description,
            architecture: self.architecture,
            boot_mode: self.boot_mode,
            platform: self.platform,
            snapshot_ids,
            state: self.state,
            tags,
            task_id: self.task_id,
            created_at: self.created_at,
        })
    }
}

/// A stored integer as a `u64`, `None` if negative.
fn unsigned(v: i64) -> Option<u64> {
    u64::try_from(v).ok()
}

/// A `u64` to store, or [`Error::Db`] naming `what` if it does not fit the column's `i64`.
pub(crate) fn signed(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::Db(format!("{what} {v} is too large to store")))
}

/// `now + lease` in [`Millis`], saturating.
pub(crate) fn expiry(now: Millis, lease: Duration) -> Millis {
    now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
}

/// Pairs as the JSON text stored for them (`[["k","v"],…]`).
pub(crate) fn pairs_to_json(pairs: &[(String, String)]) -> Result<String> {
    serde_json::to_string(pairs).map_err(|e| Error::Db(format!("encoding pairs: {e}")))
}

/// Pairs from their stored JSON text.
fn pairs_from_json(s: &str) -> std::result::Result<Vec<(String, String)>, serde_json::Error> {
    serde_json::from_str(s)
}

/// A JSON value as stored text.
pub(crate) fn json_to_text(v: Option<&serde_json::Value>) -> Option<String> {
    v.map(|v| v.to_string())
}

/// A JSON value from stored text.
fn json_from_text(
    s: Option<&str>,
) -> std::result::Result<Option<serde_json::Value>, serde_json::Error> {
    s.map(serde_json::from_str).transpose()
}

/// Stored tags (a JSON pair list) with `set` added: a key already there keeps its place and
/// takes the new value. More than [`MAX_TAGS`] in all is [`Error::Invalid`].
pub(crate) fn merge_tags(stored: &str, id: &str, set: &[(String, String)]) -> Result<String> {
    let mut tags = pairs_from_json(stored)
        .map_err(|e| Error::Db(format!("resource {id}: column tags: {e}")))?;
    for (k, v) in set {
        match tags.iter_mut().find(|(tk, _)| tk == k) {
            Some(t) => t.1 = v.clone(),
            None => tags.push((k.clone(), v.clone())),
        }
    }
    if tags.len() > MAX_TAGS {
        return Err(Error::Invalid(format!(
            "resource {id} would have {} tags; at most {MAX_TAGS} are allowed",
            tags.len()
        )));
    }
    pairs_to_json(&tags)
}

/// Stored tags with `del` removed (a `None` value removes the key whatever its value).
pub(crate) fn remove_tags(
    stored: &str,
    id: &str,
    del: &[(String, Option<String>)],
) -> Result<String> {
    let mut tags = pairs_from_json(stored)
        .map_err(|e| Error::Db(format!("resource {id}: column tags: {e}")))?;
    tags.retain(|(k, v)| {
        !del.iter()
            .any(|(dk, dv)| dk == k && dv.as_ref().is_none_or(|dv| dv == v))
    });
    pairs_to_json(&tags)
}

/// Stored tags as pairs.
pub(crate) fn tags_from_text(stored: &str, id: &str) -> Result<Vec<(String, String)>> {
    pairs_from_json(stored).map_err(|e| Error::Db(format!("resource {id}: column tags: {e}")))
}

/// The position a listing continues after: `(created_at, id)` of the last record returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub created_at: Millis,
    pub id: String,
}

/// The next token for a page that ended with `(created_at, id)`.
pub(crate) fn encode_token(created_at: Millis, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{created_at}:{id}"))
}

/// The position a next token stands for; [`Error::Invalid`] if it is not one of ours.
pub(crate) fn decode_token(token: &str) -> Result<Cursor> {
    let bad = || Error::Invalid(format!("the next token {token:.64} is not valid"));
    if token.len() > MAX_TOKEN_LEN {
        return Err(bad());
    }
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (at, id) = text.split_once(':').ok_or_else(bad)?;
    let created_at: Millis = at.parse().map_err(|_| bad())?;
    // Only tokens we made: the same text encodes back to the same token.
    if id.is_empty() || id.len() > MAX_TOKEN_ID_LEN || encode_token(created_at, id) != token {
        return Err(bad());
    }
    Ok(Cursor {
        created_at,
        id: id.to_string(),
    })
}

/// The number of rows to fetch for a page of `max_results`: one more than the page, so that
/// a full page knows whether more follow.
pub(crate) fn fetch_limit(max_results: Option<usize>) -> usize {
    page_size(max_results) + 1
}

/// The page size for `max_results`: at least 1, at most [`MAX_PAGE`].
fn page_size(max_results: Option<usize>) -> usize {
    max_results.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE)
}

/// A page from rows fetched with [`fetch_limit`]: the extra row, if any, is dropped and a
/// next token names the last row kept.
pub(crate) fn page<T>(
    mut items: Vec<T>,
    max_results: Option<usize>,
    key: impl Fn(&T) -> (Millis, &str),
) -> Page<T> {
    let size = page_size(max_results);
    let mut next_token = None;
    if items.len() > size {
        items.truncate(size);
        next_token = items.last().map(|t| {
            let (at, id) = key(t);
            encode_token(at, id)
        });
    }
    Page { items, next_token }
}

/// [`Error::Invalid`] if a listing filters on more than [`MAX_IDS`] ids.
pub(crate) fn check_ids(ids: &[String]) -> Result<()> {
    if ids.len() > MAX_IDS {
        return Err(Error::Invalid(format!(
            "{} ids given; at most {MAX_IDS} are allowed",
            ids.len()
        )));
    }
    Ok(())
}

/// [`Error::Invalid`] unless a task ends completed or cancelled.
pub(crate) fn check_end(state: TaskState) -> Result<()> {
    if !state.is_final() {
        return Err(Error::Invalid(format!(
            "a task cannot end {}: only completed or cancelled",
            state.as_str()
        )));
    }
    Ok(())
}

/// A `counts` row, checked.
pub(crate) fn counted(kind: &str, state: &str, n: i64) -> Result<(TaskKind, TaskState, u64)> {
    let k = TaskKind::parse(kind)
        .ok_or_else(|| Error::Db(format!("counts: unknown task kind {kind:?}")))?;
    let s = TaskState::parse(state)
        .ok_or_else(|| Error::Db(format!("counts: unknown task state {state:?}")))?;
    Ok((k, s, u64::try_from(n).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let t = encode_token(1_700_000_000_123, "import-ami-0123456789abcdef0");
        assert_eq!(
            decode_token(&t).unwrap(),
            Cursor {
                created_at: 1_700_000_000_123,
                id: "import-ami-0123456789abcdef0".into()
            }
        );
        for bad in ["", "!!!", "bm9jb2xvbg", &"A".repeat(4000), "OnNvbWU"] {
            assert!(matches!(decode_token(bad), Err(Error::Invalid(_))), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_token_decodes_or_is_invalid(s in "\\PC{0,600}") {
            match decode_token(&s) {
                Ok(c) => proptest::prop_assert_eq!(encode_token(c.created_at, &c.id), s),
                Err(e) => proptest::prop_assert!(matches!(e, Error::Invalid(_))),
            }
        }

        #[test]
        fn tokens_round_trip(at in proptest::num::i64::ANY, id in "[a-z0-9:-]{1,64}") {
            let c = decode_token(&encode_token(at, &id)).unwrap();
            proptest::prop_assert_eq!((c.created_at, c.id), (at, id));
        }
    }

    #[test]
    fn tags_merge_in_place_and_are_bounded() {
        let s = merge_tags(
            "[]",
            "x",
            &[("a".into(), "1".into()), ("b".into(), "2".into())],
        )
        .unwrap();
        let s = merge_tags(&s, "x", &[("a".into(), "3".into())]).unwrap();
        assert_eq!(s, r#"[["a","3"],["b","2"]]"#);
        let s = remove_tags(
            &s,
            "x",
            &[("a".into(), Some("1".into())), ("b".into(), None)],
        )
        .unwrap();
        assert_eq!(s, r#"[["a","3"]]"#);
        let many: Vec<_> = (0..MAX_TAGS)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert!(matches!(merge_tags(&s, "x", &many), Err(Error::Invalid(_))));
        assert!(matches!(merge_tags("{", "x", &[]), Err(Error::Db(_))));
    }

    #[test]
    fn pages_are_bounded() {
        let p = page((0..5).collect::<Vec<i64>>(), Some(4), |_| (1, "x"));
        assert_eq!(p.items.len(), 4);
        assert!(p.next_token.is_some());
        let p = page((0..4).collect::<Vec<i64>>(), Some(4), |_| (1, "x"));
        assert!(p.next_token.is_none());
        assert_eq!(fetch_limit(None), MAX_PAGE + 1);
        assert_eq!(fetch_limit(Some(0)), 2);
        assert_eq!(fetch_limit(Some(usize::MAX)), MAX_PAGE + 1);
    }
}
