//! Hand-built streamOptimized streams in VMware's layout (grain directory at the end, footer,
//! end-of-stream marker), so a test can put exactly the records it needs, broken ones included.

use vmdk::header::{
    FLAG_COMPRESSED, FLAG_MARKERS, FLAG_VALID_NEWLINE_TEST, GD_AT_END, MAGIC, RawSparseHeader,
};

/// The header of a stream of `capacity` sectors with 64 KiB grains and no descriptor.
pub(crate) fn header(capacity: u64) -> Vec<u8> {
    RawSparseHeader {
        magic: MAGIC,
        version: 3,
        flags: FLAG_VALID_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS,
        capacity,
        grain_size: 128,
        descriptor_offset: 0,
        descriptor_size: 0,
        num_gtes_per_gt: 512,
        rgd_offset: 0,
        gd_offset: GD_AT_END,
        overhead: 1,
        unclean_shutdown: 0,
        newline_check: *b"\n \r\n",
        compress_algorithm: 1,
    }
    .to_bytes()
    .to_vec()
}

/// Appends a grain record: LBA, compressed size, payload, padding to a sector.
pub(crate) fn grain(out: &mut Vec<u8>, lba: u64, z: &[u8]) {
    out.extend_from_slice(&lba.to_le_bytes());
    out.extend_from_slice(&(z.len() as u32).to_le_bytes());
    out.extend_from_slice(z);
    out.resize(out.len().next_multiple_of(512), 0);
}

/// VMware's ending: grain directory marker and directory, footer marker and footer, EOS marker.
pub(crate) fn end_stream(out: &mut Vec<u8>, capacity: u64) {
    let marker = |out: &mut Vec<u8>, val: u64, kind: u32| {
        let mut m = [0u8; 512];
        m[..8].copy_from_slice(&val.to_le_bytes());
        m[12..16].copy_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&m);
    };
    let gd_sector = out.len() as u64 / 512 + 1;
    marker(out, 1, vmdk::stream::MARKER_GD);
    out.extend_from_slice(&[0u8; 512]);
    marker(out, 1, vmdk::stream::MARKER_FOOTER);
    let mut footer = header(capacity);
    footer[56..64].copy_from_slice(&gd_sector.to_le_bytes());
    out.extend_from_slice(&footer);
    marker(out, 0, vmdk::stream::MARKER_EOS);
}

/// A whole stream of `capacity` sectors holding `grains` (LBA, content) in order.
pub(crate) fn whole_stream(capacity: u64, grains: &[(u64, &[u8])]) -> Vec<u8> {
    let mut s = header(capacity);
    for (lba, data) in grains {
        grain(&mut s, *lba, &vmdk::grain::deflate_grain(data));
    }
    end_stream(&mut s, capacity);
    s
}
