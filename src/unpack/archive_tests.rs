//! The tar reader against the `tar` crate's reader on the same archives (every header field and
//! every content byte), through inputs whose buffers cut the stream anywhere, and against
//! broken and hostile framing.

use std::io::{BufRead, BufReader, Cursor, Read};

use super::*;

/// An entry as both readers see it: header fields and the whole contents.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    path: Vec<u8>,
    link: Vec<u8>,
    typeflag: u8,
    mode: u64,
    uid: u64,
    gid: u64,
    mtime: u64,
    contents: Vec<u8>,
}

/// Every entry of `tar` through [`Archive`], its input buffered `buffer` bytes at a time.
fn ours(tar: &[u8], buffer: usize) -> io::Result<Vec<Seen>> {
    let mut archive = Archive::new(BufReader::with_capacity(buffer, Cursor::new(tar)));
    let mut seen = Vec::new();
    while let Some(header) = archive.next()? {
        let mut contents = Vec::new();
        archive.contents().read_to_end(&mut contents)?;
        assert_eq!(contents.len() as u64, header.size, "{header:?}");
        seen.push(Seen {
            path: header.path,
            link: header.link,
            typeflag: header.typeflag,
            mode: header.mode,
            uid: header.uid,
            gid: header.gid,
            mtime: header.mtime,
            contents,
        });
    }
    Ok(seen)
}

