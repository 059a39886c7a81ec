//! OCI image layouts (a directory, or a tar of one: an OCI archive, a current `docker save`).
//!
//! Owns: reading `index.json`, choosing the image a name selects (an entry's
//! `org.opencontainers.image.ref.name` or containerd's `io.containerd.image.name` annotation,
//! or its digest; the only image when no name is given; this node's platform when several
//! unnamed entries differ by platform), then importing that image's manifests (through nested
//! indexes, as `crate::image::walk` asks), config and layers into the store, each verified
//! against its descriptor; each layer is handed to the caller's feed as soon as it is in the
//! store. Blobs are looked up only as `blobs/sha256/<hex>` of a parsed digest. The manifest rules are the registry's
//! (`crate::image::describe`), so an image means the same wherever it came from.

use super::files::{blob_name, Files};
use super::import::{import, Blob};
use super::{names_match, Imported, SourceError};
use crate::cache::BlobStore;
use crate::digest::Digest;
use crate::image::describe::{self, Target};
use crate::image::manifest::{self, Descriptor, Manifest, OCI_INDEX};
use crate::image::walk::{Next, Walk};
use crate::image::Platform;
use crate::registry::LayerFeed;

pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";
pub(crate) const IMAGE_NAME: &str = "io.containerd.image.name";

/// The names an `index.json` entry answers to: containerd's full name first, then the OCI
/// ref name.
pub(crate) fn entry_names(entry: &Descriptor) -> Vec<String> {
    let Some(annotations) = &entry.annotations else {
        return Vec::new();
    };
    [IMAGE_NAME, REF_NAME]
        .iter()
        .filter_map(|key| annotations.get(*key))
        .filter(|name| !name.is_empty())
        .cloned()
        .collect()
}

/// How an entry is listed in errors: its first name, else its digest.
fn label(entry: &Descriptor) -> String {
    entry_names(entry)
        .into_iter()
        .next()
        .unwrap_or_else(|| entry.digest.clone())
}

/// The entry of `entries` that `wanted` selects (see the module doc). Pure.
pub(crate) fn select<'a>(
    entries: &'a [Descriptor],
    wanted: Option<&str>,
    platform: &Platform,
    files: &Files,
    transport: &'static str,
) -> Result<&'a Descriptor, SourceError> {
    let candidates: Vec<&Descriptor> = entries
        .iter()
        .filter(|e| {
            wanted.is_none_or(|w| {
                e.digest == w || entry_names(e).iter().any(|name| names_match(name, w))
            })
        })
        .collect();
    let mut choices: Vec<String> = entries.iter().map(label).collect();
    choices.dedup();
    match (candidates.as_slice(), wanted) {
        ([one], _) => Ok(one),
        ([], Some(wanted)) => Err(SourceError::NoSuchImage {
            path: files.path().to_owned(),
            wanted: wanted.to_owned(),
            choices,
        }),
        ([], None) => Err(SourceError::Missing {
            path: files.path().to_owned(),
            what: "image (its index.json lists none)".into(),
        }),
        (several, _) => {
            let same_names = several
                .iter()
                .all(|e| entry_names(e) == entry_names(several[0]));
            if !same_names || several.iter().any(|e| e.platform.is_none()) {
                return Err(SourceError::SeveralImages {
                    path: files.path().to_owned(),
                    transport,
                    choices,
                });
            }
            // One image, one entry per platform.
            let owned: Vec<Descriptor> = several.iter().map(|e| (*e).clone()).collect();
            let chosen =
                describe::platform_entry(&owned, platform, &files.path().display().to_string())?;
            Ok(several
                .iter()
                .find(|e| e.digest == chosen.digest.to_string())
                .copied()
                .unwrap_or(several[0]))
        }
    }
}

/// Copies one blob of the layout into the store; counts it in `copied` when it was copied.
fn import_blob(
    files: &Files,
    store: &BlobStore,
    digest: &Digest,
    size: u64,
    what: &str,
    copied: &mut usize,
) -> Result<(), SourceError> {
    let name = blob_name(digest);
    let blob = Blob {
        name: &name,
        digest,
        size,
        what,
        plain_tar: false,
    };
    *copied += usize::from(import(files, store, &blob)?);
    Ok(())
}

/// Imports the image `wanted` selects from the layout in `files` into `store`. `reference`
/// names the image in errors.
pub(crate) fn import_image(
    files: &Files,
    transport: &'static str,
    reference: &str,
    wanted: Option<&str>,
    platform: &Platform,
    store: &BlobStore,
    feed: &LayerFeed,
) -> Result<Imported, SourceError> {
    let index_bytes = files.read("index.json", "the index of an OCI image layout")?;
    let index = match manifest::parse(&index_bytes, Some(OCI_INDEX), reference)? {
        Manifest::Index(index) => index,
        Manifest::Image(_) => {
            return Err(SourceError::Document {
                path: files.path().to_owned(),
                what: "index.json",
                detail: "it is an image manifest, not an image index".into(),
            })
        }
    };
    let entry = select(&index.manifests, wanted, platform, files, transport)?;
    let top = describe::target(entry, reference)?;
    let mut copied = 0;
    import_blob(
        files,
        store,
        &top.digest,
        top.size,
        "the manifest",
        &mut copied,
    )?;
    let bytes = store
        .read(&top.digest)
        .map_err(|source| SourceError::Blob {
            path: files.path().to_owned(),
            what: "the manifest".into(),
            source,
        })?;
    let (manifest_digest, image) = match manifest::parse(&bytes, Some(&top.media_type), reference)?
    {
        Manifest::Image(image) => (top.digest.clone(), *image),
        Manifest::Index(index) => {
            let mut walk = Walk::new(index, platform, reference);
            let mut fetch = |target: &Target, what: &str| {
                import_blob(files, store, &target.digest, target.size, what, &mut copied)?;
                store
                    .read(&target.digest)
                    .map_err(|source| SourceError::Blob {
                        path: files.path().to_owned(),
                        what: what.into(),
                        source,
                    })
            };
            loop {
                match walk.next()? {
                    Next::Index(nested) => {
                        let bytes = fetch(&nested, "a nested image index")?;
                        walk.index(&nested, &bytes)?;
                    }
                    Next::Manifest(entry) => {
                        let bytes = fetch(&entry, "the platform's manifest")?;
                        let image = describe::entry_manifest(&bytes, &entry, reference)?;
                        break (entry.digest, image);
                    }
                }
            }
        }
    };
    let blobs = describe::blobs_of(&image, reference)?;
    let (config_digest, config_size) = &blobs[0];
    import_blob(
        files,
        store,
        config_digest,
        *config_size,
        "the image config",
        &mut copied,
    )?;
    let config_bytes = store
        .read(config_digest)
        .map_err(|source| SourceError::Blob {
            path: files.path().to_owned(),
            what: "the image config".into(),
            source,
        })?;
    let mut image = describe::describe(
        &config_bytes,
        platform,
        reference,
        top.digest.clone(),
        manifest_digest,
        &image,
    )?;
    let count = image.layers.len();
    for (i, layer) in image.layers.iter().enumerate() {
        if feed.stopped() {
            return Err(SourceError::Stopped {
                path: files.path().to_owned(),
            });
        }
        let what = format!("layer {} of {count}", i + 1);
        import_blob(files, store, &layer.digest, layer.size, &what, &mut copied)?;
        feed.ready(i, layer);
    }
    image.blobs_downloaded = copied;
    Ok(Imported {
        image,
        top: top.digest,
        names: entry_names(entry),
    })
}
