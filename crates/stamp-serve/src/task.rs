//! The records the service keeps: tasks (imports and exports, with AWS's states), and the
//! images and snapshots that imports produce. The API turns them into EC2 response types; the
//! workers move them through their states; [`crate::db`] stores them.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch (the store's clock unit).
pub type Millis = i64;

/// The current time in [`Millis`].
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// What a task does, by the API action that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskKind {
    /// ImportImage: disks → snapshots → an image (`import-ami-…`).
    ImportImage,
    /// ImportSnapshot: one disk → a snapshot (`import-snap-…`).
    ImportSnapshot,
    /// ImportVolume (legacy conversion task, `import-vol-…`): a manifest's disk → a volume.
    ImportVolume,
    /// ImportInstance (legacy conversion task, `import-i-…`): disks → an instance's volumes.
    ImportInstance,
    /// ExportImage (`export-ami-…`): an image's disk → an object in a format.
    ExportImage,
    /// CreateInstanceExportTask (`export-i-…`): a machine's disk → an object in a format.
    ExportInstance,
}

impl TaskKind {
    /// Every kind.
    pub const ALL: [TaskKind; 6] = [
        TaskKind::ImportImage,
        TaskKind::ImportSnapshot,
        TaskKind::ImportVolume,
        TaskKind::ImportInstance,
        TaskKind::ExportImage,
        TaskKind::ExportInstance,
    ];

    /// The prefix of its ids, as AWS writes them.
    pub fn id_prefix(self) -> &'static str {
        match self {
            TaskKind::ImportImage => "import-ami-",
            TaskKind::ImportSnapshot => "import-snap-",
            TaskKind::ImportVolume => "import-vol-",
            TaskKind::ImportInstance => "import-i-",
            TaskKind::ExportImage => "export-ami-",
            TaskKind::ExportInstance => "export-i-",
        }
    }

    /// The stable name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::ImportImage => "import-image",
            TaskKind::ImportSnapshot => "import-snapshot",
            TaskKind::ImportVolume => "import-volume",
            TaskKind::ImportInstance => "import-instance",
            TaskKind::ExportImage => "export-image",
            TaskKind::ExportInstance => "export-instance",
        }
    }

    /// The kind stored as [`TaskKind::as_str`].
    pub fn parse(s: &str) -> Option<TaskKind> {
        TaskKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Legacy conversion tasks (ImportVolume, ImportInstance) are cancelled, not deleted.
    pub fn is_conversion(self) -> bool {
        matches!(self, TaskKind::ImportVolume | TaskKind::ImportInstance)
    }

    /// A fresh id of this kind: the prefix and 17 hex digits, as AWS's.
    pub fn new_id(self) -> String {
        new_id(self.id_prefix())
    }
}

/// `prefix` and 17 random lowercase hex digits (`ami-`, `snap-`, task prefixes).
pub fn new_id(prefix: &str) -> String {
    let n: u128 = rand::random();
    format!("{prefix}{:017x}", n & ((1u128 << 68) - 1))
}

/// Where a task is in its life. The API shows these with AWS's words for the kind: import
/// image/snapshot tasks are `active`, `completed`, `deleting`, `deleted`; conversion and export
/// tasks are `active`, `completed`, `cancelling`, `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskState {
    /// Waiting or running.
    Active,
    /// Done; the result is set.
    Completed,
    /// Cancellation asked; a worker will stop it (or it is picked up to be finished as such).
    Cancelling,
    /// Cancelled, or failed (the status message says why).
    Cancelled,
}

impl TaskState {
    /// The stable name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Active => "active",
            TaskState::Completed => "completed",
            TaskState::Cancelling => "cancelling",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// The state stored as [`TaskState::as_str`].
    pub fn parse(s: &str) -> Option<TaskState> {
        [
            TaskState::Active,
            TaskState::Completed,
            TaskState::Cancelling,
            TaskState::Cancelled,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    /// Whether the task is over.
    pub fn is_final(self) -> bool {
        matches!(self, TaskState::Completed | TaskState::Cancelled)
    }

    /// AWS's word for this state of a task of `kind`.
    pub fn aws_word(self, kind: TaskKind) -> &'static str {
        let deletes = matches!(kind, TaskKind::ImportImage | TaskKind::ImportSnapshot);
        match (self, deletes) {
            (TaskState::Active, _) => "active",
            (TaskState::Completed, _) => "completed",
            (TaskState::Cancelling, true) => "deleting",
            (TaskState::Cancelled, true) => "deleted",
            (TaskState::Cancelling, false) => "cancelling",
            (TaskState::Cancelled, false) => "cancelled",
        }
    }
}

/// A task to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    /// Its id ([`TaskKind::new_id`]).
    pub id: String,
    /// The tenant (owner of the access key that asked).
    pub tenant: String,
    /// What it does.
    pub kind: TaskKind,
    /// The request that made it, as its form parameters (`ec2::Request::encode`), so that a
    /// worker can decode it again.
    pub request: Vec<(String, String)>,
    /// The client's idempotency token: a second create with the same tenant and token
    /// returns the first task.
    pub client_token: Option<String>,
    /// Description (shown by the Describe calls).
    pub description: Option<String>,
    /// Tags given with TagSpecification.
    pub tags: Vec<(String, String)>,
}

