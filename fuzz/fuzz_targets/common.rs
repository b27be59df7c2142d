//! Shared by the fuzz targets: write the input to a file and exercise it through the public `open`
//! path the CLI uses, with the format forced or detected.

use stamp_disk::Format;

/// Opens `data` as an image (format forced if given) and reads what it claims to hold.
pub fn exercise(data: &[u8], format: Option<Format>) {
    let Ok(dir) = tempfile::tempdir() else { return };
    let path = dir.path().join("image");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let Ok(r) = stamp_disk::open(&path, format) else {
        return;
    };
    let _ = r.info();
    let _ = r.check();
    let _ = r.allocation();
    let size = r.virtual_size().min(16 << 20);
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < size {
        let n = (1u64 << 20).min(size - pos) as usize;
        if r.read_at(&mut buf[..n], pos).is_err() {
            break;
        }
        pos += n as u64;
    }
}
