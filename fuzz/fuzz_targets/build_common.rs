//! Bodies of the `build_*` fuzz targets, shared with `tests/build_seeds.rs`.
#![allow(dead_code)]

use std::path::Path;

use stamp_build::boot::pe::{self, NewSection, SectionData};
use stamp_build::recipe::Recipe;

/// A PE stub from untrusted bytes: parsing and appending UKI sections must return an error or
/// a result, never panic or allocate without bound.
pub fn pe_stub(data: &[u8]) {
    if pe::parse(data, "fuzz.efi").is_err() {
        return;
    }
    let new = [
        NewSection {
            name: ".cmdline",
            data: SectionData::Bytes(b"root=PARTUUID=x rw\0".to_vec()),
            characteristics: pe::SCN_CNT_INITIALIZED_DATA | pe::SCN_MEM_READ,
        },
        NewSection {
            name: ".linux",
            data: SectionData::Bytes(vec![0x4d; 4096]),
            characteristics: pe::SCN_CNT_INITIALIZED_DATA | pe::SCN_MEM_READ,
        },
    ];
    for machine in [pe::MACHINE_X86_64, pe::MACHINE_ARM64] {
        if let Ok((out, _)) = pe::append_sections(data, "fuzz.efi", machine, &new) {
            // What we wrote must parse again.
            assert!(pe::parse(&out, "out.efi").is_ok());
        }
    }
}

/// A recipe from untrusted text: parsing returns a recipe or an error naming a line.
pub fn recipe(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Recipe::parse(text, Path::new("fuzz.toml"));
}
