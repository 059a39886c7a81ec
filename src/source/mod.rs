//! Where an image comes from: a registry, an OCI layout directory, or an image archive.
//!
//! Owns: the `--image` syntax (a plain reference is a registry; `oci:DIR[:NAME]`,
//! `oci-archive:FILE[:NAME]` and `docker-archive:FILE[:NAME]` are skopeo's transport names for
//! local images, `docker://REF` forces the registry) and getting the chosen image's blobs into
//! the verified [`BlobStore`]: pulled by `crate::registry`, or imported from the files, every
//! digest and size checked just as for a download. A local image is then pinned under its
//! names (`--as REF`, else the archive's `RepoTags` or the layout entry's full reference), so a
//! later start by that reference works offline. After this stage every source looks the same
//! ([`PulledImage`]); unpacking is not done here. It never writes outside the store and never
//! takes a file path from inside an archive.

mod archive;
mod docker;
mod files;
mod import;
mod layout;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

use crate::cache::{BlobStore, CacheError};
use crate::digest::Digest;
use crate::image::{ImageError, ImageRef, Platform, PulledImage};
use crate::registry::{self, LayerFeed, RegistryConfig, RegistryError};

/// The kind of local image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A directory holding an OCI image layout (`oci:`).
    OciLayout,
    /// A tar of an OCI image layout (`oci-archive:`).
    OciArchive,
    /// A `docker save` tar (`docker-archive:`).
    DockerArchive,
}

impl Format {
    const ALL: [Format; 3] = [Format::OciLayout, Format::OciArchive, Format::DockerArchive];

    /// The local source `text` names, and the rest after `<transport>:`.
    fn of(text: &str) -> Option<(Format, &str)> {
        Format::ALL
            .into_iter()
            .find_map(|f| Some((f, text.strip_prefix(f.transport())?.strip_prefix(':')?)))
    }

    /// The skopeo transport name.
    pub(crate) fn transport(self) -> &'static str {
        match self {
            Format::OciLayout => "oci",
            Format::OciArchive => "oci-archive",
            Format::DockerArchive => "docker-archive",
        }
    }
}

/// An image in a local directory or file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalImage {
    /// Which kind of layout or archive.
    pub format: Format,
    /// The directory or file.
    pub path: PathBuf,
    /// Which image of several: a name (ref name, repo tag) or digest; `None` when it holds one.
    pub name: Option<String>,
    /// The reference to pin it under instead of the names it carries (`--as`).
    pub pin_as: Option<ImageRef>,
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// An image in a registry.
    Registry(ImageRef),
    /// An image in a local layout or archive.
    Local(LocalImage),
}

impl From<ImageRef> for ImageSource {
    fn from(reference: ImageRef) -> Self {
        ImageSource::Registry(reference)
    }
}

impl std::fmt::Display for ImageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // A registry host named like a transport (`oci:5000/x`) keeps its `docker://`, or
            // the text would read back as a local source.
            ImageSource::Registry(reference) => match Format::of(&reference.to_string()) {
                Some(_) => write!(f, "docker://{reference}"),
                None => write!(f, "{reference}"),
            },
            ImageSource::Local(local) => {
                write!(f, "{}:{}", local.format.transport(), local.path.display())?;
                match &local.name {
                    Some(name) => write!(f, ":{name}"),
                    None => Ok(()),
                }
            }
        }
    }
}

impl ImageSource {
    /// Parses the `--image` text (see the module doc).
    pub fn parse(text: &str) -> Result<ImageSource, SourceError> {
        let Some((format, rest)) = Format::of(text) else {
            let reference = text.strip_prefix("docker://").unwrap_or(text);
            return Ok(ImageSource::Registry(ImageRef::parse(reference)?));
        };
        let syntax = |reason: &str| SourceError::Syntax {
            text: text.to_owned(),
            reason: format!("{reason} (expected {}:PATH[:NAME])", format.transport()),
        };
        // Like skopeo: the path ends at the first ':'.
        let (path, name) = match rest.split_once(':') {
            Some((path, name)) => (path, Some(name)),
            None => (rest, None),
        };
        if path.is_empty() {
            return Err(syntax("the path is empty"));
        }
        if name == Some("") {
            return Err(syntax("the name after ':' is empty"));
        }
        Ok(ImageSource::Local(LocalImage {
            format,
            path: PathBuf::from(path),
            name: name.map(str::to_owned),
            pin_as: None,
        }))
    }

    /// The same source, pinned under `reference` once imported (`--as`): local images only,
    /// and a tag, not a digest.
    pub(crate) fn pinned_as(self, reference: Option<ImageRef>) -> Result<ImageSource, SourceError> {
        let Some(reference) = reference else {
            return Ok(self);
        };
        let refuse = |reason| SourceError::PinAs {
            reference: reference.to_string(),
            reason,
        };
        if reference.digest().is_some() {
            return Err(refuse("give a tag: a reference by digest needs no pin"));
        }
        match self {
            ImageSource::Registry(_) => Err(refuse(
                "only an image from oci:, oci-archive: or docker-archive: is pinned under another name",
            )),
            ImageSource::Local(local) => Ok(ImageSource::Local(LocalImage {
                pin_as: Some(reference),
                ..local
            })),
        }
    }
}

/// An image whose blobs are all in the store, and the references it is known by there.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The image.
    pub image: PulledImage,
    /// The registry reference, or the references a local image was pinned under (none when
    /// it carries no name and no `--as` was given).
    pub names: Vec<ImageRef>,
}

