//! Runs the bodies of the `build_*` fuzz targets once over seed inputs (the example recipes, the
//! same truncated and with bytes flipped, and PE headers cut at every point), so that `cargo
//! test` here catches a panic without a fuzzing run.
#![allow(clippy::unwrap_used)]

#[path = "../fuzz_targets/build_common.rs"]
mod build_common;

/// Every prefix of `seed`, and `seed` with each byte in turn flipped.
fn mutations(seed: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    let cuts = (0..seed.len()).map(|n| seed[..n].to_vec());
    let flips = (0..seed.len()).map(|i| {
        let mut v = seed.to_vec();
        v[i] ^= 0xff;
        v
    });
    cuts.chain(flips)
}

#[test]
fn example_recipes_and_their_mutations_never_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "toml") {
            let seed = std::fs::read(&path).unwrap();
            build_common::recipe(&seed);
            mutations(&seed).for_each(|m| build_common::recipe(&m));
        }
    }
}

#[test]
fn pe_headers_cut_anywhere_never_panic() {
    let mut pe = vec![0u8; 0x400];
    pe[..2].copy_from_slice(b"MZ");
    pe[0x3c] = 0x80;
    pe[0x80..0x84].copy_from_slice(b"PE\0\0");
    pe[0x84..0x86].copy_from_slice(&0x8664u16.to_le_bytes());
    pe[0x86] = 1;
    pe[0x94] = 240;
    pe[0x98..0x9a].copy_from_slice(&0x20bu16.to_le_bytes());
    mutations(&pe).for_each(|m| build_common::pe_stub(&m));
}
