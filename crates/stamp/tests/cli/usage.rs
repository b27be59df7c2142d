//! Usage errors exit 2 with a message; bad values name what is accepted.

use super::common::*;

#[test]
fn unknown_verbs_and_flags_are_usage_errors() {
    assert_eq!(stamp(&["frobnicate"]).code, 2);
    assert_eq!(stamp(&["convert", "--bogus", "a", "b"]).code, 2);
    assert_eq!(stamp(&["convert", "only-one-arg"]).code, 2);
}

#[test]
fn bad_formats_options_and_sizes_are_explained() {
    let d = tmp();
    let a = d.path().join("a.raw");
    pattern_raw(&a, 1 << 20, 2, 1);
    let out = d.path().join("o.img");
    let r = stamp(&["convert", "-O", "qcow3", s(&a), s(&out)]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("unknown format 'qcow3'"), "{}", r.stderr);
    let r = stamp(&[
        "convert",
        "-O",
        "raw",
        "-o",
        "cluster_size=64K",
        s(&a),
        s(&out),
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("raw does not take option 'cluster_size'"),
        "{}",
        r.stderr
    );
    let r = stamp(&["create", "-f", "raw", s(&out), "12X"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("not a size"), "{}", r.stderr);
    assert!(!out.exists());
}

#[test]
fn converting_a_file_onto_itself_is_refused() {
    let d = tmp();
    let a = d.path().join("a.raw");
    pattern_raw(&a, 1 << 20, 2, 1);
    let before = std::fs::read(&a).unwrap();
    let r = stamp(&["convert", "-O", "raw", s(&a), s(&a)]);
    assert_eq!(r.code, 1);
    assert_eq!(std::fs::read(&a).unwrap(), before);
}

#[test]
fn missing_input_names_the_file() {
    let r = stamp(&["info", "/nonexistent/disk.qcow2"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("/nonexistent/disk.qcow2"), "{}", r.stderr);
    assert_eq!(r.stderr.matches("No such file").count(), 1, "{}", r.stderr);
}
