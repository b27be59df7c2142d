//! The registry client against a real `docker-registry` on loopback (plain, htpasswd, TLS) and
//! through a fault-injecting proxy.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use stamp_oci::registry::{Client, PushOutcome, RegistryOptions};
use stamp_oci::{Digest, Error, Reference, media};
use support::{Fault, Flavour, PASSWORD, Proxy, Rule, USER, registry, unique_repo};

/// Fast retries, and an empty credentials file so that the user's own files play no part.
fn opts() -> RegistryOptions {
    static NO_CREDS: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = NO_CREDS.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("auth.json"), "{}").unwrap();
        d
    });
    RegistryOptions {
        backoff: Duration::from_millis(5),
        auth_file: Some(dir.path().join("auth.json")),
        ..RegistryOptions::default()
    }
}

fn client() -> Client {
    Client::new(opts()).unwrap()
}

fn reference(host: &str, repo: &str, tag: &str) -> Reference {
    format!("{host}/{repo}:{tag}").parse().unwrap()
}

/// Pseudo-random bytes that differ per `seed` (so blobs of different tests differ).
fn blob(seed: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut counter = 0u64;
    while out.len() < len {
        out.extend_from_slice(Digest::of(format!("{seed}{counter}").as_bytes()).as_bytes());
        counter += 1;
    }
    out.truncate(len);
    out
}

/// A small image: one layer, a config and an OCI manifest.
struct Image {
    layer: Vec<u8>,
    config: Vec<u8>,
    manifest: Vec<u8>,
}

fn image(seed: &str) -> Image {
    let layer = blob(seed, 300 * 1024 + 7);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}},"config":{{"Labels":{{"seed":"{seed}"}}}}}}"#,
        Digest::of(&layer)
    )
    .into_bytes();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{}","size":{}}},"layers":[{{"mediaType":"{}","digest":"{}","size":{}}}]}}"#,
        media::OCI_MANIFEST,
        media::OCI_CONFIG,
        Digest::of(&config),
        config.len(),
        media::OCI_LAYER_TAR,
        Digest::of(&layer),
        layer.len()
    )
    .into_bytes();
    Image {
        layer,
        config,
        manifest,
    }
}

/// Pushes `img` to `r` and returns the manifest digest.
fn push_image(c: &Client, r: &Reference, img: &Image) -> Digest {
    for b in [&img.layer, &img.config] {
        c.push_blob(r, &Digest::of(b), b.len() as u64, b, None, &|_| {})
            .unwrap();
    }
    c.put_manifest(r, &img.manifest, media::OCI_MANIFEST)
        .unwrap()
}

fn pull_blob(c: &Client, r: &Reference, bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    c.get_blob(r, &Digest::of(bytes), bytes.len() as u64, &mut out, &|_| {})?;
    Ok(out)
}

#[test]
fn push_then_pull_by_tag_and_by_digest() {
    let reg = registry(Flavour::Plain);
    let c = client();
    let r = reference(&reg.host, &unique_repo("roundtrip"), "v1");
    let img = image("roundtrip");
    let layer_digest = Digest::of(&img.layer);
    assert!(!c.blob_exists(&r, &layer_digest).unwrap());

    let sent = std::cell::Cell::new(0u64);
    let outcome = c
        .push_blob(
            &r,
            &layer_digest,
            img.layer.len() as u64,
            &img.layer,
            None,
            &|n| sent.set(n),
        )
        .unwrap();
    assert_eq!(outcome, PushOutcome::Uploaded);
    assert_eq!(sent.get(), img.layer.len() as u64);
    assert!(c.blob_exists(&r, &layer_digest).unwrap());
    let cfg = &img.config;
    c.push_blob(&r, &Digest::of(cfg), cfg.len() as u64, cfg, None, &|_| {})
        .unwrap();
    let digest = c
        .put_manifest(&r, &img.manifest, media::OCI_MANIFEST)
        .unwrap();
    assert_eq!(digest, Digest::of(&img.manifest));

    let by_tag = c.get_manifest(&r).unwrap();
    assert_eq!(by_tag.bytes, img.manifest);
    assert_eq!(by_tag.media_type, media::OCI_MANIFEST);
    assert_eq!(by_tag.digest, digest);
    let by_digest = c.get_manifest(&r.with_digest(digest)).unwrap();
    assert_eq!(by_digest, by_tag);

    let got = std::cell::Cell::new(0u64);
    let mut out = Vec::new();
    c.get_blob(&r, &layer_digest, img.layer.len() as u64, &mut out, &|n| {
        got.set(n)
    })
    .unwrap();
    assert_eq!(out, img.layer);
    assert_eq!(got.get(), img.layer.len() as u64);
    assert_eq!(pull_blob(&c, &r, &img.config).unwrap(), img.config);

    // Into a file sink too.
    let mut f = tempfile::tempfile().unwrap();
    c.get_blob(&r, &layer_digest, img.layer.len() as u64, &mut f, &|_| {})
        .unwrap();
    assert_eq!(f.metadata().unwrap().len(), img.layer.len() as u64);
}

