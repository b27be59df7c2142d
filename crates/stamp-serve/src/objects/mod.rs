//! Objects: where source disks come from and exports go. A local directory (`DIR/BUCKET/KEY`,
//! the default) or an S3-compatible store (`s3://BUCKET/PREFIX`).
