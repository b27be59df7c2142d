//! Acceptance: every real-world image qemu-img reads converts to the same raw bytes with stamp;
//! every image qemu-img refuses (and every BAD-* one) stamp refuses with a clear error, exit 1.

use super::common::*;

/// Images qemu-img reads wrongly, where stamp refuses instead, with the reason.
const WRONG_IN_QEMU: &[(&str, &str)] = &[(
    "vhd/win10-differencing-fat.vhd",
    "qemu's vpc driver ignores VHD parents and reads a differencing disk as if its parent were all \
     zeros; stamp needs the parent (fat-parent.vhd, absent) and says so",
)];

/// Asserts two raw files hold the same bytes: same length, and `qemu-img compare` of the two as
/// raw (which skips holes, so multi-GiB sparse disks compare fast) finds no difference.
fn assert_same_raw(rel: &str, ours: &std::path::Path, theirs: &std::path::Path) {
    let a = std::fs::metadata(ours).unwrap().len();
    let b = std::fs::metadata(theirs).unwrap().len();
    assert_eq!(a, b, "{rel}: virtual size differs from qemu-img");
    let c = qemu_img(&["compare", "-f", "raw", "-F", "raw", s(ours), s(theirs)]);
    assert_eq!(c.code, 0, "{rel}: differs from qemu-img: {}", c.stdout);
}

/// The image rows of MANIFEST.tsv (path without `.gz`), skipping OVF descriptors and manifests.
fn manifest_images(root: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(root.join("MANIFEST.tsv")).unwrap();
    text.lines()
        .skip(1)
        .filter_map(|l| l.split('\t').next())
        .map(|f| f.trim_end_matches(".gz").to_string())
        .filter(|f| !f.ends_with(".ovf") && !f.ends_with(".mf"))
        .collect()
}

#[test]
fn every_fixture_converts_like_qemu_img_or_is_refused() {
    let dir = fixtures_unpacked();
    let out = tmp();
    let images = manifest_images(dir.path());
    assert!(images.len() >= 20, "manifest lists {} images", images.len());
    let mut checked = 0;
    for rel in images {
        let path = dir.path().join(&rel);
        let is_ova = rel.ends_with(".ova");
        let bad = rel.contains("BAD-");
        let name = rel.replace('/', "_");
        let ours = out.path().join(format!("{name}.stamp.raw"));
        let mut args = vec!["convert"];
        if is_ova {
            args.extend(["-f", "ova"]);
        }
        args.extend(["-O", "raw", s(&path), s(&ours)]);
        let r = stamp(&args);
        // The reference: qemu-img on the file itself, or for an OVA on its disk member.
        let reference = if is_ova {
            ova_disk_with_qemu(&path, out.path(), &name)
        } else {
            let theirs = out.path().join(format!("{name}.qemu.raw"));
            let q = qemu_img(&["convert", "-O", "raw", s(&path), s(&theirs)]);
            (q.code == 0).then_some(theirs)
        };
        match (bad, reference) {
            (false, Some(_)) if WRONG_IN_QEMU.iter().any(|(f, _)| *f == rel) => {
                assert_eq!(r.code, 1, "{rel}: {}", r.stderr);
                assert!(r.stderr.contains("not found"), "{rel}: {}", r.stderr);
            }
            (false, Some(theirs)) => {
                assert_eq!(
                    r.code, 0,
                    "{rel}: stamp failed where qemu-img reads it: {}",
                    r.stderr
                );
                assert_same_raw(&rel, &ours, &theirs);
            }
            // An extent of a multi-file VMDK opened on its own: qemu-img refuses it, stamp may
            // read it (its grain tables are complete); it must not fail any other way.
            (false, None) if r.code == 0 => {
                assert!(std::fs::metadata(&ours).unwrap().len() > 0, "{rel}");
            }
            _ => {
                assert_eq!(
                    r.code, 1,
                    "{rel}: expected refusal with exit 1, got {}: {}",
                    r.code, r.stderr
                );
                assert!(r.stderr.starts_with("error: "), "{rel}: {}", r.stderr);
                let file_name = path.file_name().unwrap().to_str().unwrap();
                assert!(
                    r.stderr.contains(file_name),
                    "{rel}: the error does not name the file: {}",
                    r.stderr
                );
                assert!(!r.stderr.contains("panicked"), "{rel}: {}", r.stderr);
                assert!(!ours.exists(), "{rel}: a partial output was left behind");
            }
        }
        assert!(
            temp_leftovers(out.path()).is_empty(),
            "{rel}: temporary files left"
        );
        checked += 1;
    }
    assert!(checked >= 20);
}

/// For an OVA that is a tar with an OVF, the raw contents qemu-img reads from its first disk
/// (extracted with tar), if qemu-img reads it.
fn ova_disk_with_qemu(
    ova: &std::path::Path,
    out: &std::path::Path,
    name: &str,
) -> Option<std::path::PathBuf> {
    let x = out.join(format!("{name}.x"));
    std::fs::create_dir_all(&x).unwrap();
    let t = std::process::Command::new("tar")
        .args(["-xf", s(ova), "-C", s(&x)])
        .output()
        .unwrap();
    if !t.status.success() {
        return None;
    }
    let mut members: Vec<_> = std::fs::read_dir(&x)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    members.sort();
    members
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "ovf"))?;
    let disk = members.iter().find(|p| {
        !matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("ovf" | "mf" | "cert")
        )
    })?;
    let theirs = out.join(format!("{name}.qemu.raw"));
    let q = qemu_img(&["convert", "-O", "raw", s(disk), s(&theirs)]);
    (q.code == 0).then_some(theirs)
}