#[test]
fn pushing_a_blob_the_registry_has_uploads_nothing() {
    let reg = registry(Flavour::Plain);
    let proxy = Proxy::start(reg.addr, Vec::new());
    let c = client();
    let r = reference(&proxy.host, &unique_repo("exists"), "v1");
    let b = blob("exists", 4096);
    let d = Digest::of(&b);
    assert_eq!(
        c.push_blob(&r, &d, 4096, &b, None, &|_| {}).unwrap(),
        PushOutcome::Uploaded
    );
    let before = proxy.requests().len();
    assert_eq!(
        c.push_blob(&r, &d, 4096, &b, None, &|_| {}).unwrap(),
        PushOutcome::Exists
    );
    let after = proxy.requests();
    assert_eq!(after.len(), before + 1, "{after:?}");
    assert!(after[before].starts_with("HEAD "));
}

#[test]
fn cross_repository_mount_sends_no_bytes() {
    let reg = registry(Flavour::Plain);
    let proxy = Proxy::start(reg.addr, Vec::new());
    let c = client();
    let from = unique_repo("mount-src");
    let src = reference(&proxy.host, &from, "v1");
    let dst = reference(&proxy.host, &unique_repo("mount-dst"), "v1");
    let b = blob("mount", 64 * 1024);
    let d = Digest::of(&b);
    c.push_blob(&src, &d, b.len() as u64, &b, None, &|_| {})
        .unwrap();
    let outcome = c
        .push_blob(&dst, &d, b.len() as u64, &b, Some(&from), &|_| {})
        .unwrap();
    assert_eq!(outcome, PushOutcome::Mounted);
    assert!(!outcome.uploaded());
    assert!(c.blob_exists(&dst, &d).unwrap());
    let puts = proxy
        .requests()
        .iter()
        .filter(|r| r.starts_with("PUT ") && r.contains("mount-dst"))
        .count();
    assert_eq!(puts, 0, "{:?}", proxy.requests());
    assert_eq!(pull_blob(&c, &dst, &b).unwrap(), b);
}