/// Every entry of `tar` through the `tar` crate.
fn theirs(tar: &[u8]) -> Vec<Seen> {
    let mut archive = tar::Archive::new(Cursor::new(tar));
    let mut seen = Vec::new();
    for entry in archive.entries().expect("tar crate") {
        let mut entry = entry.expect("tar crate entry");
        let header = entry.header().clone();
        let mut contents = Vec::new();
        entry
            .read_to_end(&mut contents)
            .expect("tar crate contents");
        seen.push(Seen {
            path: entry.path_bytes().into_owned(),
            link: entry
                .link_name_bytes()
                .map(|l| l.into_owned())
                .unwrap_or_default(),
            typeflag: header.entry_type().as_byte(),
            mode: u64::from(header.mode().expect("mode")),
            uid: header.uid().expect("uid"),
            gid: header.gid().expect("gid"),
            mtime: header.mtime().expect("mtime"),
            contents,
        });
    }
    seen
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn header(kind: tar::EntryType, gnu: bool) -> tar::Header {
    let mut header = if gnu {
        tar::Header::new_gnu()
    } else {
        tar::Header::new_ustar()
    };
    header.set_entry_type(kind);
    header.set_mode(0o4755);
    header.set_uid(1000);
    header.set_gid(65535);
    header.set_mtime(1_700_000_000);
    header
}

/// Files of sizes around the block size, every kind, names and link targets long enough for
/// GNU long-name records, the ustar prefix and PAX records.
fn varied_archive() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (i, len) in [0usize, 1, 511, 512, 513, 4096, 100_003]
        .into_iter()
        .enumerate()
    {
        let mut h = header(tar::EntryType::Regular, i % 2 == 0);
        h.set_size(len as u64);
        b.append_data(&mut h, format!("dir/file{i}"), &data(len, i as u8)[..])
            .unwrap();
    }
    let mut h = header(tar::EntryType::Directory, true);
    h.set_size(0);
    b.append_data(&mut h, "dir/sub/", std::io::empty()).unwrap();
    let long = format!("dir/{}/{}", "d".repeat(120), "n".repeat(90));
    // GNU header: the crate writes an `L` record (and a `K` one for the link).
    let mut h = header(tar::EntryType::Symlink, true);
    h.set_size(0);
    b.append_link(&mut h, &long, "t".repeat(150)).unwrap();
    // ustar header: a name that fits prefix + name.
    let mut h = header(tar::EntryType::Regular, false);
    let prefixed = format!("{}/{}", "p".repeat(100), "q".repeat(60));
    h.set_size(3);
    b.append_data(&mut h, &prefixed, &b"abc"[..]).unwrap();
    // PAX path, linkpath and other records.
    b.append_pax_extensions([
        ("path", format!("pax/{}", "x".repeat(300)).as_bytes()),
        ("linkpath", b"dir/file1".as_slice()),
        ("mtime", b"12.5".as_slice()),
        ("SCHILY.xattr.user.k", b"v".as_slice()),
    ])
    .unwrap();
    let mut h = header(tar::EntryType::Link, false);
    h.set_size(0);
    h.set_path("short").unwrap();
    h.set_link_name("dir/file1").unwrap();
    h.set_cksum();
    b.append(&h, std::io::empty()).unwrap();
    for (kind, name) in [
        (tar::EntryType::Fifo, "fifo"),
        (tar::EntryType::Char, "chr"),
    ] {
        let mut h = header(kind, false);
        h.set_size(0);
        b.append_data(&mut h, name, std::io::empty()).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn reads_every_field_and_byte_the_tar_crate_reads_wherever_the_buffer_cuts() {
    let tar = varied_archive();
    let expected = theirs(&tar);
    assert_eq!(expected.len(), 13);
    for buffer in [1, 7, 512, 1000, 1 << 20] {
        assert_eq!(ours(&tar, buffer).unwrap(), expected, "buffer {buffer}");
    }
}

#[test]
fn pax_records_other_than_framing_are_handed_on_in_order() {
    let tar = varied_archive();
    let mut archive = Archive::new(Cursor::new(&tar[..]));
    let pax_entry = std::iter::from_fn(|| archive.next().unwrap())
        .find(|h| h.path.starts_with(b"pax/"))
        .expect("the PAX entry");
    assert_eq!(pax_entry.link, b"dir/file1");
    assert_eq!(
        pax_entry.pax,
        vec![
            (b"mtime".to_vec(), b"12.5".to_vec()),
            (b"SCHILY.xattr.user.k".to_vec(), b"v".to_vec()),
        ]
    );
}

#[test]
fn contents_left_unread_are_skipped_and_the_rest_after_the_end_is_kept() {
    let mut tar = varied_archive();
    let trailing = b"trailing bytes after the end blocks";
    tar.extend_from_slice(trailing);
    let mut archive = Archive::new(BufReader::with_capacity(100, Cursor::new(&tar[..])));
    let mut names = Vec::new();
    while let Some(h) = archive.next().unwrap() {
        // Read a little of some entries, nothing of others.
        let mut first = [0u8; 3];
        let _ = archive.contents().read(&mut first).unwrap();
        names.push(h.path);
    }
    assert_eq!(names.len(), 13);
    let mut rest = Vec::new();
    archive.into_rest().read_to_end(&mut rest).unwrap();
    // The first of the builder's two end blocks ends the archive: the second one comes after.
    assert_eq!(rest, [&[0u8; 512][..], trailing].concat());
}

#[test]
fn the_contents_are_slices_of_the_input_buffer() {
    let tar = varied_archive();
    let mut archive = Archive::new(Cursor::new(&tar[..]));
    let header = archive.next().unwrap().unwrap();
    assert_eq!(header.size, 0);
    let header = archive.next().unwrap().unwrap();
    assert_eq!(header.size, 1);
    let mut contents = archive.contents();
    let slice = contents.fill_buf().unwrap();
    // The buffer handed out lies inside the archive's own bytes: nothing was copied.
    let range = tar.as_ptr_range();
    assert!(range.contains(&slice.as_ptr()));
    assert_eq!(slice.len(), 1);
}

/// A GNU sparse entry (`S`) by hand: runs at 0 and 9000 in a 20000-byte file, plus one in an
/// extension block (whole blocks but the last, as GNU tar writes them and the tar crate needs).
fn sparse_archive() -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_path("sparse").unwrap();
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1);
    let runs = [(0u64, 512u64), (9000, 1024), (15_000, 50)];
    let stored: u64 = runs.iter().map(|r| r.1).sum();
    h.set_size(stored);
    let octal = |v: u64, width: usize| format!("{v:0w$o}\0", w = width - 1).into_bytes();
    let raw = h.as_mut_bytes();
    for (i, (offset, len)) in runs[..2].iter().enumerate() {
        raw[386 + i * 24..386 + i * 24 + 12].copy_from_slice(&octal(*offset, 12));
        raw[398 + i * 24..398 + i * 24 + 12].copy_from_slice(&octal(*len, 12));
    }
    raw[482] = 1;
    raw[483..495].copy_from_slice(&octal(20_000, 12));
    h.set_cksum();
    let mut ext = [0u8; 512];
    // The last run, then the empty one at the file's end that GNU tar writes.
    for (i, (offset, len)) in [runs[2], (20_000, 0)].iter().enumerate() {
        ext[i * 24..i * 24 + 12].copy_from_slice(&octal(*offset, 12));
        ext[i * 24 + 12..i * 24 + 24].copy_from_slice(&octal(*len, 12));
    }
    let mut tar = h.as_bytes().to_vec();
    tar.extend_from_slice(&ext);
    let body = data(stored as usize, 9);
    tar.extend_from_slice(&body);
    tar.resize(tar.len() + padding(stored) as usize, 0);
    tar.extend_from_slice(&[0u8; 1024]);
    tar
}

