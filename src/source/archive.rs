//! Tar archives read in place: an index of the members, then any member's bytes by name.
//!
//! Owns: scanning a plain (uncompressed) tar's headers once, seeking past the data, into a map
//! from normalised member name to where its bytes lie in the file; reading a member through
//! `pread`, so several members can be read at once and nothing is extracted to disk. Symbolic
//! and hard links between members (`docker save` links repeated layers) are followed by name,
//! lexically, inside the archive. Member names are only ever lookup keys: an archive with an
//! absolute name or a `..` component is refused whole, and nothing here ever creates a file or
//! opens a path taken from the archive. A compressed archive is refused by name (it cannot be
//! read in place).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::SourceError;

/// Links followed before a lookup gives up (a loop).
const MAX_LINKS: usize = 16;

/// What a member is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Member {
    /// A regular file: its bytes are `size` bytes at `offset`.
    Data { offset: u64, size: u64 },
    /// A symbolic link (target relative to the member's directory) or a hard link (target
    /// relative to the archive root), as a normalised member name.
    Link(Result<String, &'static str>),
    /// Anything else (device, fifo, sparse file): not readable as a blob.
    Other(char),
}

/// A tar archive opened for reading members by name.
#[derive(Debug)]
pub(crate) struct Archive {
    path: PathBuf,
    file: File,
    members: HashMap<String, Member>,
}

/// `name` as a member name relative to the archive root (`./a//b` -> `a/b`); `None` for the
/// root itself. Absolute names and `..` components are refused.
pub(crate) fn normalize(name: &str) -> Result<Option<String>, &'static str> {
    if name.starts_with('/') {
        return Err("is an absolute path");
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("has a '..' component"),
            part => parts.push(part),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// Resolves a symbolic link's `target` from the directory of `member`, lexically; it must stay
/// inside the archive.
fn link_target(member: &str, target: &str) -> Result<String, &'static str> {
    if target.starts_with('/') {
        return Err("points to an absolute path");
    }
    let mut parts: Vec<&str> = member.split('/').collect();
    parts.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop().ok_or("points outside the archive")?;
            }
            part => parts.push(part),
        }
    }
    Ok(parts.join("/"))
}

/// The compression format `head` (the first bytes of a file) starts with, if any.
pub(crate) fn compression_of(head: &[u8]) -> Option<&'static str> {
    const MAGIC: [(&[u8], &str); 4] = [
        (&[0x1f, 0x8b], "gzip"),
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd"),
        (b"BZh", "bzip2"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0], "xz"),
    ];
    MAGIC
        .iter()
        .find(|(magic, _)| head.starts_with(magic))
        .map(|(_, name)| *name)
}

impl Archive {
    /// Opens `path` and indexes its members.
    pub(crate) fn open(path: &Path) -> Result<Archive, SourceError> {
        let file = File::open(path).map_err(|source| SourceError::Open {
            path: path.to_owned(),
            source,
        })?;
        let read_err = |source: io::Error| SourceError::Read {
            path: path.to_owned(),
            what: "the archive's members".into(),
            source,
        };
        let mut head = [0u8; 6];
        let n = file.read_at(&mut head, 0).map_err(read_err)?;
        if let Some(format) = compression_of(&head[..n]) {
            return Err(SourceError::Compressed {
                path: path.to_owned(),
                format,
            });
        }
        let mut members = HashMap::new();
        let mut tar = tar::Archive::new(&file);
        for entry in tar.entries_with_seek().map_err(read_err)? {
            let entry = entry.map_err(read_err)?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let unsafe_name = |reason| SourceError::UnsafeMember {
                path: path.to_owned(),
                member: raw.clone(),
                reason,
            };
            let Some(name) = normalize(&raw).map_err(unsafe_name)? else {
                continue;
            };
            let header = entry.header();
            let kind = header.entry_type();
            let link = || {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                if kind.is_symlink() {
                    link_target(&name, &target)
                } else {
                    normalize(&target)?.ok_or("points to the archive root")
                }
            };
            let member = match kind {
                tar::EntryType::Regular | tar::EntryType::Continuous => Member::Data {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                },
                tar::EntryType::Symlink | tar::EntryType::Link => Member::Link(link()),
                tar::EntryType::Directory => continue,
                other => Member::Other(char::from(other.as_byte())),
            };
            members.insert(name, member);
        }
        Ok(Archive {
            path: path.to_owned(),
            file,
            members,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Where the bytes of member `name` lie: `(offset, size)`, links followed.
    fn locate(&self, name: &str) -> Result<Option<(u64, u64)>, SourceError> {
        let mut current = name.to_owned();
        for _ in 0..MAX_LINKS {
            let bad = |reason: &str| SourceError::BadMember {
                path: self.path.clone(),
                member: current.clone(),
                reason: reason.to_owned(),
            };
            match self.members.get(&current) {
                None if current == name => return Ok(None),
                None => return Err(bad(&format!("links to {current:?}, which is not there"))),
                Some(Member::Data { offset, size }) => return Ok(Some((*offset, *size))),
                Some(Member::Link(Ok(target))) => current = target.clone(),
                Some(Member::Link(Err(reason))) => {
                    return Err(bad(&format!("is a link that {reason}")))
                }
                Some(Member::Other(kind)) => {
                    return Err(bad(&format!("is not a regular file (tar type {kind:?})")))
                }
            }
        }
        Err(SourceError::BadMember {
            path: self.path.clone(),
            member: name.to_owned(),
            reason: format!("is a chain of more than {MAX_LINKS} links"),
        })
    }

    /// The size of member `name`, or `None` when there is no such member.
    pub(crate) fn size_of(&self, name: &str) -> Result<Option<u64>, SourceError> {
        Ok(self.locate(name)?.map(|(_, size)| size))
    }

    /// A reader of member `name`'s bytes and their count, or `None` when there is no such
    /// member.
    pub(crate) fn open_member(
        &self,
        name: &str,
    ) -> Result<Option<(Section<'_>, u64)>, SourceError> {
        Ok(self.locate(name)?.map(|(offset, size)| {
            (
                Section {
                    file: &self.file,
                    offset,
                    remaining: size,
                },
                size,
            )
        }))
    }
}

/// The bytes of one member, read with `pread` (readers of one archive do not share a cursor).
#[derive(Debug)]
pub(crate) struct Section<'a> {
    file: &'a File,
    offset: u64,
    remaining: u64,
}

impl Read for Section<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let len = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        if len == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..len], self.offset)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside this member",
            ));
        }
        self.offset += n as u64;
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
#[path = "archive_tests.rs"]
mod tests;