#[test]
fn missing_manifest_is_not_found() {
    let reg = registry(Flavour::Plain);
    let r = reference(&reg.host, &unique_repo("missing"), "nope");
    assert!(matches!(client().get_manifest(&r), Err(Error::NotFound(_))));
    let d = Digest::of(b"no such blob");
    let mut out = Vec::new();
    assert!(matches!(
        client().get_blob(&r, &d, 12, &mut out, &|_| {}),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn basic_auth_right_wrong_and_missing_credentials() {
    let reg = registry(Flavour::Basic);
    let repo = unique_repo("basic");
    let r = reference(&reg.host, &repo, "v1");
    let img = image("basic");

    let good = Client::new(RegistryOptions {
        creds: Some((USER.into(), PASSWORD.into())),
        ..opts()
    })
    .unwrap();
    let d = push_image(&good, &r, &img);
    assert_eq!(good.get_manifest(&r).unwrap().digest, d);

    let wrong = Client::new(RegistryOptions {
        creds: Some((USER.into(), "wrong".into())),
        ..opts()
    })
    .unwrap();
    let e = wrong.get_manifest(&r).unwrap_err();
    assert!(matches!(e, Error::Auth { .. }), "{e}");
    assert!(!e.to_string().contains("wrong"), "{e}");

    // No credentials at all.
    let e = client().get_manifest(&r).unwrap_err();
    assert!(
        matches!(e, Error::Auth { .. }) && e.to_string().contains("none were found"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();

    // Credentials from an auth.json file.
    let file = support::write_auth_file(dir.path(), &reg.host, USER, PASSWORD);
    let from_file = Client::new(RegistryOptions {
        auth_file: Some(file),
        ..opts()
    })
    .unwrap();
    assert_eq!(from_file.get_manifest(&r).unwrap().digest, d);
    assert_eq!(pull_blob(&from_file, &r, &img.layer).unwrap(), img.layer);
}

#[test]
fn bearer_token_flow_anonymous_and_with_credentials() {
    let reg = registry(Flavour::Plain);
    let anon = Proxy::bearer(reg.addr, None);
    let c = client();
    let repo = unique_repo("bearer");
    let r = reference(&anon.host, &repo, "v1");
    let img = image("bearer");
    let d = push_image(&c, &r, &img);
    assert_eq!(c.get_manifest(&r).unwrap().digest, d);
    let log = anon.requests();
    let tokens: Vec<_> = log.iter().filter(|l| l.contains("/token")).collect();
    assert!(
        tokens
            .iter()
            .any(|t| t.contains(&format!("scope=repository%3A{repo}%3Apull%2Cpush"))),
        "{log:?}"
    );
    assert!(tokens.iter().all(|t| t.contains("service=stamp-test")));
    // Tokens are cached: far fewer token requests than requests.
    assert!(tokens.len() <= 3, "{log:?}");

    // A mount asks for push on the target and pull on the source in one token.
    let other = unique_repo("bearer-mount");
    let r_other = reference(&anon.host, &other, "v1");
    let layer = &img.layer;
    let outcome = c
        .push_blob(
            &r_other,
            &Digest::of(layer),
            layer.len() as u64,
            layer,
            Some(&repo),
            &|_| {},
        )
        .unwrap();
    assert_eq!(outcome, PushOutcome::Mounted);
    let log = anon.requests();
    let dst_scope = format!("scope=repository%3A{other}%3Apull%2Cpush");
    let src_scope = format!("scope=repository%3A{repo}%3Apull");
    assert!(
        log.iter().any(|l| l.contains("/token")
            && l.split(['?', '&']).any(|p| p == dst_scope)
            && l.split(['?', '&']).any(|p| p == src_scope)),
        "{log:?}"
    );

    let locked = Proxy::bearer(reg.addr, Some((USER, PASSWORD)));
    let r2 = reference(&locked.host, &repo, "v1");
    assert!(matches!(c.get_manifest(&r2), Err(Error::Auth { .. })));
    let good = Client::new(RegistryOptions {
        creds: Some((USER.into(), PASSWORD.into())),
        ..opts()
    })
    .unwrap();
    assert_eq!(good.get_manifest(&r2).unwrap().digest, d);
}

#[test]
fn tls_with_cert_dir_or_without_verification_and_refused_otherwise() {
    let reg = registry(Flavour::Tls);
    let r = reference(&reg.host, &unique_repo("tls"), "v1");
    let img = image("tls");

    let verified = Client::new(RegistryOptions {
        cert_dir: reg.cert_dir.clone(),
        ..opts()
    })
    .unwrap();
    let d = push_image(&verified, &r, &img);
    assert_eq!(verified.get_manifest(&r).unwrap().digest, d);

    let insecure = Client::new(RegistryOptions {
        tls_verify: false,
        ..opts()
    })
    .unwrap();
    assert_eq!(insecure.get_manifest(&r).unwrap().digest, d);
    assert_eq!(pull_blob(&insecure, &r, &img.layer).unwrap(), img.layer);

    let e = client().get_manifest(&r).unwrap_err();
    assert!(
        matches!(e, Error::Registry { status: 0, .. }) && e.to_string().contains("certificate"),
        "{e}"
    );
}

#[test]
fn server_errors_are_retried() {
    let reg = registry(Flavour::Plain);
    let proxy = Proxy::start(
        reg.addr,
        vec![
            Rule::new("POST", "/blobs/uploads/", Fault::Status(500), 2),
            Rule::new("PUT", "/blobs/uploads/", Fault::Status(503), 1),
            Rule::new("PUT", "/manifests/", Fault::Status(502), 1),
            Rule::new("GET", "/manifests/", Fault::Status(500), 2),
            Rule::new("GET", "/blobs/sha256", Fault::Status(429), 1),
        ],
    );
    let c = client();
    let r = reference(&proxy.host, &unique_repo("retry"), "v1");
    let img = image("retry");
    let d = push_image(&c, &r, &img);
    assert_eq!(c.get_manifest(&r).unwrap().digest, d);
    assert_eq!(pull_blob(&c, &r, &img.layer).unwrap(), img.layer);
    let failures = proxy
        .requests()
        .iter()
        .filter(|l| l.starts_with("POST"))
        .count();
    assert!(failures >= 3, "{:?}", proxy.requests());

    // Past the retries, the registry's error is reported.
    proxy.add_rule(Rule::new("GET", "/manifests/", Fault::Status(500), 100));
    let e = c.get_manifest(&r).unwrap_err();
    match &e {
        Error::Registry { status, detail, .. } => {
            assert_eq!(*status, 500);
            assert!(detail.contains("injected failure"), "{e}");
        }
        _ => panic!("{e}"),
    }
}

#[test]
fn cut_downloads_resume() {
    let reg = registry(Flavour::Plain);
    let proxy = Proxy::start(
        reg.addr,
        vec![Rule::new(
            "GET",
            "/blobs/sha256",
            Fault::CutBody(100_000),
            2,
        )],
    );
    let c = client();
    let r = reference(&proxy.host, &unique_repo("cut"), "v1");
    let img = image("cut");
    push_image(&c, &r, &img);
    assert_eq!(pull_blob(&c, &r, &img.layer).unwrap(), img.layer);
    let gets: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|l| l.starts_with("GET") && l.contains("/blobs/"))
        .collect();
    assert_eq!(gets.len(), 3, "{gets:?}");
}

#[test]
fn wrong_content_from_the_registry_is_a_digest_mismatch() {
    let reg = registry(Flavour::Plain);
    let proxy = Proxy::start(reg.addr, Vec::new());
    let c = client();
    let r = reference(&proxy.host, &unique_repo("corrupt"), "v1");
    let img = image("corrupt");
    let d = push_image(&c, &r, &img);
    proxy.add_rule(Rule::new("GET", "/blobs/sha256", Fault::FlipByte, 1));
    let e = pull_blob(&c, &r, &img.layer).unwrap_err();
    assert!(
        matches!(e, Error::DigestMismatch { expected, .. } if expected == Digest::of(&img.layer)),
        "{e}"
    );
    // A manifest pulled by digest is checked against it.
    proxy.add_rule(Rule::new("GET", "/manifests/", Fault::FlipByte, 1));
    let e = c.get_manifest(&r.with_digest(d)).unwrap_err();
    assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
    // A blob longer than its descriptor says is cut off, not stored.
    let mut out = Vec::new();
    let e = c
        .get_blob(&r, &Digest::of(&img.layer), 1000, &mut out, &|_| {})
        .unwrap_err();
    assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
    assert!(out.len() <= 1000);
}

#[test]
fn bad_manifests_are_clear_errors() {
    let reg = registry(Flavour::Plain);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            media::OCI_MANIFEST,
            b"{\"schemaVersion\":2,".to_vec(),
            "malformed manifest",
        ),
        (
            "application/json",
            br#"{"schemaVersion":2,"mediaType":"application/vnd.example.thing+json"}"#.to_vec(),
            "unsupported media type 'application/vnd.example.thing+json'",
        ),
        (
            media::OCI_MANIFEST,
            {
                let mut v = br#"{"schemaVersion":2,"x":""#.to_vec();
                v.resize(5 * 1024 * 1024, b'a');
                v
            },
            "more than the 4194304",
        ),
    ];
    for (ct, body, want) in cases {
        let proxy = Proxy::start(
            reg.addr,
            vec![Rule::new(
                "GET",
                "/manifests/",
                Fault::Respond(ct.to_string(), body),
                1,
            )],
        );
        let r = reference(&proxy.host, &unique_repo("bad"), "v1");
        let e = client().get_manifest(&r).unwrap_err();
        assert!(e.to_string().contains(want), "{e} does not say {want}");
    }
    let r = reference(&reg.host, &unique_repo("bad-put"), "v1");
    assert!(matches!(
        client().put_manifest(&r, b"not json", media::OCI_MANIFEST),
        Err(Error::Malformed { .. })
    ));
}

/// A source that counts how many times it is opened.
struct CountingSource {
    bytes: Vec<u8>,
    opens: std::sync::atomic::AtomicUsize,
}

impl stamp_oci::registry::BlobSource for CountingSource {
    fn open(&self) -> std::io::Result<Box<dyn std::io::Read + '_>> {
        self.opens.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Box::new(self.bytes.as_slice()))
    }
}

