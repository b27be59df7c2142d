//! [`Image`]: a laid-out filesystem or disk as its size and a stream of extents.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Mutex, PoisonError};

use stamp_disk::{DiskSummary, DiskWriter, Extent};

use crate::{Error, Result};

/// Extents queued for each writer when there are several: enough that a writer that is briefly
/// slower does not stall the others, few enough to bound memory (this × the largest extent, per
/// writer; extents share their `Bytes`, so a queued extent costs memory only once across writers).
const QUEUE_DEPTH: usize = 16;

/// A laid-out filesystem or partitioned disk: its size and its contents as extents in ascending
/// order (gaps are zeros), produced lazily so that file contents stream from their source.
pub struct Image<'a> {
    /// Size in bytes.
    pub size: u64,
    /// The contents.
    pub extents: Box<dyn Iterator<Item = Result<Extent>> + Send + 'a>,
}

impl std::fmt::Debug for Image<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Image<'_> {
    /// Feeds the image to every writer in `writers` in one pass over the extents and finishes
    /// them; the summaries come back in the order of `writers`.
    ///
    /// One writer is fed on the current thread. Several are each fed on a thread of their own
    /// through a bounded queue, so that, say, a compressed VMDK and a qcow2 are written
    /// concurrently, and are finished concurrently. On any error — from the extents, from a
    /// writer, or from a writer's `finish` — every writer is dropped unfinished (which removes its
    /// temporary file), outputs already finished are removed, and the first error is returned.
    pub fn write_to(self, writers: Vec<Box<dyn DiskWriter>>) -> Result<Vec<DiskSummary>> {
        if writers.len() <= 1 {
            return write_serial(self.extents, writers);
        }
        let writers = feed_parallel(self.extents, writers)?;
        finish_parallel(writers)
    }
}

/// Feeds `extents` to `writers` on the current thread and finishes them.
fn write_serial(
    extents: impl Iterator<Item = Result<Extent>>,
    mut writers: Vec<Box<dyn DiskWriter>>,
) -> Result<Vec<DiskSummary>> {
    for e in extents {
        let e = e?;
        for w in writers.iter_mut() {
            w.write_extent(e.clone())?;
        }
    }
    Ok(writers
        .into_iter()
        .map(|w| w.finish())
        .collect::<std::result::Result<_, _>>()?)
}

/// The first error of several threads, and a flag that tells them all to stop.
#[derive(Default)]
struct Failure {
    failed: AtomicBool,
    first: Mutex<Option<Error>>,
}

impl Failure {
    /// Records `e` (kept only if it is the first) and tells everyone to stop.
    fn set(&self, e: Error) {
        self.failed.store(true, Ordering::SeqCst);
        let mut first = self.first.lock().unwrap_or_else(PoisonError::into_inner);
        first.get_or_insert(e);
    }

    /// Returns true if and only if something failed.
    fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// The first error, if any.
    fn into_error(self) -> Option<Error> {
        self.first
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// An error for a writer thread that could not start or that panicked; `i` counts from 0.
fn thread_error(op: &'static str, i: usize, source: std::io::Error) -> Error {
    Error::io(op, PathBuf::from(format!("output {}", i + 1)), source)
}

/// Feeds `extents` to each of `writers` on a thread of its own; returns the writers, fed and
/// not finished, or the first error (the writers then dropped).
fn feed_parallel(
    extents: impl Iterator<Item = Result<Extent>>,
    writers: Vec<Box<dyn DiskWriter>>,
) -> Result<Vec<Box<dyn DiskWriter>>> {
    let failure = Failure::default();
    let fed: Vec<Option<Box<dyn DiskWriter>>> = std::thread::scope(|s| {
        let mut queues = Vec::with_capacity(writers.len());
        let mut threads = Vec::with_capacity(writers.len());
        for (i, mut w) in writers.into_iter().enumerate() {
            let (tx, rx) = sync_channel::<Extent>(QUEUE_DEPTH);
            let failure = &failure;
            let spawned = std::thread::Builder::new()
                .name(format!("stamp-write-{i}"))
                .spawn_scoped(s, move || {
                    for e in rx {
                        if failure.failed() {
                            return None;
                        }
                        if let Err(err) = w.write_extent(e) {
                            failure.set(err.into());
                            return None;
                        }
                    }
                    Some(w)
                });
            match spawned {
                Ok(t) => {
                    queues.push(tx);
                    threads.push(t);
                }
                Err(e) => {
                    failure.set(thread_error("start a writer thread for", i, e));
                    break;
                }
            }
        }
        'extents: for e in extents {
            if failure.failed() {
                break;
            }
            let e = match e {
                Ok(e) => e,
                Err(err) => {
                    failure.set(err);
                    break;
                }
            };
            for q in &queues {
                // A closed queue means its writer stopped; it has recorded why (or panicked,
                // which joining reports).
                if q.send(e.clone()).is_err() {
                    failure.failed.store(true, Ordering::SeqCst);
                    break 'extents;
                }
            }
        }
        drop(queues);
        threads
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                t.join().unwrap_or_else(|_| {
                    let e = std::io::Error::other("the writer thread panicked");
                    failure.set(thread_error("write", i, e));
                    None
                })
            })
            .collect()
    });
    match failure.into_error() {
        Some(e) => Err(e),
        None => Ok(fed.into_iter().flatten().collect()),
    }
}

/// Finishes every writer of `writers` on a thread of its own. If any fails, the outputs the
/// others finished are removed and the first error (in the order of `writers`) is returned.
fn finish_parallel(writers: Vec<Box<dyn DiskWriter>>) -> Result<Vec<DiskSummary>> {
    let results: Vec<Result<DiskSummary>> = std::thread::scope(|s| {
        let threads: Vec<_> = writers
            .into_iter()
            .enumerate()
            .map(|(i, w)| {
                std::thread::Builder::new()
                    .name(format!("stamp-finish-{i}"))
                    .spawn_scoped(s, move || w.finish())
            })
            .collect();
        threads
            .into_iter()
            .enumerate()
            .map(|(i, t)| match t {
                // The writer went with the closure: dropped unfinished.
                Err(e) => Err(thread_error("start a thread to finish", i, e)),
                Ok(t) => match t.join() {
                    Ok(r) => r.map_err(Error::from),
                    Err(_) => Err(thread_error(
                        "finish",
                        i,
                        std::io::Error::other("the writer thread panicked"),
                    )),
                },
            })
            .collect()
    });
    if results.iter().all(|r| r.is_ok()) {
        return results.into_iter().collect();
    }
    let mut first = None;
    for r in results {
        match r {
            // Best effort: the error being returned is the one that matters.
            Ok(done) => drop(std::fs::remove_file(&done.path)),
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    Err(first
        .unwrap_or_else(|| thread_error("finish", 0, std::io::Error::other("a writer failed"))))
}
