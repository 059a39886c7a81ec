use std::io::Read;

use super::*;

/// A tar built entry by entry; names are written raw (no checks), as a hostile tool could.
struct TarBuilder(Vec<u8>);

impl TarBuilder {
    fn new() -> TarBuilder {
        TarBuilder(Vec::new())
    }

    fn header(&mut self, name: &str, kind: tar::EntryType, size: u64, link: Option<&str>) {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(0o644);
        if let Some(link) = link {
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_cksum();
        self.0.extend_from_slice(header.as_bytes());
    }

    fn file(mut self, name: &str, data: &[u8]) -> TarBuilder {
        self.header(name, tar::EntryType::Regular, data.len() as u64, None);
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }

    fn link(mut self, name: &str, kind: tar::EntryType, target: &str) -> TarBuilder {
        self.header(name, kind, 0, Some(target));
        self
    }

    fn write(mut self) -> tempfile::NamedTempFile {
        self.0.extend_from_slice(&[0; 1024]);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &self.0).unwrap();
        file
    }
}

fn read(archive: &Archive, name: &str) -> Option<Vec<u8>> {
    let (mut reader, size) = archive.open_member(name).unwrap()?;
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).unwrap();
    assert_eq!(bytes.len() as u64, size);
    Some(bytes)
}

#[test]
fn names_are_normalised_and_escapes_refused() {
    assert_eq!(normalize("./a//b/./c").unwrap().as_deref(), Some("a/b/c"));
    assert_eq!(normalize("./").unwrap(), None);
    assert!(normalize("/etc/passwd").is_err());
    assert!(normalize("a/../../b").is_err());
    assert!(normalize("..").is_err());
}

#[test]
fn symlink_targets_resolve_inside_the_archive_only() {
    assert_eq!(
        link_target("id/layer.tar", "../abc.tar").unwrap(),
        "abc.tar"
    );
    assert_eq!(link_target("a/b/c", "./d").unwrap(), "a/b/d");
    assert!(link_target("id/layer.tar", "../../etc/passwd").is_err());
    assert!(link_target("x", "/etc/passwd").is_err());
}

#[test]
fn members_are_read_in_place_and_links_followed() {
    let file = TarBuilder::new()
        .file("./index.json", b"{}")
        .file("blobs/sha256/aa", &[7u8; 1000])
        .link(
            "id/layer.tar",
            tar::EntryType::Symlink,
            "../blobs/sha256/aa",
        )
        .link("hard", tar::EntryType::Link, "./blobs/sha256/aa")
        .write();
    let archive = Archive::open(file.path()).unwrap();
    assert_eq!(read(&archive, "index.json").unwrap(), b"{}");
    assert_eq!(read(&archive, "blobs/sha256/aa").unwrap(), vec![7u8; 1000]);
    assert_eq!(read(&archive, "id/layer.tar").unwrap(), vec![7u8; 1000]);
    assert_eq!(archive.size_of("hard").unwrap(), Some(1000));
    assert!(read(&archive, "absent").is_none());
}

#[test]
fn an_archive_with_a_dotdot_or_absolute_member_is_refused_naming_it() {
    for name in ["../evil", "/etc/evil", "blobs/../../evil"] {
        let file = TarBuilder::new()
            .file("index.json", b"{}")
            .file(name, b"x")
            .write();
        let err = Archive::open(file.path()).unwrap_err();
        assert!(
            matches!(&err, SourceError::UnsafeMember { member, .. } if member == name),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains(&file.path().display().to_string()), "{text}");
    }
}

#[test]
fn links_out_of_the_archive_and_loops_fail_when_followed() {
    let file = TarBuilder::new()
        .link("out", tar::EntryType::Symlink, "../../etc/shadow")
        .link("abs", tar::EntryType::Symlink, "/etc/shadow")
        .link("loop1", tar::EntryType::Symlink, "loop2")
        .link("loop2", tar::EntryType::Symlink, "loop1")
        .link("dangling", tar::EntryType::Symlink, "nothing")
        .write();
    let archive = Archive::open(file.path()).unwrap();
    for (name, expected) in [
        ("out", "outside the archive"),
        ("abs", "absolute"),
        ("loop1", "chain of more than"),
        ("dangling", "not there"),
    ] {
        let err = archive.open_member(name).unwrap_err().to_string();
        assert!(err.contains(expected), "{name}: {err}");
    }
}

#[test]
fn compressed_archives_are_refused_by_format() {
    let gz = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(gz.path(), [0x1f, 0x8b, 8, 0, 0, 0, 0, 0]).unwrap();
    let err = Archive::open(gz.path()).unwrap_err();
    assert!(
        matches!(err, SourceError::Compressed { format: "gzip", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("decompress it first"), "{err}");
}

#[test]
fn a_truncated_member_is_a_read_error_not_short_data() {
    let mut bytes = TarBuilder::new().file("big", &[1u8; 4096]).0;
    bytes.truncate(512 + 1000);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &bytes).unwrap();
    // Scanning seeks past the data (and finds no further header); reading finds the end early.
    let archive = Archive::open(file.path()).unwrap();
    let (mut reader, size) = archive.open_member("big").unwrap().unwrap();
    assert_eq!(size, 4096);
    let mut out = Vec::new();
    let err = reader.read_to_end(&mut out).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
}