#[test]
fn dropped_connections_are_retried_and_uploads_reopen_their_source() {
    let reg = registry(Flavour::Plain);
    let proxy = Proxy::start(
        reg.addr,
        vec![
            Rule::new("PUT", "/blobs/uploads/", Fault::Drop, 1),
            Rule::new("GET", "/manifests/", Fault::Drop, 2),
        ],
    );
    let c = client();
    let r = reference(&proxy.host, &unique_repo("drop"), "v1");
    let img = image("drop");
    let src = CountingSource {
        bytes: img.layer.clone(),
        opens: Default::default(),
    };
    let d = Digest::of(&img.layer);
    let outcome = c
        .push_blob(&r, &d, img.layer.len() as u64, &src, None, &|_| {})
        .unwrap();
    assert_eq!(outcome, PushOutcome::Uploaded);
    assert_eq!(src.opens.load(std::sync::atomic::Ordering::SeqCst), 2);
    let cfg = &img.config;
    c.push_blob(&r, &Digest::of(cfg), cfg.len() as u64, cfg, None, &|_| {})
        .unwrap();
    let md = c
        .put_manifest(&r, &img.manifest, media::OCI_MANIFEST)
        .unwrap();
    assert_eq!(c.get_manifest(&r).unwrap().digest, md);
    assert_eq!(pull_blob(&c, &r, &img.layer).unwrap(), img.layer);
}

#[test]
fn mounting_from_a_repository_without_the_blob_uploads_it() {
    let reg = registry(Flavour::Plain);
    let c = client();
    let r = reference(&reg.host, &unique_repo("mount-miss"), "v1");
    let b = blob("mount-miss", 1000);
    let outcome = c
        .push_blob(
            &r,
            &Digest::of(&b),
            1000,
            &b,
            Some(&unique_repo("empty")),
            &|_| {},
        )
        .unwrap();
    assert_eq!(outcome, PushOutcome::Uploaded);
    assert_eq!(pull_blob(&c, &r, &b).unwrap(), b);
}

#[test]
fn a_client_is_shared_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Client>();
    let reg = registry(Flavour::Plain);
    let c = client();
    let repo = unique_repo("threads");
    std::thread::scope(|s| {
        for i in 0..4 {
            let c = &c;
            let r = reference(&reg.host, &repo, &format!("t{i}"));
            s.spawn(move || {
                let img = image(&format!("threads{i}"));
                let d = push_image(c, &r, &img);
                assert_eq!(c.get_manifest(&r).unwrap().digest, d);
            });
        }
    });
}
