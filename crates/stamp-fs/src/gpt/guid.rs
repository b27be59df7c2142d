//! GUIDs: the on-disk (mixed-endian) form and deterministic derivation from data.

use uuid::Uuid;

/// The on-disk form of a GUID given in textual byte order.
pub(crate) fn to_disk(g: [u8; 16]) -> [u8; 16] {
    Uuid::from_bytes(g).to_bytes_le()
}

/// The namespace of the name-based GUIDs stamp derives (a fixed random UUID).
const NAMESPACE: Uuid = Uuid::from_u128(0x1d7f_0b5e_6c0a_5c4e_9a3b_6f1e_2d4c_8a71);

/// A GUID derived from `data` alone: a name-based (version 5, SHA-1) UUID in stamp's namespace.
pub(crate) fn derive(data: &[u8]) -> [u8; 16] {
    *Uuid::new_v5(&NAMESPACE, data).as_bytes()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn derived_guids_are_stable_v4_and_distinct() {
        let a = derive(b"disk");
        assert_eq!(a, derive(b"disk"));
        assert_ne!(a, derive(b"disk2"));
        assert_eq!(Uuid::from_bytes(a).get_version_num(), 5);
        let esp = [
            0xC1, 0x2A, 0x73, 0x28, 0xF8, 0x1F, 0x11, 0xD2, 0xBA, 0x4B, 0, 0xA0, 0xC9, 0x3E, 0xC9,
            0x3B,
        ];
        assert_eq!(
            to_disk(esp),
            [
                0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0, 0xA0, 0xC9, 0x3E,
                0xC9, 0x3B
            ]
        );
    }
}
