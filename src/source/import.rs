//! Blobs copied from a local image's files into the verified blob store.
//!
//! Owns: streaming one blob (a layout's `blobs/sha256/<hex>` or an archive member) into a
//! [`BlobStore`] writer, which hashes and counts it and commits only content whose digest and
//! size are the ones expected: exactly the check a registry download gets. A blob already in
//! the store is not copied again. Blob files are read in chunks, never whole. It never decides
//! which blobs an image needs.

use std::io::{ErrorKind, Read};

use super::files::Files;
use super::{archive, SourceError};
use crate::cache::{BlobStore, CacheError};
use crate::digest::Digest;

/// Bytes read from the file per write into the store.
const CHUNK: usize = 1 << 20;

/// One blob to copy.
#[derive(Debug, Clone)]
pub(crate) struct Blob<'a> {
    /// Its name in the layout or archive.
    pub name: &'a str,
    pub digest: &'a Digest,
    pub size: u64,
    /// For messages: "the image config", "layer 2 of 5".
    pub what: &'a str,
    /// Refuse it when it starts like a compressed file (a `docker save` layer is a plain tar,
    /// and its digest must then be its diff ID).
    pub plain_tar: bool,
}

/// Copies `blob` into `store` unless it is there already; returns whether it copied.
pub(crate) fn import(
    files: &Files,
    store: &BlobStore,
    blob: &Blob<'_>,
) -> Result<bool, SourceError> {
    if store.size_of(blob.digest) == Some(blob.size) {
        return Ok(false);
    }
    let failed = |source: CacheError| SourceError::Blob {
        path: files.path().to_owned(),
        what: format!("{} ({})", blob.what, blob.name),
        source,
    };
    // One process of the volume copies it; the others wait, then find it stored.
    let claim = store.claim(blob.digest, blob.what).map_err(failed)?;
    if claim.waited && store.size_of(blob.digest) == Some(blob.size) {
        return Ok(false);
    }
    let (mut reader, actual) = files.open(blob.name)?.ok_or_else(|| SourceError::Missing {
        path: files.path().to_owned(),
        what: format!("{} {} ({})", blob.what, blob.digest, blob.name),
    })?;
    if actual != blob.size {
        return Err(failed(CacheError::SizeMismatch {
            digest: blob.digest.clone(),
            expected: blob.size,
            actual,
        }));
    }
    let mut writer = store.writer(blob.digest, blob.size).map_err(failed)?;
    let mut buffer = vec![0u8; CHUNK];
    let mut first = true;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(SourceError::Read {
                    path: files.path().to_owned(),
                    what: format!("{} ({})", blob.what, blob.name),
                    source,
                })
            }
        };
        if std::mem::take(&mut first) && blob.plain_tar {
            if let Some(format) = archive::compression_of(&buffer[..n]) {
                return Err(SourceError::BadMember {
                    path: files.path().to_owned(),
                    member: blob.name.to_owned(),
                    reason: format!(
                        "is {format}-compressed; the layers of a docker save archive are plain tars"
                    ),
                });
            }
        }
        writer.write(&buffer[..n]).map_err(failed)?;
    }
    writer.commit().map_err(failed)?;
    Ok(true)
}
