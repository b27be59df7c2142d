//! Partition types with the GUIDs of the UAPI group's Discoverable Partitions Specification.

use uuid::Uuid;

/// What a partition is for, as its type GUID says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartitionType {
    /// EFI System Partition (`C12A7328-F81F-11D2-BA4B-00A0C93EC93B`).
    Esp,
    /// Root filesystem for x86-64 (`4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709`).
    RootX86_64,
    /// Root filesystem for 64-bit ARM (`B921B045-1DF0-41C3-AF44-4C6F280D3FAE`).
    RootArm64,
    /// `/usr` for x86-64 (`8484680C-9521-48C6-9C11-B0720656F69E`).
    UsrX86_64,
    /// `/usr` for 64-bit ARM (`B0E01050-EE5F-4390-949A-9101B17104E9`).
    UsrArm64,
    /// Swap (`0657FD6D-A4AB-43C4-84E5-0933C84B4F4F`).
    Swap,
    /// BIOS boot partition for GRUB (`21686148-6449-6E6F-744E-656564454649`).
    BiosBoot,
    /// Generic Linux data (`0FC63DAF-8483-4772-8E79-3D69D8477DE4`).
    LinuxData,
    /// Any other type: the GUID's 16 bytes in their textual order (as [`Uuid::as_bytes`]).
    Custom([u8; 16]),
}

impl PartitionType {
    /// The type GUID's bytes in textual order.
    pub fn guid(self) -> [u8; 16] {
        let u: u128 = match self {
            PartitionType::Esp => 0xC12A7328_F81F_11D2_BA4B_00A0C93EC93B,
            PartitionType::RootX86_64 => 0x4F68BCE3_E8CD_4DB1_96E7_FBCAF984B709,
            PartitionType::RootArm64 => 0xB921B045_1DF0_41C3_AF44_4C6F280D3FAE,
            PartitionType::UsrX86_64 => 0x8484680C_9521_48C6_9C11_B0720656F69E,
            PartitionType::UsrArm64 => 0xB0E01050_EE5F_4390_949A_9101B17104E9,
            PartitionType::Swap => 0x0657FD6D_A4AB_43C4_84E5_0933C84B4F4F,
            PartitionType::BiosBoot => 0x21686148_6449_6E6F_744E_656564454649,
            PartitionType::LinuxData => 0x0FC63DAF_8483_4772_8E79_3D69D8477DE4,
            PartitionType::Custom(b) => return b,
        };
        *Uuid::from_u128(u).as_bytes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn guids_print_as_the_specification_writes_them() {
        let s = Uuid::from_bytes(PartitionType::Esp.guid()).to_string();
        assert_eq!(s, "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
        let c = PartitionType::Custom(PartitionType::Swap.guid());
        assert_eq!(c.guid(), PartitionType::Swap.guid());
    }
}