#[test]
fn sparse_files_read_with_their_holes_as_zeros() {
    let tar = sparse_archive();
    let expected = theirs(&tar);
    assert_eq!(expected[0].contents.len(), 20_000);
    for buffer in [3, 512, 1 << 16] {
        assert_eq!(ours(&tar, buffer).unwrap(), expected, "buffer {buffer}");
    }
}

fn error_of(tar: &[u8]) -> String {
    match ours(tar, 4096) {
        Ok(seen) => panic!("read: {seen:?}"),
        Err(e) => e.to_string(),
    }
}

fn one_file(len: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::Regular, false);
    h.set_size(len as u64);
    b.append_data(&mut h, "f", &data(len, 1)[..]).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn broken_framing_is_an_error_that_says_what_broke() {
    let mut tar = one_file(10);
    tar[0] = b'g';
    assert!(error_of(&tar).contains("checksum mismatch"));

    let tar = one_file(1000);
    assert!(error_of(&tar[..300]).contains("ends inside a header"));
    assert!(error_of(&tar[..900]).contains("ends inside an entry's contents"));

    let mut tar = one_file(10);
    tar[108..116].copy_from_slice(b"12x4567\0");
    let header = tar::Header::from_byte_slice(&tar[..512]).clone();
    let mut header = header;
    header.set_cksum();
    tar[..512].copy_from_slice(header.as_bytes());
    let e = error_of(&tar);
    assert!(
        e.contains("unreadable uid field") && e.contains("\"f\""),
        "{e}"
    );
}

/// A special record (`typeflag`) with `data`, then one file.
fn special_then_file(typeflag: u8, data: &[u8], repeat: usize) -> Vec<u8> {
    let mut tar = Vec::new();
    for _ in 0..repeat {
        let mut h = tar::Header::new_gnu();
        h.set_path("././@LongLink").unwrap();
        h.set_entry_type(tar::EntryType::new(typeflag));
        h.set_size(data.len() as u64);
        h.set_cksum();
        tar.extend_from_slice(h.as_bytes());
        tar.extend_from_slice(data);
        tar.resize(tar.len() + padding(data.len() as u64) as usize, 0);
    }
    tar.extend_from_slice(&one_file(5));
    tar
}

