//! The files of a local image: a directory (an OCI layout) or a tar archive, read by name.
//!
//! Owns: reading the small JSON documents of a layout or archive (`index.json`,
//! `manifest.json`, a docker config) within the image model's size limit, and opening blobs
//! and members as readers of a known size.
//! Names come from this crate (fixed names, `blobs/sha256/<hex>` built from a parsed digest) or
//! from an archive's `manifest.json`, and are checked by [`archive::normalize`] before use, so
//! a directory lookup never leaves the layout. In a directory, only regular files are read (a
//! fifo or device under a blob's name is refused, never opened for blocking reads). It never
//! writes anything.

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::archive::{self, Archive};
use super::SourceError;
use crate::digest::Digest;
use crate::image::manifest::MAX_DOCUMENT_SIZE;
use crate::image::ImageError;

/// Where a local image's files are.
#[derive(Debug)]
pub(crate) enum Files {
    Dir(PathBuf),
    Tar(Archive),
}

/// An opened file or member and its size in bytes.
pub(crate) type Opened<'a> = (Box<dyn Read + Send + 'a>, u64);

/// The name of a blob in an OCI layout.
pub(crate) fn blob_name(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

impl Files {
    /// The directory or archive file, for messages.
    pub(crate) fn path(&self) -> &Path {
        match self {
            Files::Dir(dir) => dir,
            Files::Tar(archive) => archive.path(),
        }
    }

    fn checked(&self, name: &str) -> Result<String, SourceError> {
        match archive::normalize(name) {
            Ok(Some(name)) => Ok(name),
            Ok(None) => Err(self.bad(name, "names no file".into())),
            Err(reason) => Err(self.bad(name, reason.into())),
        }
    }

    fn bad(&self, name: &str, reason: String) -> SourceError {
        SourceError::BadMember {
            path: self.path().to_owned(),
            member: name.to_owned(),
            reason,
        }
    }

    /// Opens `name` for reading: the reader and the byte count, `None` when it is absent.
    pub(crate) fn open(&self, name: &str) -> Result<Option<Opened<'_>>, SourceError> {
        let name = self.checked(name)?;
        match self {
            Files::Tar(archive) => Ok(archive
                .open_member(&name)?
                .map(|(reader, size)| (Box::new(reader) as Box<dyn Read + Send>, size))),
            Files::Dir(dir) => {
                let path = dir.join(&name);
                // O_NONBLOCK: opening a fifo must not wait for a writer; no effect on files.
                let file = match OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&path)
                {
                    Ok(file) => file,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(source) => return Err(SourceError::Open { path, source }),
                };
                let meta = file.metadata().map_err(|source| SourceError::Read {
                    path: path.clone(),
                    what: "its metadata".into(),
                    source,
                })?;
                if !meta.is_file() {
                    return Err(self.bad(&name, "is not a regular file".into()));
                }
                Ok(Some((Box::new(file) as Box<dyn Read + Send>, meta.len())))
            }
        }
    }

    /// Whether `name` exists.
    pub(crate) fn contains(&self, name: &str) -> Result<bool, SourceError> {
        Ok(self.size_of(name)?.is_some())
    }

    /// The size of `name`, `None` when it is absent.
    pub(crate) fn size_of(&self, name: &str) -> Result<Option<u64>, SourceError> {
        match self {
            Files::Tar(archive) => archive.size_of(&self.checked(name)?),
            Files::Dir(_) => Ok(self.open(name)?.map(|(_, size)| size)),
        }
    }

    /// Reads `name` whole (at most [`MAX_DOCUMENT_SIZE`] bytes); `what` names it in errors.
    pub(crate) fn read(&self, name: &str, what: &str) -> Result<Vec<u8>, SourceError> {
        let (reader, size) = self.open(name)?.ok_or_else(|| SourceError::Missing {
            path: self.path().to_owned(),
            what: format!("{what} ({name})"),
        })?;
        if size > MAX_DOCUMENT_SIZE {
            return Err(ImageError::TooLarge {
                reference: self.path().display().to_string(),
                what: format!("{what} ({name})"),
                size: Some(size),
                limit: MAX_DOCUMENT_SIZE,
            }
            .into());
        }
        let mut bytes = Vec::with_capacity(size as usize);
        reader
            .take(MAX_DOCUMENT_SIZE)
            .read_to_end(&mut bytes)
            .map_err(|source| SourceError::Read {
                path: self.path().to_owned(),
                what: format!("{what} ({name})"),
                source,
            })?;
        Ok(bytes)
    }
}

/// Opens a local image's files: `path` must be a directory when `dir` is true, else a file.
pub(crate) fn open(path: &Path, dir: bool) -> Result<Files, SourceError> {
    let meta = std::fs::metadata(path).map_err(|source| SourceError::Open {
        path: path.to_owned(),
        source,
    })?;
    match (dir, meta.is_dir()) {
        (true, true) => Ok(Files::Dir(path.to_owned())),
        (false, false) => Ok(Files::Tar(Archive::open(path)?)),
        (true, false) => Err(SourceError::Kind {
            path: path.to_owned(),
            expected: "a directory (an OCI image layout)",
        }),
        (false, true) => Err(SourceError::Kind {
            path: path.to_owned(),
            expected: "a tar archive file",
        }),
    }
}
