//! Hostile streams through the whole pipeline: every rejection ends in an error that names the
//! byte offset, never a panic, a hang or a huge allocation, and no output is finished.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use support::{
    error_chain,
    stream::{end_stream, grain, header},
};
use vmdk::grain::deflate_grain;
use vmi_diskconv::{self as diskconv, Error, Options, Output};

mod support;

fn convert(stream: Vec<u8>) -> Result<diskconv::Report, Error> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.raw");
    diskconv::convert_reader(
        std::io::Cursor::new(stream),
        Output::RawFile(out),
        &Options {
            threads: 2,
            progress: None,
            sync: false,
            expected_size: None,
            declared_format: None,
            checksum: Some(diskconv::Checksum::Sha256),
        },
    )
}

#[test]
fn grain_inflating_past_grain_size_is_rejected_with_offset() {
    let mut s = header(1024);
    grain(&mut s, 0, &deflate_grain(&vec![1u8; 65536 * 2]));
    end_stream(&mut s, 1024);
    let err = convert(s).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Inflate {
                offset: 512,
                lba: 0,
                source: vmdk::grain::InflateError::TooLarge { .. }
            }
        ),
        "{err:?}"
    );
}

#[test]
fn garbage_zlib_is_rejected_with_offset() {
    let mut s = header(1024);
    grain(&mut s, 0, &deflate_grain(&[1u8; 4096]));
    grain(&mut s, 128, b"\x78\x9c this is not deflate data at all");
    end_stream(&mut s, 1024);
    let err = convert(s).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Inflate {
                offset: 1024,
                lba: 128,
                source: vmdk::grain::InflateError::Corrupt
            }
        ),
        "{err:?}"
    );
}

#[test]
fn truncated_stream_is_rejected_with_offset() {
    let mut s = header(1024);
    grain(&mut s, 0, &deflate_grain(&[1u8; 65536]));
    s.truncate(s.len() - 1);
    let err = convert(s).unwrap_err();
    let Error::Stream(inner) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        inner.to_string(),
        "stream truncated at offset 512 (inside a grain or marker)"
    );
}

#[test]
fn grain_past_capacity_is_rejected() {
    let mut s = header(128);
    grain(&mut s, 128, &deflate_grain(&[1u8; 512]));
    let err = convert(s).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Stream(vmdk::stream::Error::GrainPastCapacity { offset: 512, .. })
        ),
        "{err:?}"
    );
}

#[test]
fn absurd_capacity_is_rejected_before_any_allocation() {
    let s = header(u64::MAX / 512);
    let err = convert(s).unwrap_err();
    assert!(
        matches!(err, Error::Stream(vmdk::stream::Error::Header(_))),
        "{err:?}"
    );
}

#[test]
fn huge_compressed_size_is_rejected_without_buffering() {
    let mut s = header(1024);
    s.extend_from_slice(&0u64.to_le_bytes());
    s.extend_from_slice(&u32::MAX.to_le_bytes());
    s.resize(1024, 0);
    let err = convert(s).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Stream(vmdk::stream::Error::GrainTooLarge { offset: 512, .. })
        ),
        "{err:?}"
    );
}

#[test]
fn clean_stream_hashes_zeros_and_data() {
    let mut s = header(256);
    grain(&mut s, 128, &deflate_grain(&[7u8; 65536]));
    end_stream(&mut s, 256);
    let report = convert(s).unwrap();
    let mut content = vec![0u8; 65536];
    content.extend_from_slice(&[7u8; 65536]);
    use sha2::Digest;
    assert_eq!(
        report.digest(diskconv::Checksum::Sha256).unwrap(),
        hex::encode(sha2::Sha256::digest(&content))
    );
    assert_eq!(report.virtual_size, 131072);
    assert_eq!(report.bytes_written, 65536);
}

