//! The task store's behaviour, one suite run against both backends: SQLite in a temporary
//! file and PostgreSQL in a fresh database of a private cluster (support/pg.rs; skipped with a
//! message when PostgreSQL is not installed).
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use stamp_serve::Error;
use stamp_serve::db::{self, MAX_IDS, MAX_TAGS, TaskEnd, TaskQuery, TaskStore, TaskUpdate};
use stamp_serve::task::{ImageRecord, Millis, NewTask, SnapshotRecord, TaskKind, TaskState};

/// A fixed clock: tests pass `now` explicitly.
const T0: Millis = 1_700_000_000_000;
const MINUTE: Duration = Duration::from_secs(60);

/// A database both stores of a test open (by URL, through `db::open`).
struct Db {
    url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Db {
    fn store(&self) -> Box<dyn TaskStore> {
        db::open(&self.url).unwrap_or_else(|e| panic!("opening {}: {e}", self.url))
    }

    fn is_pg(&self) -> bool {
        self.url.starts_with("postgres")
    }

    /// Runs SQL directly, bypassing the store.
    fn exec(&self, sql: &str) {
        if self.is_pg() {
            let mut c = postgres::Client::connect(&self.url, postgres::NoTls).unwrap();
            c.batch_execute(sql).unwrap();
        } else {
            let path = self.url.strip_prefix("sqlite:").unwrap();
            rusqlite::Connection::open(path)
                .unwrap()
                .execute_batch(sql)
                .unwrap();
        }
    }
}

fn sqlite_db() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("tasks.db");
    Db {
        url: format!("sqlite:{}", path.display()),
        _dir: Some(dir),
    }
}

fn pg_db() -> Option<Db> {
    support::pg::database().map(|url| Db { url, _dir: None })
}

/// Each behaviour test, once per backend.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $name() { super::$name(&super::sqlite_db()); } )*
        }
        mod pg {
            $( #[test] fn $name() { if let Some(db) = super::pg_db() { super::$name(&db); } } )*
        }
    };
}

both!(
    create_returns_the_first_task_for_a_client_token,
    tenants_never_see_each_other,
    pages_cover_everything_exactly_once,
    bad_tokens_and_long_id_lists_are_invalid,
    cancel_moves_active_tasks_to_cancelling_only,
    eight_threads_never_claim_the_same_task,
    two_stores_never_claim_the_same_task,
    a_lapsed_lease_goes_to_another_owner,
    claims_skip_tasks_that_do_not_fit_the_scratch_space,
    purge_deletes_only_tasks_that_ended_before,
    counts_group_by_kind_and_state,
    images_are_stored_replaced_and_deleted,
    tags_are_set_replaced_removed_and_bounded,
    a_reopened_store_keeps_everything,
    a_newer_schema_is_refused,
    stores_opened_at_once_create_the_schema_once,
);

fn new_task(id_kind: TaskKind, tenant: &str, token: Option<&str>) -> NewTask {
    NewTask {
        id: id_kind.new_id(),
        tenant: tenant.into(),
        kind: id_kind,
        request: vec![
            ("Action".into(), "ImportImage".into()),
            ("DiskContainer.1.Url".into(), "s3://b/k é \"quoted\"".into()),
        ],
        client_token: token.map(Into::into),
        description: Some("a disk".into()),
        tags: vec![("team".into(), "x".into())],
    }
}

fn snapshot(id: &str, tenant: &str) -> SnapshotRecord {
    SnapshotRecord {
        id: id.into(),
        tenant: tenant.into(),
        object_key: format!("snapshots/{id}.qcow2"),
        format: "qcow2".into(),
        size: 1 << 40,
        description: None,
        task_id: "import-snap-00000000000000001".into(),
        created_at: T0,
    }
}

fn image(id: &str, tenant: &str, name: &str, at: Millis) -> ImageRecord {
    ImageRecord {
        id: id.into(),
        tenant: tenant.into(),
        name: name.into(),
        description: Some("imported".into()),
        architecture: "x86_64".into(),
        boot_mode: Some("uefi".into()),
        platform: None,
        snapshot_ids: vec!["snap-1".into(), "snap-2".into()],
        state: "available".into(),
        tags: vec![],
        task_id: "import-ami-00000000000000001".into(),
        created_at: at,
    }
}

fn completed() -> TaskEnd {
    TaskEnd {
        state: TaskState::Completed,
        status_message: "completed".into(),
        result: Some(serde_json::json!({"image_id": "ami-1", "snapshots": [1, 2]})),
    }
}

