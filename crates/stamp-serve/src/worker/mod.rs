//! What a claimed task does: fetch its source, detect the format, validate the disk, convert
//! it into the service's store, and for exports write the requested format to the target.

pub mod scratch;
