//! `Image::write_to` with several writers: each gets the whole image (qemu-img compare against a
//! raw copy written independently), each on a thread of its own, and any failure — of a writer,
//! of the extent stream, or of a writer's finish — returns that error and leaves no output.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use bytes::Bytes;
use rand::{Rng, SeedableRng, rngs::StdRng};
use stamp_disk::{CreateOptions, DiskSummary, DiskWriter, Extent, Format};
use stamp_fs::{Error, Image};

const SIZE: u64 = 48 << 20;

/// A deterministic mix of data and zero extents over [`SIZE`] bytes, with data in the last
/// bytes; and the disk they describe.
fn extents() -> (Vec<Extent>, Vec<u8>) {
    let mut rng = StdRng::seed_from_u64(11);
    let mut disk = vec![0u8; SIZE as usize];
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < SIZE {
        let len = rng.random_range(1..=(3u64 << 20)).min(SIZE - pos) & !511;
        let len = if len == 0 { SIZE - pos } else { len };
        if rng.random_bool(0.5) || pos + len == SIZE {
            let mut data = vec![0u8; len as usize];
            rng.fill(&mut data[..]);
            // Half of it compressible, as real disks are.
            for b in data.iter_mut().take(len as usize / 2) {
                *b &= 3;
            }
            disk[pos as usize..(pos + len) as usize].copy_from_slice(&data);
            out.push(Extent::Data {
                offset: pos,
                bytes: Bytes::from(data),
            });
        } else if rng.random_bool(0.5) {
            out.push(Extent::Zero { offset: pos, len });
        }
        pos += len;
    }
    (out, disk)
}

/// An image of `extents`, with `Err(error)` in place of the extent at `fail_at` if given.
fn image(extents: Vec<Extent>, fail_at: Option<usize>) -> Image<'static> {
    let items = extents.into_iter().enumerate().map(move |(i, e)| {
        if Some(i) == fail_at {
            Err(Error::InvalidOption(format!(
                "the source broke at extent {i}"
            )))
        } else {
            Ok(e)
        }
    });
    Image {
        size: SIZE,
        extents: Box::new(items),
    }
}

/// Creates a writer of `format` with options `opts` at `dir/name`.
fn create(dir: &Path, name: &str, format: Format, opts: &str) -> Box<dyn DiskWriter> {
    stamp_disk::create(
        &dir.join(name),
        format,
        SIZE,
        &CreateOptions::parse(opts).unwrap(),
    )
    .unwrap()
}

/// Real writers of several formats in `dir`, including two compressed ones.
fn real_writers(dir: &Path) -> Vec<Box<dyn DiskWriter>> {
    vec![
        create(dir, "d.vmdk", Format::Vmdk, "subformat=streamOptimized"),
        {
            let o = CreateOptions {
                compress: true,
                ..Default::default()
            };
            stamp_disk::create(&dir.join("d.qcow2"), Format::Qcow2, SIZE, &o).unwrap()
        },
        create(dir, "d.vhd", Format::Vhd, ""),
        create(dir, "d.raw", Format::Raw, ""),
    ]
}

/// What a [`Probe`] does.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// Fails at the nth extent.
    Write(usize),
    /// Fails in finish.
    Finish,
}

/// A writer that records the threads it ran on and fails as told.
struct Probe {
    seen: usize,
    fault: Fault,
    threads: Arc<Mutex<Vec<ThreadId>>>,
}

impl Probe {
    fn boxed(fault: Fault, threads: &Arc<Mutex<Vec<ThreadId>>>) -> Box<dyn DiskWriter> {
        Box::new(Probe {
            seen: 0,
            fault,
            threads: threads.clone(),
        })
    }
}

impl DiskWriter for Probe {
    fn write_extent(&mut self, _e: Extent) -> stamp_disk::Result<()> {
        self.threads
            .lock()
            .unwrap()
            .push(std::thread::current().id());
        if self.fault == Fault::Write(self.seen) {
            return Err(stamp_disk::Error::InvalidOption(
                "the probe writer broke".into(),
            ));
        }
        self.seen += 1;
        Ok(())
    }

    fn finish(self: Box<Self>) -> stamp_disk::Result<DiskSummary> {
        if self.fault == Fault::Finish {
            return Err(stamp_disk::Error::InvalidOption(
                "the probe writer broke in finish".into(),
            ));
        }
        Ok(DiskSummary::default())
    }
}

fn assert_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn several_writers_get_the_same_image() {
    let d = tempfile::tempdir().unwrap();
    let (ext, disk) = extents();
    let reference = d.path().join("reference.img");
    std::fs::write(&reference, &disk).unwrap();
    let sums = image(ext, None).write_to(real_writers(d.path())).unwrap();
    let names: Vec<_> = sums
        .iter()
        .map(|s| s.path.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["d.vmdk", "d.qcow2", "d.vhd", "d.raw"]);
    for s in &sums {
        let out = Command::new("qemu-img")
            .args(["compare", "-F", "raw"])
            .arg(&s.path)
            .arg(&reference)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}{}",
            s.path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn several_writers_run_on_threads_of_their_own_and_one_on_the_callers() {
    let (ext, _) = extents();
    let threads = Arc::new(Mutex::new(Vec::new()));
    let other = Arc::new(Mutex::new(Vec::new()));
    image(ext.clone(), None)
        .write_to(vec![
            Probe::boxed(Fault::None, &threads),
            Probe::boxed(Fault::None, &other),
        ])
        .unwrap();
    let a = threads.lock().unwrap().clone();
    let b = other.lock().unwrap().clone();
    assert_eq!(a.len(), ext.len());
    assert_eq!(b.len(), ext.len());
    let me = std::thread::current().id();
    assert!(a.iter().all(|t| *t == a[0] && *t != me));
    assert!(b.iter().all(|t| *t == b[0] && *t != me));
    assert_ne!(a[0], b[0]);

    let single = Arc::new(Mutex::new(Vec::new()));
    image(ext, None)
        .write_to(vec![Probe::boxed(Fault::None, &single)])
        .unwrap();
    assert!(single.lock().unwrap().iter().all(|t| *t == me));
}

#[test]
fn a_failing_writer_stops_the_others_and_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let (ext, _) = extents();
    let threads = Arc::new(Mutex::new(Vec::new()));
    let mut writers = real_writers(d.path());
    writers.insert(2, Probe::boxed(Fault::Write(3), &threads));
    let Err(e) = image(ext, None).write_to(writers) else {
        panic!("write_to succeeded");
    };
    assert!(e.to_string().contains("the probe writer broke"), "{e}");
    assert_empty(d.path());
}

#[test]
fn a_failing_source_stops_every_writer_and_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let (ext, _) = extents();
    let Err(e) = image(ext, Some(4)).write_to(real_writers(d.path())) else {
        panic!("write_to succeeded");
    };
    assert!(
        e.to_string().contains("the source broke at extent 4"),
        "{e}"
    );
    assert_empty(d.path());
}

#[test]
fn a_failing_finish_removes_the_outputs_already_finished() {
    let d = tempfile::tempdir().unwrap();
    let (ext, _) = extents();
    let threads = Arc::new(Mutex::new(Vec::new()));
    let mut writers = real_writers(d.path());
    writers.push(Probe::boxed(Fault::Finish, &threads));
    let Err(e) = image(ext, None).write_to(writers) else {
        panic!("write_to succeeded");
    };
    assert!(
        e.to_string().contains("the probe writer broke in finish"),
        "{e}"
    );
    assert_empty(d.path());
}