fn create_returns_the_first_task_for_a_client_token(db: &Db) {
    let s = db.store();
    let nt = new_task(TaskKind::ImportImage, "alice", Some("tok-1"));
    let t = s.create_task(&nt, T0).unwrap();
    assert_eq!(t.id, nt.id);
    assert_eq!(t.state, TaskState::Active);
    assert_eq!(t.status_message.as_deref(), Some("pending"));
    assert_eq!((t.progress, t.bytes_converted, t.attempts), (0, 0, 0));
    assert_eq!(t.request, nt.request);
    assert_eq!(t.tags, nt.tags);
    assert_eq!(t.description, nt.description);
    assert_eq!((t.created_at, t.updated_at, t.finished_at), (T0, T0, None));
    assert_eq!(t.lease, None);
    assert_eq!(s.task("alice", &t.id).unwrap(), Some(t.clone()));

    // The same token again: the first task, unchanged (even with another id and request).
    let mut again = new_task(TaskKind::ImportImage, "alice", Some("tok-1"));
    again.description = Some("other".into());
    assert_eq!(s.create_task(&again, T0 + 5).unwrap(), t);
    assert_eq!(s.task("alice", &again.id).unwrap(), None);

    // Another tenant's token space is its own; tasks without a token are always new.
    let bob = s
        .create_task(&new_task(TaskKind::ImportImage, "bob", Some("tok-1")), T0)
        .unwrap();
    assert_ne!(bob.id, t.id);
    let a = s
        .create_task(&new_task(TaskKind::ImportImage, "alice", None), T0)
        .unwrap();
    let b = s
        .create_task(&new_task(TaskKind::ImportImage, "alice", None), T0)
        .unwrap();
    assert_ne!(a.id, b.id);
    let all = s.tasks("alice", &TaskQuery::default()).unwrap();
    assert_eq!(all.items.len(), 3);

    // An id that exists is an error, not a silent replacement.
    let mut dup = new_task(TaskKind::ImportImage, "alice", None);
    dup.id = a.id.clone();
    assert!(matches!(s.create_task(&dup, T0), Err(Error::Db(_))));
}