/// A worker's hold on a task: only the holder may update it until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The process (worker id) holding it.
    pub owner: String,
    /// When it lapses unless renewed by a heartbeat.
    pub expires_at: Millis,
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// `import-ami-…` etc.
    pub id: String,
    /// The tenant that owns it.
    pub tenant: String,
    /// What it does.
    pub kind: TaskKind,
    /// Where it is.
    pub state: TaskState,
    /// AWS's status message: `pending`, `converting`, `validating`, `completed`, or why it failed.
    pub status_message: Option<String>,
    /// Percent done (0–100).
    pub progress: u8,
    /// Bytes of the source converted so far.
    pub bytes_converted: u64,
    /// The request's form parameters.
    pub request: Vec<(String, String)>,
    /// The idempotency token.
    pub client_token: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Tags.
    pub tags: Vec<(String, String)>,
    /// What it produced (JSON, by kind: snapshot ids and sizes, image id, export location,
    /// validation report).
    pub result: Option<serde_json::Value>,
    /// Where a restarted worker resumes (JSON, by kind).
    pub checkpoint: Option<serde_json::Value>,
    /// Scratch bytes the task holds while it runs.
    pub scratch_bytes: u64,
    /// The current lease, if a worker holds it.
    pub lease: Option<Lease>,
    /// How many times a worker claimed it.
    pub attempts: u32,
    /// When it was created.
    pub created_at: Millis,
    /// When it last changed.
    pub updated_at: Millis,
    /// When it ended.
    pub finished_at: Option<Millis>,
}

/// A snapshot an import made: a disk stored in the objects under `object_key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// `snap-…`.
    pub id: String,
    /// Its owner.
    pub tenant: String,
    /// The stored disk (in the service's own bucket).
    pub object_key: String,
    /// The stored disk's format (`qcow2`).
    pub format: String,
    /// The disk's virtual size in bytes.
    pub size: u64,
    /// Description.
    pub description: Option<String>,
    /// The import task that made it.
    pub task_id: String,
    /// When it was made.
    pub created_at: Millis,
}

/// An image an ImportImage made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `ami-…`.
    pub id: String,
    /// Its owner.
    pub tenant: String,
    /// Name (unique per tenant).
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// `x86_64` or `arm64`.
    pub architecture: String,
    /// `uefi` or `legacy-bios`.
    pub boot_mode: Option<String>,
    /// `Linux` or `Windows` (what validation found).
    pub platform: Option<String>,
    /// Its snapshots in device order (the first is the root, `/dev/sda1`).
    pub snapshot_ids: Vec<String>,
    /// `available`, or `deregistered`.
    pub state: String,
    /// Tags.
    pub tags: Vec<(String, String)>,
    /// The import task that made it.
    pub task_id: String,
    /// When it was made.
    pub created_at: Millis,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_look_like_aws_ids() {
        let id = TaskKind::ImportSnapshot.new_id();
        assert!(id.starts_with("import-snap-"));
        assert_eq!(id.len(), "import-snap-".len() + 17);
        assert_ne!(id, TaskKind::ImportSnapshot.new_id());
        for k in TaskKind::ALL {
            assert_eq!(TaskKind::parse(k.as_str()), Some(k));
        }
    }

    #[test]
    fn states_use_the_words_of_each_kind() {
        assert_eq!(
            TaskState::Cancelled.aws_word(TaskKind::ImportSnapshot),
            "deleted"
        );
        assert_eq!(
            TaskState::Cancelling.aws_word(TaskKind::ImportVolume),
            "cancelling"
        );
        assert_eq!(
            TaskState::Cancelled.aws_word(TaskKind::ExportImage),
            "cancelled"
        );
        assert_eq!(TaskState::parse("completed"), Some(TaskState::Completed));
    }
}
