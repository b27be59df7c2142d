#![no_main]
//! Fuzz target: arbitrary text as a flake file (flake-pilot's YAML schema), parsed and checked
//! as `stamp app` does before a launch; none may panic, hang or allocate unbounded.

use std::path::Path;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/usr/share/flakes/fuzz.yaml");
    if let Ok((file, _)) = stamp_flake::config::parse(path, text) {
        if let Ok(flake) = stamp_flake::config::resolve("fuzz", path, file) {
            let _ = (flake.memory(), flake.cpus(), flake.overlay_size());
        }
    }
});