fn tenants_never_see_each_other(db: &Db) {
    let s = db.store();
    let t = s
        .create_task(&new_task(TaskKind::ImportSnapshot, "alice", None), T0)
        .unwrap();
    s.put_snapshot(&snapshot("snap-0a", "alice")).unwrap();
    s.put_image(&image("ami-0a", "alice", "n", T0)).unwrap();
    for id in [&t.id, "snap-0a", "ami-0a"] {
        assert!(
            s.set_tags("alice", id, &[("k".into(), "v".into())])
                .unwrap()
        );
    }

    assert_eq!(s.task("bob", &t.id).unwrap(), None);
    let q = TaskQuery {
        ids: vec![t.id.clone()],
        ..TaskQuery::default()
    };
    assert!(s.tasks("bob", &q).unwrap().items.is_empty());
    assert!(
        s.tasks("bob", &TaskQuery::default())
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(s.cancel("bob", &t.id, "no", T0).unwrap(), None);
    assert_eq!(s.snapshot("bob", "snap-0a").unwrap(), None);
    assert_eq!(s.image("bob", "ami-0a").unwrap(), None);
    assert!(s.images("bob", &[], None, None).unwrap().items.is_empty());
    assert!(!s.delete_image("bob", "ami-0a").unwrap());
    for id in [&t.id, "snap-0a", "ami-0a"] {
        assert!(
            !s.set_tags("bob", id, &[("k".into(), "evil".into())])
                .unwrap()
        );
        assert!(!s.delete_tags("bob", id, &[("k".into(), None)]).unwrap());
        assert_eq!(s.tags("bob", id).unwrap(), None);
    }
    // Another tenant cannot overwrite a record by reusing its id.
    assert!(matches!(
        s.put_image(&image("ami-0a", "bob", "n", T0)),
        Err(Error::Db(_))
    ));
    assert!(matches!(
        s.put_snapshot(&snapshot("snap-0a", "bob")),
        Err(Error::Db(_))
    ));

    // Alice's records are all as she left them.
    let t2 = s.task("alice", &t.id).unwrap().unwrap();
    assert_eq!(t2.state, TaskState::Active);
    assert_eq!(
        t2.tags,
        vec![("team".into(), "x".into()), ("k".into(), "v".into())]
    );
    assert_eq!(s.image("alice", "ami-0a").unwrap().unwrap().tenant, "alice");
    assert_eq!(
        s.snapshot("alice", "snap-0a").unwrap(),
        Some(snapshot("snap-0a", "alice"))
    );
    for id in ["snap-0a", "ami-0a"] {
        assert_eq!(
            s.tags("alice", id).unwrap(),
            Some(vec![("k".into(), "v".into())])
        );
    }
}

/// Pages through the tenant's tasks `per_page` at a time, returning the ids in order.
fn all_pages(s: &dyn TaskStore, tenant: &str, mut q: TaskQuery, per_page: usize) -> Vec<String> {
    q.max_results = Some(per_page);
    let mut ids = Vec::new();
    for _ in 0..1000 {
        let p = s.tasks(tenant, &q).unwrap();
        assert!(p.items.len() <= per_page);
        ids.extend(p.items.into_iter().map(|t| t.id));
        match p.next_token {
            Some(t) => q.next_token = Some(t),
            None => return ids,
        }
    }
    panic!("paging did not end");
}

fn pages_cover_everything_exactly_once(db: &Db) {
    let s = db.store();
    let mut expected = Vec::new();
    for i in 0..25 {
        // Three tasks share each timestamp: the id breaks the tie.
        let kind = TaskKind::ALL[i % 3];
        let t = s
            .create_task(&new_task(kind, "alice", None), T0 + (i / 3) as i64)
            .unwrap();
        expected.push((t.created_at, t.id, kind));
        s.create_task(&new_task(kind, "bob", None), T0 + i as i64)
            .unwrap();
    }
    expected.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let ids: Vec<String> = expected.iter().map(|e| e.1.clone()).collect();
    for per_page in [1, 4, 7, 25, 26, 1000] {
        assert_eq!(
            all_pages(&*s, "alice", TaskQuery::default(), per_page),
            ids,
            "{per_page} a page"
        );
    }
    // No MaxResults: everything in one page.
    let p = s.tasks("alice", &TaskQuery::default()).unwrap();
    assert_eq!(p.next_token, None);
    assert_eq!(p.items.len(), 25);

    // A kind filter pages the same way.
    let q = TaskQuery {
        kinds: vec![TaskKind::ImportImage, TaskKind::ImportVolume],
        ..TaskQuery::default()
    };
    let want: Vec<String> = expected
        .iter()
        .filter(|e| q.kinds.contains(&e.2))
        .map(|e| e.1.clone())
        .collect();
    assert_eq!(all_pages(&*s, "alice", q, 3), want);
    // An id filter: only those, oldest first, unknown ids ignored.
    let q = TaskQuery {
        ids: vec![ids[9].clone(), ids[2].clone(), "import-ami-nope".into()],
        ..TaskQuery::default()
    };
    assert_eq!(
        all_pages(&*s, "alice", q, 1),
        vec![ids[2].clone(), ids[9].clone()]
    );

    // A task created while paging shows up once, at the end.
    let mut q = TaskQuery {
        max_results: Some(10),
        ..TaskQuery::default()
    };
    let first = s.tasks("alice", &q).unwrap();
    let late = s
        .create_task(&new_task(TaskKind::ExportImage, "alice", None), T0 + 100)
        .unwrap();
    q.next_token = first.next_token.clone();
    let mut seen: Vec<String> = first.items.into_iter().map(|t| t.id).collect();
    seen.extend(all_pages(&*s, "alice", q, 10));
    let mut want = ids.clone();
    want.push(late.id);
    assert_eq!(seen, want);

    // Images page the same way.
    let mut images = Vec::new();
    for i in 0..7 {
        let id = format!("ami-{i:017x}");
        s.put_image(&image(&id, "alice", &format!("n{i}"), T0 + (i / 2) as i64))
            .unwrap();
        images.push(id);
    }
    let mut token = None;
    let mut seen = Vec::new();
    loop {
        let p = s.images("alice", &[], Some(3), token.as_deref()).unwrap();
        seen.extend(p.items.into_iter().map(|i| i.id));
        token = p.next_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen, images);
    let p = s
        .images("alice", &[images[3].clone(), images[1].clone()], None, None)
        .unwrap();
    assert_eq!(
        p.items.iter().map(|i| &i.id).collect::<Vec<_>>(),
        vec![&images[1], &images[3]]
    );
}

fn bad_tokens_and_long_id_lists_are_invalid(db: &Db) {
    let s = db.store();
    for bad in ["garbage!", "bm90IGEgdG9rZW4", ""] {
        let q = TaskQuery {
            next_token: Some(bad.into()),
            ..TaskQuery::default()
        };
        assert!(
            matches!(s.tasks("alice", &q), Err(Error::Invalid(_))),
            "{bad:?}"
        );
        assert!(matches!(
            s.images("alice", &[], None, Some(bad)),
            Err(Error::Invalid(_))
        ));
    }
    let q = TaskQuery {
        ids: (0..=MAX_IDS).map(|i| format!("import-ami-{i}")).collect(),
        ..TaskQuery::default()
    };
    assert!(matches!(s.tasks("alice", &q), Err(Error::Invalid(_))));
    // Exactly the limit is fine.
    let q = TaskQuery {
        ids: (0..MAX_IDS).map(|i| format!("import-ami-{i}")).collect(),
        ..TaskQuery::default()
    };
    assert!(s.tasks("alice", &q).unwrap().items.is_empty());
}

fn cancel_moves_active_tasks_to_cancelling_only(db: &Db) {
    let s = db.store();
    assert_eq!(s.cancel("alice", "import-ami-nope", "r", T0).unwrap(), None);
    let t = s
        .create_task(&new_task(TaskKind::ImportVolume, "alice", None), T0)
        .unwrap();
    let c = s
        .cancel("alice", &t.id, "user asked", T0 + 10)
        .unwrap()
        .unwrap();
    assert_eq!(c.state, TaskState::Cancelling);
    assert_eq!(c.status_message.as_deref(), Some("user asked"));
    assert_eq!(c.updated_at, T0 + 10);
    // Asking again changes nothing.
    assert_eq!(
        s.cancel("alice", &t.id, "again", T0 + 20).unwrap(),
        Some(c.clone())
    );

    // A cancelling task is claimed so that a worker finishes it as cancelled.
    let claimed = s.claim("w1", MINUTE, 0, T0 + 30).unwrap().unwrap();
    assert_eq!(
        (claimed.id.as_str(), claimed.state),
        (t.id.as_str(), TaskState::Cancelling)
    );
    // The worker's progress message does not replace the cancel's reason.
    let busy = TaskUpdate {
        status_message: Some("converting".into()),
        ..TaskUpdate::default()
    };
    let hb = s
        .heartbeat("w1", &t.id, MINUTE, &busy, T0 + 40)
        .unwrap()
        .unwrap();
    assert_eq!(hb.state, TaskState::Cancelling);
    assert_eq!(hb.status_message.as_deref(), Some("user asked"));
    let end = TaskEnd {
        state: TaskState::Cancelled,
        status_message: "user asked".into(),
        result: None,
    };
    assert!(s.finish("w1", &t.id, &end, T0 + 50).unwrap());
    let done = s.task("alice", &t.id).unwrap().unwrap();
    assert_eq!(done.state, TaskState::Cancelled);
    assert_eq!(done.finished_at, Some(T0 + 50));
    assert_eq!(done.lease, None);
    // A final task is returned unchanged.
    assert_eq!(
        s.cancel("alice", &t.id, "late", T0 + 60).unwrap(),
        Some(done)
    );

    let t2 = s
        .create_task(&new_task(TaskKind::ExportImage, "alice", None), T0)
        .unwrap();
    s.claim("w1", MINUTE, 0, T0).unwrap().unwrap();
    assert!(s.finish("w1", &t2.id, &completed(), T0 + 5).unwrap());
    let c2 = s.cancel("alice", &t2.id, "late", T0 + 6).unwrap().unwrap();
    assert_eq!(c2.state, TaskState::Completed);
    assert_eq!(c2.status_message.as_deref(), Some("completed"));
}

/// Creates `n` tasks and claims them with `threads` threads per store (each its own owner),
/// checking that every task went to exactly one owner, once.
fn claim_race(stores: &[Box<dyn TaskStore>], threads: usize, n: usize) {
    let mut want = BTreeSet::new();
    for i in 0..n {
        let t = stores[0]
            .create_task(
                &new_task(TaskKind::ImportImage, "alice", None),
                T0 + i as i64,
            )
            .unwrap();
        want.insert(t.id);
    }
    let claimed: Vec<(String, Vec<String>)> = std::thread::scope(|sc| {
        let handles: Vec<_> = stores
            .iter()
            .enumerate()
            .flat_map(|(si, s)| {
                (0..threads).map(move |ti| {
                    sc.spawn(move || {
                        let owner = format!("store{si}-thread{ti}");
                        let mut got = Vec::new();
                        while let Some(t) = s.claim(&owner, MINUTE, u64::MAX, T0 + 1000).unwrap() {
                            assert_eq!(t.lease.as_ref().unwrap().owner, owner);
                            got.push(t.id);
                        }
                        (owner, got)
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut seen = BTreeMap::new();
    for (owner, ids) in &claimed {
        for id in ids {
            if let Some(other) = seen.insert(id.clone(), owner.clone()) {
                panic!("{id} claimed by both {other} and {owner}");
            }
        }
    }
    assert_eq!(seen.keys().cloned().collect::<BTreeSet<_>>(), want);
    for (id, owner) in &seen {
        let t = stores[0].task("alice", id).unwrap().unwrap();
        assert_eq!(t.attempts, 1, "{id}");
        assert_eq!(&t.lease.unwrap().owner, owner);
    }
    let busy = claimed.iter().filter(|(_, ids)| !ids.is_empty()).count();
    eprintln!("{n} tasks claimed by {busy} of {} owners", claimed.len());
}

fn eight_threads_never_claim_the_same_task(db: &Db) {
    claim_race(&[db.store()], 8, 80);
}

fn two_stores_never_claim_the_same_task(db: &Db) {
    claim_race(&[db.store(), db.store()], 4, 80);
}

fn a_lapsed_lease_goes_to_another_owner(db: &Db) {
    let s = db.store();
    let lease = Duration::from_secs(10);
    let t = s
        .create_task(&new_task(TaskKind::ImportImage, "alice", None), T0)
        .unwrap();
    let a = s.claim("a", lease, 0, T0).unwrap().unwrap();
    assert_eq!(a.attempts, 1);
    assert_eq!(
        a.lease,
        Some(stamp_serve::task::Lease {
            owner: "a".into(),
            expires_at: T0 + 10_000
        })
    );
    assert_eq!(s.claim("b", lease, 0, T0 + 5_000).unwrap(), None);
    let update = TaskUpdate {
        status_message: Some("converting".into()),
        progress: Some(40),
        bytes_converted: Some(1 << 33),
        checkpoint: Some(serde_json::json!({"next_block": 17})),
    };
    let hb = s
        .heartbeat("a", &t.id, lease, &update, T0 + 5_000)
        .unwrap()
        .unwrap();
    assert_eq!(hb.lease.as_ref().unwrap().expires_at, T0 + 15_000);
    assert_eq!(hb.status_message.as_deref(), Some("converting"));
    assert_eq!((hb.progress, hb.bytes_converted), (40, 1 << 33));
    assert_eq!(hb.checkpoint, update.checkpoint);
    // Fields not in an update keep their values.
    let hb = s
        .heartbeat("a", &t.id, lease, &TaskUpdate::default(), T0 + 6_000)
        .unwrap()
        .unwrap();
    assert_eq!(
        (hb.progress, hb.checkpoint.clone()),
        (40, update.checkpoint.clone())
    );
    assert_eq!(hb.lease.as_ref().unwrap().expires_at, T0 + 16_000);
    // Only the owner renews.
    assert_eq!(
        s.heartbeat("b", &t.id, lease, &update, T0 + 6_000).unwrap(),
        None
    );

    assert_eq!(s.claim("b", lease, 0, T0 + 15_999).unwrap(), None);
    let b = s.claim("b", lease, 0, T0 + 16_000).unwrap().unwrap();
    assert_eq!(b.id, t.id);
    assert_eq!(b.attempts, 2);
    // The checkpoint is there for the new owner to resume from.
    assert_eq!(b.checkpoint, update.checkpoint);

    // The old owner has lost it: its heartbeat and finish fail and change nothing.
    assert_eq!(
        s.heartbeat(
            "a",
            &t.id,
            lease,
            &TaskUpdate {
                progress: Some(99),
                ..TaskUpdate::default()
            },
            T0 + 17_000
        )
        .unwrap(),
        None
    );
    assert!(!s.finish("a", &t.id, &completed(), T0 + 17_000).unwrap());
    let now = s.task("alice", &t.id).unwrap().unwrap();
    assert_eq!(now.state, TaskState::Active);
    assert_eq!(now.progress, 40);
    assert_eq!(now.lease.unwrap().owner, "b");

    assert!(matches!(
        s.finish(
            "b",
            &t.id,
            &TaskEnd {
                state: TaskState::Active,
                status_message: "x".into(),
                result: None
            },
            T0
        ),
        Err(Error::Invalid(_))
    ));
    assert!(s.finish("b", &t.id, &completed(), T0 + 18_000).unwrap());
    let done = s.task("alice", &t.id).unwrap().unwrap();
    assert_eq!(done.state, TaskState::Completed);
    assert_eq!(done.result, completed().result);
    assert_eq!(done.finished_at, Some(T0 + 18_000));
    assert_eq!(done.lease, None);
    // Finished: no one renews, finishes or claims it again.
    assert_eq!(
        s.heartbeat("b", &t.id, lease, &update, T0 + 18_001)
            .unwrap(),
        None
    );
    assert!(!s.finish("b", &t.id, &completed(), T0 + 18_002).unwrap());
    assert_eq!(s.claim("c", lease, u64::MAX, T0 + 1_000_000).unwrap(), None);

    // A lease that lapsed but that no one took over is still its owner's to renew.
    let t = s
        .create_task(&new_task(TaskKind::ImportImage, "alice", None), T0)
        .unwrap();
    s.claim("a", lease, 0, T0).unwrap().unwrap();
    let hb = s
        .heartbeat("a", &t.id, lease, &TaskUpdate::default(), T0 + 60_000)
        .unwrap()
        .unwrap();
    assert_eq!(hb.lease.unwrap().expires_at, T0 + 70_000);
    assert_eq!(s.claim("b", lease, 0, T0 + 60_001).unwrap(), None);
}

fn claims_skip_tasks_that_do_not_fit_the_scratch_space(db: &Db) {
    let s = db.store();
    let big = s
        .create_task(&new_task(TaskKind::ImportImage, "alice", None), T0)
        .unwrap();
    let small = s
        .create_task(&new_task(TaskKind::ImportImage, "alice", None), T0 + 1)
        .unwrap();
    s.set_scratch(&big.id, 100 << 30).unwrap();
    s.set_scratch(&small.id, 10 << 30).unwrap();
    let got = s.claim("w", MINUTE, 50 << 30, T0 + 2).unwrap().unwrap();
    assert_eq!(got.id, small.id);
    assert_eq!(got.scratch_bytes, 10 << 30);
    assert_eq!(s.claim("w", MINUTE, 50 << 30, T0 + 2).unwrap(), None);
    let got = s.claim("w", MINUTE, 100 << 30, T0 + 2).unwrap().unwrap();
    assert_eq!(got.id, big.id);
    assert!(matches!(
        s.set_scratch(&big.id, u64::MAX),
        Err(Error::Db(_))
    ));
}

fn purge_deletes_only_tasks_that_ended_before(db: &Db) {
    let s = db.store();
    let mk = |at| {
        s.create_task(&new_task(TaskKind::ImportImage, "alice", None), at)
            .unwrap()
    };
    let (done, failed, running, cancelling) = (mk(T0), mk(T0 + 1), mk(T0 + 2), mk(T0 + 3));
    s.cancel("alice", &cancelling.id, "stop", T0 + 4).unwrap();
    assert_eq!(s.claim("w", MINUTE, 0, T0).unwrap().unwrap().id, done.id);
    assert_eq!(s.claim("w", MINUTE, 0, T0).unwrap().unwrap().id, failed.id);
    assert!(s.finish("w", &done.id, &completed(), T0 + 1_000).unwrap());
    let fail = TaskEnd {
        state: TaskState::Cancelled,
        status_message: "ClientError: Disk validation failed".into(),
        result: None,
    };
    assert!(s.finish("w", &failed.id, &fail, T0 + 3_000).unwrap());
    assert_eq!(s.purge(T0 + 1_000).unwrap(), 0);
    assert_eq!(s.purge(T0 + 2_000).unwrap(), 1);
    assert_eq!(s.purge(T0 + 2_000).unwrap(), 0);
    assert_eq!(s.task("alice", &done.id).unwrap(), None);
    assert_eq!(s.purge(T0 + 1_000_000).unwrap(), 1);
    let left: Vec<String> = s
        .tasks("alice", &TaskQuery::default())
        .unwrap()
        .items
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(left, vec![running.id, cancelling.id]);
}

fn counts_group_by_kind_and_state(db: &Db) {
    let s = db.store();
    assert_eq!(s.counts().unwrap(), vec![]);
    for (i, kind) in [
        TaskKind::ImportImage,
        TaskKind::ImportImage,
        TaskKind::ImportImage,
        TaskKind::ExportImage,
        TaskKind::ImportSnapshot,
    ]
    .into_iter()
    .enumerate()
    {
        s.create_task(
            &new_task(kind, if i % 2 == 0 { "a" } else { "b" }, None),
            T0 + i as i64,
        )
        .unwrap();
    }
    let first = s.claim("w", MINUTE, 0, T0).unwrap().unwrap();
    assert!(s.finish("w", &first.id, &completed(), T0).unwrap());
    let export = s
        .tasks(
            "b",
            &TaskQuery {
                kinds: vec![TaskKind::ExportImage],
                ..TaskQuery::default()
            },
        )
        .unwrap()
        .items
        .remove(0);
    s.cancel("b", &export.id, "no", T0).unwrap();
    let mut got = s.counts().unwrap();
    got.sort_by_key(|(k, st, _)| (k.as_str(), st.as_str()));
    let mut want = vec![
        (TaskKind::ImportImage, TaskState::Completed, 1),
        (TaskKind::ImportImage, TaskState::Active, 2),
        (TaskKind::ExportImage, TaskState::Cancelling, 1),
        (TaskKind::ImportSnapshot, TaskState::Active, 1),
    ];
    want.sort_by_key(|(k, st, _)| (k.as_str(), st.as_str()));
    assert_eq!(got, want);
}

fn images_are_stored_replaced_and_deleted(db: &Db) {
    let s = db.store();
    let mut i = image("ami-0000000000000000a", "alice", "debian", T0);
    i.tags = vec![("os".into(), "debian".into())];
    i.platform = Some("Linux".into());
    s.put_image(&i).unwrap();
    assert_eq!(s.image("alice", &i.id).unwrap(), Some(i.clone()));
    // Replaced by id.
    i.description = None;
    i.snapshot_ids = vec!["snap-9".into()];
    s.put_image(&i).unwrap();
    assert_eq!(s.image("alice", &i.id).unwrap(), Some(i.clone()));
    // Names are unique among a tenant's live images; another tenant may reuse one.
    assert!(matches!(
        s.put_image(&image("ami-0000000000000000b", "alice", "debian", T0)),
        Err(Error::Db(_))
    ));
    s.put_image(&image("ami-0000000000000000c", "bob", "debian", T0))
        .unwrap();
    i.state = "deregistered".into();
    s.put_image(&i).unwrap();
    s.put_image(&image("ami-0000000000000000b", "alice", "debian", T0))
        .unwrap();
    assert!(s.delete_image("alice", &i.id).unwrap());
    assert!(!s.delete_image("alice", &i.id).unwrap());
    assert_eq!(s.image("alice", &i.id).unwrap(), None);
    assert_eq!(s.images("alice", &[], None, None).unwrap().items.len(), 1);

    // A snapshot stored twice (a resumed worker) is replaced, its tags kept.
    let mut sn = snapshot("snap-0000000000000000a", "alice");
    s.put_snapshot(&sn).unwrap();
    assert!(
        s.set_tags("alice", &sn.id, &[("a".into(), "1".into())])
            .unwrap()
    );
    sn.size = 4096;
    s.put_snapshot(&sn).unwrap();
    assert_eq!(s.snapshot("alice", &sn.id).unwrap(), Some(sn.clone()));
    assert_eq!(
        s.tags("alice", &sn.id).unwrap(),
        Some(vec![("a".into(), "1".into())])
    );
}

fn tags_are_set_replaced_removed_and_bounded(db: &Db) {
    let s = db.store();
    let t = s
        .create_task(&new_task(TaskKind::ImportImage, "alice", None), T0)
        .unwrap();
    let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
    assert!(
        s.set_tags("alice", &t.id, &[pair("b", "1"), pair("team", "y")])
            .unwrap()
    );
    assert_eq!(
        s.task("alice", &t.id).unwrap().unwrap().tags,
        vec![pair("team", "y"), pair("b", "1")]
    );
    // A value that does not match is not removed; no value removes whatever it is.
    assert!(
        s.delete_tags("alice", &t.id, &[("team".into(), Some("x".into()))])
            .unwrap()
    );
    assert_eq!(
        s.tags("alice", &t.id).unwrap(),
        Some(vec![pair("team", "y"), pair("b", "1")])
    );
    assert!(
        s.delete_tags(
            "alice",
            &t.id,
            &[("team".into(), Some("y".into())), ("b".into(), None)]
        )
        .unwrap()
    );
    assert_eq!(s.tags("alice", &t.id).unwrap(), Some(vec![]));
    assert_eq!(s.tags("alice", "ami-nope").unwrap(), None);
    assert!(!s.set_tags("alice", "ami-nope", &[pair("a", "b")]).unwrap());

    let many: Vec<_> = (0..MAX_TAGS).map(|i| pair(&format!("k{i}"), "v")).collect();
    assert!(s.set_tags("alice", &t.id, &many).unwrap());
    assert!(matches!(
        s.set_tags("alice", &t.id, &[pair("one-more", "v")]),
        Err(Error::Invalid(_))
    ));
    // Replacing a value at the limit is fine, and the refused call changed nothing.
    assert!(s.set_tags("alice", &t.id, &[pair("k0", "w")]).unwrap());
    let tags = s.tags("alice", &t.id).unwrap().unwrap();
    assert_eq!(tags.len(), MAX_TAGS);
    assert_eq!(tags[0], pair("k0", "w"));
}

fn a_reopened_store_keeps_everything(db: &Db) {
    let s = db.store();
    let t = s
        .create_task(
            &new_task(TaskKind::ImportSnapshot, "alice", Some("tok")),
            T0,
        )
        .unwrap();
    s.put_image(&image("ami-0000000000000000a", "alice", "n", T0))
        .unwrap();
    let claimed = s.claim("w", MINUTE, 0, T0).unwrap().unwrap();
    drop(s);
    let s = db.store();
    assert_eq!(s.task("alice", &t.id).unwrap(), Some(claimed));
    assert!(s.image("alice", "ami-0000000000000000a").unwrap().is_some());
    assert_eq!(
        s.create_task(
            &new_task(TaskKind::ImportSnapshot, "alice", Some("tok")),
            T0
        )
        .unwrap()
        .id,
        t.id
    );
}

fn stores_opened_at_once_create_the_schema_once(db: &Db) {
    // Several processes starting together on a fresh database: one migrates, the others wait
    // and find the schema made.
    let stores: Vec<Box<dyn TaskStore>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..6).map(|_| sc.spawn(|| db.store())).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let t = stores[0]
        .create_task(&new_task(TaskKind::ImportImage, "alice", None), T0)
        .unwrap();
    for s in &stores {
        assert_eq!(s.task("alice", &t.id).unwrap().unwrap().id, t.id);
    }
}

fn a_newer_schema_is_refused(db: &Db) {
    drop(db.store());
    db.exec("INSERT INTO schema_version (version) VALUES (99)");
    match db::open(&db.url) {
        Err(Error::Db(m)) => assert!(m.contains("99"), "{m}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a schema from a newer stamp was accepted"),
    }
}

#[test]
fn open_rejects_unknown_urls() {
    for url in ["mysql://x", "sqlite:", "/tmp/x.db"] {
        assert!(matches!(db::open(url), Err(Error::Config(_))), "{url}");
    }
    // sqlite::memory: is a private store.
    let s = db::open("sqlite::memory:").unwrap();
    s.create_task(&new_task(TaskKind::ImportImage, "a", None), T0)
        .unwrap();
    assert_eq!(s.tasks("a", &TaskQuery::default()).unwrap().items.len(), 1);
}

/// Two processes (this test binary run again, as [`claim_child`]) claim from one PostgreSQL
/// database at once: each task is claimed and finished exactly once.
#[test]
fn pg_two_processes_never_claim_the_same_task() {
    let Some(db) = pg_db() else { return };
    let s = db.store();
    let n = 120;
    let mut want = BTreeSet::new();
    for i in 0..n {
        let t = s
            .create_task(&new_task(TaskKind::ImportImage, "alice", None), T0 + i)
            .unwrap();
        want.insert(t.id);
    }
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(&exe)
                .args(["--exact", "claim_child", "--ignored", "--nocapture"])
                .env("STAMP_DB_CHILD_URL", &db.url)
                .env("STAMP_DB_CHILD_GO", &go)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    std::fs::write(&go, b"").unwrap();
    let mut seen = BTreeMap::new();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let ids: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("CLAIMED "))
            .collect();
        eprintln!("process {i} claimed {}", ids.len());
        for id in ids {
            if let Some(other) = seen.insert(id.to_string(), i) {
                panic!("{id} claimed by process {other} and {i}");
            }
        }
    }
    assert_eq!(seen.keys().cloned().collect::<BTreeSet<_>>(), want);
    for id in &want {
        let t = s.task("alice", id).unwrap().unwrap();
        assert_eq!((t.state, t.attempts), (TaskState::Completed, 1), "{id}");
    }
}

/// The child of [`pg_two_processes_never_claim_the_same_task`]: waits for the go file, then
/// claims, reports and finishes tasks until none is left. Does nothing when run by hand.
#[test]
#[ignore]
fn claim_child() {
    let (Some(url), Some(go)) = (
        std::env::var_os("STAMP_DB_CHILD_URL"),
        std::env::var_os("STAMP_DB_CHILD_GO"),
    ) else {
        return;
    };
    let s = db::open(url.to_str().unwrap()).unwrap();
    let go = PathBuf::from(go);
    for _ in 0..6000 {
        if go.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let owner = format!("process-{}", std::process::id());
    while let Some(t) = s.claim(&owner, MINUTE, u64::MAX, T0 + 1_000).unwrap() {
        println!("CLAIMED {}", t.id);
        let update = TaskUpdate {
            progress: Some(50),
            ..TaskUpdate::default()
        };
        assert!(
            s.heartbeat(&owner, &t.id, MINUTE, &update, T0 + 1_000)
                .unwrap()
                .is_some()
        );
        assert!(s.finish(&owner, &t.id, &completed(), T0 + 1_001).unwrap());
    }
}

/// The server ends the store's connections (as a restart does): the next call reconnects.
#[test]
fn pg_store_reconnects_after_its_connections_are_ended() {
    let Some(db) = pg_db() else { return };
    let s = db.store();
    let t = s
        .create_task(&new_task(TaskKind::ImportImage, "alice", None), T0)
        .unwrap();
    let mut admin = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
    let ended = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap();
    assert!(!ended.is_empty());
    assert_eq!(s.task("alice", &t.id).unwrap().unwrap(), t);
    assert!(s.claim("w", MINUTE, 0, T0).unwrap().is_some());
}
