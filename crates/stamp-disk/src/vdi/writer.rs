//! Writing dynamic VDI images, streaming: each non-zero 1 MiB block is appended as the extents
//! pass it; the header and the block map (its size is known from the start) are written at the
//! end.

use std::path::Path;

use super::header::{
    BLOCK_SIZE, HEADER_LEN, Header, MAX_DISK_SIZE, SIGNATURE, TEXT, TYPE_DYNAMIC, UNALLOCATED,
    VERSION_1_1,
};
use crate::content_id::ContentId;
use crate::file::OutputFile;
use crate::{
    CreateOptions, DiskSummary, DiskWriter, Error, Extent, ExtentOrder, Format, Result, is_zero,
};

/// Where the block map starts: right after the header, as qemu and VirtualBox write.
const BMAP_OFFSET: u32 = HEADER_LEN as u32;

/// A dynamic VDI writer.
#[derive(Debug)]
pub struct VdiWriter {
    out: OutputFile,
    order: ExtentOrder,
    size: u64,
    bmap: Vec<u32>,
    offset_data: u32,
    allocated: u32,
    /// The block being filled, its index, and how many of its bytes are valid (the rest is
    /// stale and zeroed when needed).
    buf: Vec<u8>,
    cur: Option<u64>,
    filled: usize,
    id: ContentId,
    data_bytes: u64,
}

/// Creates a dynamic VDI at `path` for a disk of `size` bytes (rounded up to a sector). The only
/// option is `subformat=dynamic`.
pub fn create(path: &Path, size: u64, opts: &CreateOptions) -> Result<VdiWriter> {
    opts.allow_only(Format::Vdi, &["subformat"])?;
    match opts.subformat.as_deref() {
        None | Some("dynamic") => {}
        Some(other) => {
            return Err(Error::InvalidOption(format!(
                "vdi subformat '{other}' is not supported: stamp writes dynamic VDI images only (omit subformat or use subformat=dynamic)"
            )));
        }
    }
    let vsize = size.div_ceil(512) * 512;
    if vsize > MAX_DISK_SIZE {
        return Err(Error::InvalidOption(format!(
            "a vdi disk holds at most {MAX_DISK_SIZE} bytes; {size} bytes is too large"
        )));
    }
    let blocks = vsize.div_ceil(u64::from(BLOCK_SIZE));
    let bmap_bytes = (blocks * 4).div_ceil(512) * 512;
    let offset_data = u32::try_from(u64::from(BMAP_OFFSET) + bmap_bytes)
        .map_err(|_| Error::InvalidOption(format!("vdi disk of {size} bytes is too large")))?;
    let mut out = OutputFile::create(path)?;
    out.seek(u64::from(offset_data))?;
    Ok(VdiWriter {
        out,
        order: ExtentOrder::new(size),
        size: vsize,
        bmap: vec![UNALLOCATED; blocks as usize],
        offset_data,
        allocated: 0,
        buf: vec![0u8; BLOCK_SIZE as usize],
        cur: None,
        filled: 0,
        id: ContentId::new("vdi dynamic", vsize),
        data_bytes: 0,
    })
}

impl VdiWriter {
    /// Appends block `idx` holding `data` if it is not all zeros, and records it in the map.
    fn store(
        out: &mut OutputFile,
        id: &mut ContentId,
        (bmap, allocated): (&mut [u32], &mut u32),
        idx: u64,
        data: &[u8],
    ) -> Result<()> {
        if is_zero(data) {
            return Ok(());
        }
        if let Some(e) = bmap.get_mut(idx as usize) {
            *e = *allocated;
        }
        *allocated += 1;
        id.feed(idx * u64::from(BLOCK_SIZE), data);
        out.append(data)
    }

    /// Writes the block in the buffer if it holds any non-zero byte, and empties the buffer.
    fn flush_block(&mut self) -> Result<()> {
        let Some(idx) = self.cur.take() else {
            return Ok(());
        };
        self.buf[self.filled..].fill(0);
        let VdiWriter {
            out,
            id,
            bmap,
            allocated,
            buf,
            ..
        } = self;
        Self::store(out, id, (bmap, allocated), idx, buf)
    }

    /// Adds `data` at `inb` of block `idx`: a whole block is written straight from `data`, a part
    /// is gathered in the block buffer.
    fn put(&mut self, idx: u64, inb: usize, data: &[u8]) -> Result<()> {
        if self.cur != Some(idx) {
            self.flush_block()?;
            if inb == 0 && data.len() == BLOCK_SIZE as usize {
                let VdiWriter {
                    out,
                    id,
                    bmap,
                    allocated,
                    ..
                } = self;
                return Self::store(out, id, (bmap, allocated), idx, data);
            }
            self.cur = Some(idx);
            self.filled = 0;
        }
        if inb > self.filled {
            self.buf[self.filled..inb].fill(0);
        }
        self.buf[inb..inb + data.len()].copy_from_slice(data);
        self.filled = self.filled.max(inb + data.len());
        Ok(())
    }
}

impl DiskWriter for VdiWriter {
    fn write_extent(&mut self, e: Extent) -> Result<()> {
        self.order.accept(&e)?;
        let Extent::Data { offset, bytes } = e else {
            return Ok(());
        };
        self.data_bytes += bytes.len() as u64;
        let bs = u64::from(BLOCK_SIZE);
        let mut done = 0usize;
        while done < bytes.len() {
            let pos = offset + done as u64;
            let idx = pos / bs;
            let inb = (pos % bs) as usize;
            let n = (bs as usize - inb).min(bytes.len() - done);
            self.put(idx, inb, &bytes[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<DiskSummary> {
        self.flush_block()?;
        let id = std::mem::replace(&mut self.id, ContentId::new("", 0)).finish();
        let image = uuid::Uuid::from_bytes(id);
        let snap = uuid::Uuid::new_v5(&image, b"last snapshot");
        let header = Header {
            text: TEXT.into(),
            signature: SIGNATURE,
            version: VERSION_1_1,
            header_size: 0x180,
            image_type: TYPE_DYNAMIC,
            image_flags: 0,
            description: String::new(),
            offset_bmap: BMAP_OFFSET,
            offset_data: self.offset_data,
            sector_size: 512,
            disk_size: self.size,
            block_size: BLOCK_SIZE,
            block_extra: 0,
            blocks_in_image: self.bmap.len() as u32,
            blocks_allocated: self.allocated,
            uuid_image: image.to_bytes_le(),
            uuid_last_snap: snap.to_bytes_le(),
            uuid_link: [0; 16],
            uuid_parent: [0; 16],
        };
        self.out.write_all_at(&header.to_bytes(), 0)?;
        let mut map: Vec<u8> = self.bmap.iter().flat_map(|e| e.to_le_bytes()).collect();
        map.resize(map.len().div_ceil(512) * 512, 0);
        self.out.write_all_at(&map, u64::from(BMAP_OFFSET))?;
        let file_size =
            u64::from(self.offset_data) + u64::from(self.allocated) * u64::from(BLOCK_SIZE);
        // An image with no block ends at its (zero-padded) block map.
        self.out.set_len(file_size)?;
        let path = self.out.path().to_path_buf();
        let VdiWriter {
            out,
            size,
            data_bytes,
            ..
        } = *self;
        out.commit()?;
        Ok(DiskSummary {
            path,
            format: Format::Vdi.name().into(),
            virtual_size: size,
            file_size,
            data_bytes,
        })
    }
}
