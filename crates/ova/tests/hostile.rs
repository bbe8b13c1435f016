//! Hostile archives and descriptors: entity expansion, path escapes, truncation, absurd sizes, garbage.
//! Each must give a clear error naming what and where, never a panic, hang or huge allocation.

// Test helpers outside #[test] fns fail loudly by design.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]

mod support;

use std::io::Read;

use ova::{Manifest, TarWalker, ovf, tar::Error};
use support::{build_with_tar_crate, bytes, fixtures};

/// Walks everything, reading every body; returns the first error.
fn walk_all(archive: &[u8]) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let mut walker = TarWalker::new(archive);
    let mut names = Vec::new();
    while let Some(mut entry) = walker.next_entry()? {
        names.push(entry.name().to_owned());
        std::io::copy(&mut entry, &mut std::io::sink())?;
    }
    Ok(names)
}

/// A raw header block with `name` and `size`, valid checksum, written without any path checks.
fn raw_member(name: &[u8], size: u64, body: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    {
        let old = header.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
    }
    header.set_mode(0o644);
    header.set_size(size);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(body);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn end_marker() -> Vec<u8> {
    vec![0; 1024]
}

#[test]
fn billion_laughs_and_xxe_are_refused_before_parsing() {
    for (text, what) in [
        (fixtures::BILLION_LAUGHS, "billion laughs"),
        (fixtures::XXE, "xxe"),
    ] {
        let err = ovf::parse(text).expect_err(what);
        assert!(matches!(err, ovf::Error::DtdRefused { line: 2 }), "{what}: {err}");
        assert!(err.to_string().contains("entity expansion"), "{err}");
    }
    // A DOCTYPE hidden after an element still counts.
    let late = fixtures::VIRTUALBOX_OVF.replace("<References>", "<!DOCTYPE x><References>");
    assert!(matches!(ovf::parse(&late), Err(ovf::Error::DtdRefused { .. })));
}

#[test]
fn dot_dot_and_absolute_member_names_are_refused() {
    for name in [
        &b"../evil.vmdk"[..],
        b"ok/../../evil",
        b"/etc/cron.d/x",
        b"a\\..\\b",
        b"./",
    ] {
        let mut archive = raw_member(name, 3, b"abc");
        archive.extend(end_marker());
        let err = walk_all(&archive).expect_err("unsafe name");
        let tar_err = err.downcast_ref::<Error>().expect("tar error");
        assert!(
            matches!(tar_err, Error::UnsafeName { offset: 0, .. }),
            "{tar_err}"
        );
    }
    // Also through a pax `path` record, the usual way long hostile names arrive.
    let record = "25 path=../../etc/shadow\n";
    assert_eq!(record.len(), 25);
    let mut pax = tar::Header::new_ustar();
    pax.set_entry_type(tar::EntryType::XHeader);
    pax.set_size(record.len() as u64);
    pax.set_cksum();
    let mut archive = pax.as_bytes().to_vec();
    archive.extend_from_slice(record.as_bytes());
    archive.resize(1024, 0);
    archive.extend(raw_member(b"harmless", 1, b"x"));
    archive.extend(end_marker());
    let err = walk_all(&archive).expect_err("pax path");
    assert!(
        err.to_string().contains("..") && err.to_string().contains("offset 1024"),
        "{err}"
    );
}

#[test]
fn truncated_archives_name_the_offset() {
    let disk = bytes(5, 10_000);
    let archive = build_with_tar_crate(&[("vm.ovf", b"<x/>"), ("disk.vmdk", &disk)]);
    // Every cut point ends in an error (no end marker), never a panic.
    for cut in (0..archive.len() - 1024).step_by(97) {
        assert!(walk_all(&archive[..cut]).is_err(), "cut at {cut} must fail");
    }
    // Inside the disk body: the reader reports the member and the offset.
    let err = walk_all(&archive[..512 * 3 + 5000]).expect_err("truncated body");
    let msg = err.to_string();
    assert!(msg.contains("disk.vmdk") && msg.contains("truncated"), "{msg}");
    // Inside a header block.
    let err = walk_all(&archive[..512 * 2 + 100]).expect_err("truncated header");
    assert!(
        matches!(err.downcast_ref::<Error>(), Some(Error::Truncated { .. })),
        "{err}"
    );
    // Skipping (not reading) a truncated body is caught too.
    let mut walker = TarWalker::new(&archive[..512 * 3 + 5000]);
    walker.next_entry().expect("ovf").expect("entry");
    walker.next_entry().expect("disk header").expect("entry");
    let err = walker.next_entry().expect_err("skip truncated");
    assert!(matches!(err, Error::Truncated { .. }), "{err}");
}

#[test]
fn absurd_sizes_are_refused_without_allocating() {
    let mut archive = raw_member(b"disk.vmdk", 1 << 60, b"");
    archive.extend(end_marker());
    let err = walk_all(&archive).expect_err("absurd size");
    assert!(
        matches!(err.downcast_ref::<Error>(), Some(Error::EntryTooLarge { size, .. }) if *size == 1 << 60)
    );

    // A pax header claiming 1 TiB of records.
    let mut pax = tar::Header::new_gnu();
    pax.set_entry_type(tar::EntryType::XHeader);
    pax.set_size(1 << 40);
    pax.set_cksum();
    let mut archive = pax.as_bytes().to_vec();
    archive.extend(end_marker());
    let err = walk_all(&archive).expect_err("pax size");
    assert!(
        matches!(err.downcast_ref::<Error>(), Some(Error::MetadataTooLarge { .. })),
        "{err}"
    );

    // An endless chain of GNU long-name headers.
    let mut archive = Vec::new();
    for _ in 0..40 {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_size(2);
        h.set_cksum();
        archive.extend_from_slice(h.as_bytes());
        let mut body = b"x\0".to_vec();
        body.resize(512, 0);
        archive.extend(body);
    }
    let err = walk_all(&archive).expect_err("chain");
    assert!(
        matches!(err.downcast_ref::<Error>(), Some(Error::MetadataTooLarge { .. })),
        "{err}"
    );
}

#[test]
fn garbage_is_a_checksum_error_not_a_panic() {
    let garbage = bytes(6, 4096);
    let err = walk_all(&garbage).expect_err("garbage");
    assert!(
        matches!(
            err.downcast_ref::<Error>(),
            Some(Error::BadChecksum { offset: 0, .. })
        ),
        "{err}"
    );

    // Random bit flips in a real archive.
    let archive = build_with_tar_crate(&[("a.ovf", b"<x/>"), ("b.vmdk", &bytes(7, 3000))]);
    let mut state = 77u64;
    for _ in 0..2000 {
        let mut bad = archive.clone();
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let at = (state >> 33) as usize % bad.len();
        bad[at] ^= 1 << ((state >> 20) % 8);
        let _ = walk_all(&bad);
    }
}

#[test]
fn hostile_manifests() {
    let big = "SHA1(a)= 00\n".repeat(200_000);
    assert!(matches!(
        Manifest::read_from(big.as_bytes()),
        Err(ova::manifest::Error::TooLarge { .. })
    ));
    let mut binary = Vec::new();
    binary.extend_from_slice(b"SHA1(a)= \xff\xfe");
    assert!(matches!(
        Manifest::read_from(&binary[..]),
        Err(ova::manifest::Error::NotText { .. })
    ));
    let mut r = &b"SHA256(x)= 00\n"[..];
    let mut s = String::new();
    r.read_to_string(&mut s).expect("read");
    assert!(matches!(
        Manifest::parse(&s),
        Err(ova::manifest::Error::BadLine { line: 1, .. })
    ));
}

/// A member larger than the 8 GiB octal size field can hold: a GNU base-256 size, or a pax `size`
/// record, followed by 9 GiB of body streamed from memory. The walker skips it by reading.
#[test]
fn members_above_8_gib_via_base256_and_pax_sizes() {
    const SIZE: u64 = 9 << 30;
    let tail = |archive: &mut Vec<u8>| {
        let mut next = raw_member(b"after.txt", 2, b"ok");
        next.extend(end_marker());
        archive.extend(next);
    };

    let mut gnu = tar::Header::new_gnu();
    gnu.as_old_mut().name[..9].copy_from_slice(b"disk.vmdk");
    gnu.set_mode(0o644);
    gnu.set_size(SIZE);
    gnu.set_entry_type(tar::EntryType::Regular);
    gnu.set_cksum();
    assert_eq!(
        gnu.as_bytes()[124] & 0x80,
        0x80,
        "the tar crate wrote a base-256 size"
    );
    let head = gnu.as_bytes().to_vec();

    // "<len> size=<n>\n" where <len> (two digits here) counts the whole record.
    let body = format!(" size={SIZE}\n");
    let record = format!("{}{body}", body.len() + 2);
    let mut pax = tar::Header::new_ustar();
    pax.set_entry_type(tar::EntryType::XHeader);
    pax.set_size(record.len() as u64);
    pax.set_cksum();
    let mut pax_head = pax.as_bytes().to_vec();
    pax_head.extend_from_slice(record.as_bytes());
    pax_head.resize(1024, 0);
    let mut ustar = tar::Header::new_ustar();
    ustar.set_path("disk.vmdk").expect("path");
    ustar.set_size(0);
    ustar.set_mode(0o644);
    ustar.set_cksum();
    pax_head.extend_from_slice(ustar.as_bytes());

    for head in [head, pax_head] {
        let mut after = Vec::new();
        tail(&mut after);
        let stream = std::io::Read::chain(
            std::io::Read::chain(&head[..], std::io::repeat(0x5a).take(SIZE)),
            &after[..],
        );
        let mut walker = TarWalker::new(stream);
        let entry = walker.next_entry().expect("big entry").expect("entry");
        assert_eq!((entry.name(), entry.size()), ("disk.vmdk", SIZE));
        let next = walker.next_entry().expect("skip 9 GiB").expect("next");
        assert_eq!(next.name(), "after.txt");
        assert!(walker.next_entry().expect("end").is_none());
        assert_eq!(walker.offset(), head.len() as u64 + SIZE + after.len() as u64);
    }
}

/// `n` attributes on one element of an otherwise valid envelope (about 12 bytes each).
fn ovf_with_attributes(n: usize) -> String {
    let mut attrs = String::with_capacity(n * 12);
    for i in 0..n {
        attrs.push_str(&format!(" a{i}=\"1\""));
    }
    format!(
        "<?xml version=\"1.0\"?><Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\"{attrs}><References/></Envelope>"
    )
}

#[test]
fn many_attributes_on_one_element_are_refused_in_linear_time() {
    // 500,000 attributes (5.9 MB) took over a minute in a parser whose duplicate check is
    // quadratic; the limit is checked in one linear pass first.
    let text = ovf_with_attributes(500_000);
    let started = std::time::Instant::now();
    let err = ova::ovf::parse(&text).unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(err, ova::ovf::Error::TooManyAttributes { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("Envelope"), "{err}");
    // A bound for a loaded CI machine; the quadratic check took over 60 s.
    assert!(elapsed.as_secs() < 10, "{elapsed:?}");
    // Below the limit, an element's attributes are parsed as before.
    assert!(!matches!(
        ova::ovf::parse(&ovf_with_attributes(200)),
        Err(ova::ovf::Error::TooManyAttributes { .. })
    ));
}