#[test]
fn hostile_special_records_are_refused() {
    let big = vec![b'a'; MAX_SPECIAL as usize + 1];
    assert!(error_of(&special_then_file(b'L', &big, 1)).contains("over the 1048576-byte limit"));
    assert!(error_of(&special_then_file(b'L', b"name\0", 2)).contains("two GNU long name"));
    assert!(error_of(&special_then_file(b'x', b"6 a=b\n", 2)).contains("two PAX"));
    for bad in [
        &b"5 a=b\n"[..],
        b"x a=b\n",
        b"7 ab\n\n",
        b"99 a=b\n",
        b"7 a=bc",
    ] {
        let e = error_of(&special_then_file(b'x', bad, 1));
        assert!(e.contains("malformed PAX record"), "{bad:?}: {e}");
    }
    let e = error_of(&special_then_file(b'x', b"22 GNU.sparse.major=1\n", 1));
    assert!(e.contains("PAX sparse files are not supported"), "{e}");
    let e = error_of(&special_then_file(b'x', b"13 size=12x\n", 1));
    assert!(e.contains("malformed PAX record"), "{e}");

    // A special record with nothing after it.
    let tar = special_then_file(b'K', b"target\0", 1);
    let e = error_of(&tar[..1024]);
    assert!(
        e.contains("GNU long link name record is not followed"),
        "{e}"
    );
}

#[test]
fn a_pax_size_overrides_the_header_size() {
    let mut tar = special_then_file(b'x', b"12 size=300\n", 1);
    // The file's header says 5 bytes; give it 300 bytes of contents instead.
    let file = tar.len() - one_file(5).len();
    let mut body = one_file(300);
    body[124..136].copy_from_slice(b"00000000005\0");
    let mut h = tar::Header::from_byte_slice(&body[..512]).clone();
    h.set_cksum();
    body[..512].copy_from_slice(h.as_bytes());
    tar.truncate(file);
    tar.extend_from_slice(&body);
    let seen = ours(&tar, 64).unwrap();
    assert_eq!(seen[0].contents, data(300, 1));
}

#[test]
fn numbers_in_octal_with_padding_or_base_256() {
    assert_eq!(parse_number(b"0000644\0"), Some(0o644));
    assert_eq!(parse_number(b"  644 \0\0"), Some(0o644));
    assert_eq!(parse_number(b"\0\0\0\0\0\0\0\0"), Some(0));
    assert_eq!(parse_number(b"644\0junk"), Some(0o644));
    assert_eq!(parse_number(b"6 44\0"), None);
    assert_eq!(parse_number(b"648"), None);
    assert_eq!(
        parse_number(&[0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1]),
        Some((1 << 32) + 1)
    );
    // Negative base-256 values are refused, and so is a value past u64.
    assert_eq!(parse_number(&[0xff; 12]), None);
    assert_eq!(parse_number(&[0x80, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), None);
}

#[test]
fn a_signed_checksum_from_old_writers_is_accepted() {
    let mut tar = one_file(4);
    // A name byte above 127 sums differently signed and unsigned.
    tar[1] = 0xe9;
    let signed: i64 = tar[..512]
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                i64::from(*b as i8)
            }
        })
        .sum();
    tar[148..156].copy_from_slice(format!("{signed:06o}\0 ").as_bytes());
    let seen = ours(&tar, 512).unwrap();
    assert_eq!(seen[0].path, b"f\xe9");
}

#[test]
fn header_only_kinds_have_no_contents_whatever_their_size_says() {
    // A directory whose size field says 512, followed at once by the next header (Go's
    // archive/tar reads it so; a reader that skipped 512 bytes would lose the file).
    let mut h = header(tar::EntryType::Directory, false);
    h.set_path("d/").unwrap();
    h.set_size(512);
    h.set_cksum();
    let mut tar = h.as_bytes().to_vec();
    tar.extend_from_slice(&one_file(3));
    let seen = ours(&tar, 512).unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (seen[0].path.as_slice(), seen[0].contents.len()),
        (&b"d/"[..], 0)
    );
    assert_eq!(
        (seen[1].path.as_slice(), seen[1].contents.as_slice()),
        (&b"f"[..], &data(3, 1)[..])
    );
}
