//! Pins: which manifest digest a reference last resolved to, one small file per reference.
//!
//! `refs/<name>` holds `<digest>\n<reference>\n`. The name is the reference with every byte
//! outside `[A-Za-z0-9._-]` (and a leading `.`) percent-encoded, so any reference text maps to
//! one safe file name; an empty reference is `%`, and a name that would be too long for the
//! file system is cut and suffixed with `~` and the sha256 of the reference. The reference
//! itself is kept inside the file, so listing needs no decoding and a lookup can check it. A
//! pin is written to a staging file, fsync'd, renamed into `refs/`, and `refs/` fsync'd.
//!
//! Last use: each time its image is used, a pin's modification time is set to now (or the pin
//! written, when it named another digest), so it says when its image was last used; [`list`] orders by it, most
//! recent first (what the cleanup rule, `crate::prune`, keeps). The file's format stays what
//! older envboxes read.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use super::{io_err, staging, sync_dir, CacheError};
use crate::digest::Digest;

/// Longest escaped name kept whole (file names are limited to 255 bytes).
const MAX_NAME: usize = 160;

/// The file name of `reference`'s pin.
pub(super) fn file_name(reference: &str) -> String {
    if reference.is_empty() {
        return "%".to_owned();
    }
    let mut name = String::with_capacity(reference.len());
    for (i, byte) in reference.bytes().enumerate() {
        let plain =
            byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' || (byte == b'.' && i > 0);
        if plain {
            name.push(char::from(byte));
        } else {
            name.push_str(&format!("%{byte:02X}"));
        }
    }
    if name.len() > MAX_NAME {
        // All ASCII, so any index is a char boundary.
        name.truncate(MAX_NAME);
        name.push('~');
        name.push_str(Digest::of(reference.as_bytes()).hex());
    }
    name
}

/// Parses a pin file's contents into (digest, reference).
fn parse(bytes: &[u8]) -> Option<(Digest, String)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (digest, rest) = text.split_once('\n')?;
    let reference = rest.strip_suffix('\n')?;
    Some((Digest::parse(digest).ok()?, reference.to_owned()))
}

pub(super) fn pin(
    refs: &Path,
    staging_dir: &Path,
    reference: &str,
    digest: &Digest,
) -> Result<(), CacheError> {
    let dest = refs.join(file_name(reference));
    let (mut file, staged) = staging::create(staging_dir, "ref")?;
    let written = file
        .write_all(format!("{digest}\n{reference}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_err("writing pin", &staged))
        .and_then(|()| fs::rename(&staged, &dest).map_err(io_err("renaming pin into", &dest)));
    if let Err(e) = written {
        let _ = fs::remove_file(&staged);
        return Err(e);
    }
    sync_dir(refs)
}

pub(super) fn pinned(refs: &Path, reference: &str) -> Result<Option<Digest>, CacheError> {
    let path = refs.join(file_name(reference));
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("reading pin", &path)(e)),
    };
    match parse(&bytes) {
        Some((digest, stored)) if stored == reference => Ok(Some(digest)),
        _ => {
            tracing::warn!(path = %path.display(), "removing corrupt pin");
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    Err(io_err("removing corrupt pin", &path)(e))
                }
                _ => Ok(None),
            }
        }
    }
}

pub(super) fn unpin(refs: &Path, reference: &str) -> Result<(), CacheError> {
    let path = refs.join(file_name(reference));
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing pin", &path)(e)),
        _ => sync_dir(refs),
    }
}

/// Every pin as `(reference, manifest digest)`, the most recently used first (then by
/// reference); corrupt pins are skipped.
pub(super) fn list(refs: &Path) -> Result<Vec<(String, Digest)>, CacheError> {
    let mut pins = Vec::new();
    for entry in fs::read_dir(refs).map_err(io_err("listing pins in", refs))? {
        let entry = entry.map_err(io_err("listing pins in", refs))?;
        let path = entry.path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            // Removed since listed, or not a file.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::IsADirectory
                ) =>
            {
                continue
            }
            Err(e) => return Err(io_err("reading pin", &path)(e)),
        };
        let used = entry
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
        match parse(&bytes) {
            Some((digest, reference))
                if entry.file_name().to_str() == Some(&file_name(&reference)) =>
            {
                pins.push((std::cmp::Reverse(used), reference, digest));
            }
            _ => {}
        }
    }
    pins.sort();
    Ok(pins.into_iter().map(|(_, r, d)| (r, d)).collect())
}