#[test]
fn the_digest_is_the_one_asked_for_and_none_unless_asked() {
    let mut s = header(256);
    grain(&mut s, 128, &deflate_grain(&[7u8; 65536]));
    end_stream(&mut s, 256);
    let mut content = vec![0u8; 65536];
    content.extend_from_slice(&[7u8; 65536]);
    let dir = tempfile::tempdir().unwrap();
    let run = |checksum| {
        diskconv::convert_reader(
            std::io::Cursor::new(s.clone()),
            Output::RawFile(dir.path().join("out.raw")),
            &Options {
                checksum,
                sync: false,
                ..Options::default()
            },
        )
        .unwrap()
    };
    use sha2::Digest;
    let report = run(Some(diskconv::Checksum::Sha512));
    assert_eq!(
        report.digest(diskconv::Checksum::Sha512),
        Some(&*hex::encode(sha2::Sha512::digest(&content)))
    );
    assert_eq!(report.digest(diskconv::Checksum::Sha256), None);
    let report = run(None);
    assert_eq!(report.checksum, None);
    assert_eq!(report.bytes_written, 65536);
}

#[test]
fn bad_grain_behind_a_full_pipeline_fails_instead_of_hanging() {
    // More grains than blocks in flight, so the producer is waiting for a credit when the
    // failure reaches the consumer.
    let mut s = header(128 * 400);
    let good = deflate_grain(&[3u8; 65536]);
    for lba in 0..400u64 {
        if lba == 2 {
            grain(&mut s, lba * 128, b"not zlib at all");
        } else {
            grain(&mut s, lba * 128, &good);
        }
    }
    end_stream(&mut s, 128 * 400);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(convert(s)));
    let result = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the conversion hung");
    assert!(
        matches!(result, Err(Error::Inflate { lba: 256, .. })),
        "{result:?}"
    );
}

/// A whole two-grain stream and where its second grain record starts.
fn two_grain_stream() -> (Vec<u8>, usize) {
    let mut s = header(1024);
    grain(&mut s, 0, &deflate_grain(&[3u8; 65536]));
    let second = s.len();
    grain(&mut s, 512, &deflate_grain(&[4u8; 65536]));
    end_stream(&mut s, 1024);
    (s, second)
}

#[test]
fn stream_cut_at_a_grain_boundary_from_a_pipe_fails_naming_the_offset() {
    let (whole, second) = two_grain_stream();
    assert!(convert(whole.clone()).is_ok());
    for cut in [second, whole.len() - 512] {
        let err = convert(whole[..cut].to_vec()).unwrap_err();
        let Error::Stream(vmdk::stream::Error::Incomplete { offset, .. }) = &err else {
            panic!("cut at {cut}: {err:?}")
        };
        assert_eq!(*offset, cut as u64);
        assert!(error_chain(&err).contains(&format!("offset {cut}")), "{err}");
    }
}

#[test]
fn stream_cut_at_a_grain_boundary_from_a_file_fails_and_leaves_no_image() {
    let (whole, second) = two_grain_stream();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cut.vmdk");
    std::fs::write(&input, &whole[..second]).unwrap();
    let out = dir.path().join("out.raw");
    let err = diskconv::convert_path(&input, Output::RawFile(out.clone()), &Options::default()).unwrap_err();
    assert!(
        matches!(err, Error::Stream(vmdk::stream::Error::Incomplete { offset, .. }) if offset == second as u64),
        "{err:?}"
    );
}

/// A writer that fails at once, like a full disk.
struct FullDisk;

impl std::io::Write for FullDisk {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::from_raw_os_error(28))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn sink_error_on_a_huge_sparse_disk_stops_the_pipeline_and_is_reported() {
    // 64 TiB declared, one grain at the very end: hashing the zeros before it would take hours.
    let capacity = vmdk::header::MAX_CAPACITY_SECTORS;
    let mut s = header(capacity);
    grain(&mut s, capacity - 128, &deflate_grain(&[5u8; 65536]));
    end_stream(&mut s, capacity);
    let started = std::time::Instant::now();
    let err = diskconv::convert_reader(
        std::io::Cursor::new(s),
        Output::RawStream(diskconv::StreamWriter(Box::new(FullDisk))),
        &Options::default(),
    )
    .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Write(diskconv::writer::Error::Write { offset: 0, .. })
        ),
        "{err:?}"
    );
    // Generous for a loaded CI machine; without cancellation this takes hours.
    assert!(started.elapsed().as_secs() < 30, "took {:?}", started.elapsed());
}