/// A local image imported into the store, before pinning.
#[derive(Debug)]
pub(crate) struct Imported {
    pub image: PulledImage,
    /// What a pin points to: the entry's index or manifest.
    pub top: Digest,
    /// The names the image carries (annotations, repo tags), as written.
    pub names: Vec<String>,
}

/// Whether two image names are the same: equal, or equal once normalised as references.
pub(crate) fn names_match(a: &str, b: &str) -> bool {
    a == b
        || matches!((ImageRef::parse(a), ImageRef::parse(b)),
            (Ok(a), Ok(b)) if a.normalized() == b.normalized())
}

/// The names of `names` that are image references to pin: a full reference (with a `/` or a
/// tag), not a bare ref name like `latest`; no digests; normalised, without repeats.
pub(crate) fn references(names: &[String]) -> Vec<ImageRef> {
    let mut found: Vec<ImageRef> = Vec::new();
    for name in names {
        if !name.contains(['/', ':']) || name.contains('@') {
            continue;
        }
        if let Ok(reference) = ImageRef::parse(name) {
            if !found
                .iter()
                .any(|r| r.normalized() == reference.normalized())
            {
                found.push(reference);
            }
        }
    }
    found
}

/// Imports a local image and pins it. Blocking.
fn import_local(
    local: &LocalImage,
    store: &BlobStore,
    platform: &Platform,
    feed: &LayerFeed,
) -> Result<Fetched, SourceError> {
    let label = ImageSource::Local(local.clone()).to_string();
    let files = files::open(&local.path, local.format == Format::OciLayout)?;
    let name = local.name.as_deref();
    let mut imported = match local.format {
        Format::OciLayout | Format::OciArchive => layout::import_image(
            &files,
            local.format.transport(),
            &label,
            name,
            platform,
            store,
            feed,
        )?,
        Format::DockerArchive => docker::import_image(&files, &label, name, platform, store, feed)?,
    };
    let names = match &local.pin_as {
        Some(reference) => vec![reference.clone()],
        None => references(&imported.names),
    };
    for reference in &names {
        store
            .pin(&reference.normalized(), &imported.top)
            .map_err(|source| SourceError::Pin {
                reference: reference.to_string(),
                source,
            })?;
    }
    if names.is_empty() {
        imported.image.warnings.push(format!(
            "{label} carries no image reference to record it under, so only this same --image finds it in the cache; envbox prepare --as REF records it under REF for an offline start by REF"
        ));
    }
    Ok(Fetched {
        image: imported.image,
        names,
    })
}

/// Gets `source`'s blobs into `store`: pulled from the registry (with `config`), or imported
/// from the local files (on a blocking thread) and pinned. Each layer goes to `feed` as soon as
/// its blob is verified in the store; a failure stops the feed (see [`LayerFeed::stop`]).
pub async fn fetch(
    source: &ImageSource,
    config: &RegistryConfig,
    store: &BlobStore,
    feed: &LayerFeed,
) -> Result<Fetched, SourceError> {
    let fetched = match source {
        ImageSource::Registry(reference) => registry::pull_feeding(config, store, reference, feed)
            .await
            .map(|image| Fetched {
                image,
                names: vec![reference.clone()],
            })
            .map_err(SourceError::from),
        ImageSource::Local(local) => {
            let (local, store, platform) = (local.clone(), store.clone(), config.platform.clone());
            let feed = feed.clone();
            tokio::task::spawn_blocking(move || import_local(&local, &store, &platform, &feed))
                .await
                .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
        }
    };
    if fetched.is_err() {
        feed.stop();
    }
    fetched
}

/// Errors of this module; each names the file (or the `--image` text) it is about.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message documents it
pub enum SourceError {
    #[error("image {text:?}: {reason}")]
    Syntax { text: String, reason: String },
    #[error("--as {reference}: {reason}")]
    PinAs {
        reference: String,
        reason: &'static str,
    },
    #[error("opening {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not {expected}")]
    Kind {
        path: PathBuf,
        expected: &'static str,
    },
    #[error("reading {what} of {path}: {source}")]
    Read {
        path: PathBuf,
        what: String,
        source: std::io::Error,
    },
    #[error("{path} is {format}-compressed: decompress it first (envbox reads a plain tar archive in place)")]
    Compressed { path: PathBuf, format: &'static str },
    #[error("archive {path}: member {member:?} {reason}; refusing the whole archive")]
    UnsafeMember {
        path: PathBuf,
        member: String,
        reason: &'static str,
    },
    #[error("{path}: {member:?} {reason}")]
    BadMember {
        path: PathBuf,
        member: String,
        reason: String,
    },
    #[error("{path} has no {what}")]
    Missing { path: PathBuf, what: String },
    #[error("{path}: {what} is not valid: {detail}")]
    Document {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("{path} holds several images: name one as {transport}:{}:NAME, NAME one of: {}", path.display(), choices.join(", "))]
    SeveralImages {
        path: PathBuf,
        transport: &'static str,
        choices: Vec<String>,
    },
    #[error("{path} has no image named {wanted:?}; it holds: {}", choices.join(", "))]
    NoSuchImage {
        path: PathBuf,
        wanted: String,
        choices: Vec<String>,
    },
    #[error("importing {what} from {path}: {source}")]
    Blob {
        path: PathBuf,
        what: String,
        source: CacheError,
    },
    #[error("importing from {path}: stopped before every blob was imported, because another step failed")]
    Stopped { path: PathBuf },
    #[error("pinning {reference} in the cache: {source}")]
    Pin {
        reference: String,
        source: CacheError,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}
