//! An image described from its manifests and config: the rules every image source shares.
//!
//! Owns: choosing the platform's entry of an image index, checking the manifest it points to
//! against that entry, and turning an image manifest plus its config document into a
//! [`PulledImage`]: config platform checked against this node's, one diff ID per layer, layer
//! compressions. Registry pulls and local archives (`crate::source`) both go through here, so
//! an image means the same wherever it came from. Pure: the callers read the config from the
//! store; it never fetches, reads or writes anything.

use super::manifest::{self, Compression, Descriptor, ImageManifest, Manifest};
use super::{platform, ImageDocument, ImageError, Platform};
use crate::digest::Digest;

/// A layer of the image, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledLayer {
    /// The compressed blob's digest, as in the manifest.
    pub digest: Digest,
    /// The blob's size in bytes.
    pub size: u64,
    /// The manifest's media type for the layer.
    pub media_type: String,
    /// How the blob is compressed.
    pub compression: Compression,
    /// The digest of the uncompressed tar, from the image config.
    pub diff_id: Digest,
}

/// An image whose blobs are all in the store (after a pull or an import).
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// What the image is called in messages: the normalised reference, or the archive.
    pub name: String,
    /// What the reference resolved to (an index's digest for multi-platform images).
    pub digest: Digest,
    /// The image manifest for this platform.
    pub manifest_digest: Digest,
    /// The config blob's digest.
    pub config_digest: Digest,
    /// The parsed image configuration.
    pub config: ImageDocument,
    /// The layers, bottom first.
    pub layers: Vec<PulledLayer>,
    /// Blobs that had to be copied into the store: downloaded, or imported from an archive
    /// (0 on a warm cache).
    pub blobs_downloaded: usize,
    /// Things the caller should log (e.g. an offline fallback to a pinned digest).
    pub warnings: Vec<String>,
}

/// What a descriptor points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

pub(crate) fn malformed(reference: &str, detail: impl Into<String>) -> ImageError {
    ImageError::Manifest {
        reference: reference.to_owned(),
        detail: detail.into(),
    }
}

/// A digest named by a manifest, index or config.
pub(crate) fn digest_of(text: &str, reference: &str) -> Result<Digest, ImageError> {
    Digest::parse(text).map_err(|e| malformed(reference, e.to_string()))
}

/// A size named by a descriptor (negative sizes are refused).
pub(crate) fn size_of(size: i64, digest: &Digest, reference: &str) -> Result<u64, ImageError> {
    u64::try_from(size).map_err(|_| malformed(reference, format!("{digest} has size {size}")))
}

/// Refuses a manifest, index or config of `size` bytes over [`manifest::MAX_DOCUMENT_SIZE`];
/// `what` names it.
pub(crate) fn document_size(size: u64, what: &str, reference: &str) -> Result<(), ImageError> {
    match size > manifest::MAX_DOCUMENT_SIZE {
        true => Err(ImageError::TooLarge {
            reference: reference.to_owned(),
            what: what.to_owned(),
            size: Some(size),
            limit: manifest::MAX_DOCUMENT_SIZE,
        }),
        false => Ok(()),
    }
}

/// What `entry` points to, checked: a digest, a size within [`manifest::MAX_DOCUMENT_SIZE`]
/// (it is a manifest or an index).
pub(crate) fn target(entry: &Descriptor, reference: &str) -> Result<Target, ImageError> {
    let digest = digest_of(&entry.digest, reference)?;
    let size = size_of(entry.size, &digest, reference)?;
    document_size(size, &format!("the manifest {digest}"), reference)?;
    Ok(Target {
        size,
        digest,
        media_type: entry.media_type.clone(),
    })
}

/// Refuses `bytes` fetched for `target` unless they are as long as it says.
pub(crate) fn check_length(
    bytes: &[u8],
    target: &Target,
    reference: &str,
) -> Result<(), ImageError> {
    match bytes.len() as u64 == target.size {
        true => Ok(()),
        false => Err(malformed(
            reference,
            format!(
                "manifest {} is {} bytes, the index says {}",
                target.digest,
                bytes.len(),
                target.size
            ),
        )),
    }
}

/// The entry of an index's `entries` for `wanted`; the error lists what the index offers.
pub(crate) fn platform_entry(
    entries: &[Descriptor],
    wanted: &Platform,
    reference: &str,
) -> Result<Target, ImageError> {
    let entry =
        platform::choose(entries, wanted).map_err(|offered| ImageError::NoMatchingPlatform {
            reference: reference.to_owned(),
            wanted: wanted.to_string(),
            offered,
        })?;
    target(entry, reference)
}

/// The image manifest `bytes`, which an index `entry` points to: its size must be the entry's,
/// and it must not be another index.
pub(crate) fn entry_manifest(
    bytes: &[u8],
    entry: &Target,
    reference: &str,
) -> Result<ImageManifest, ImageError> {
    check_length(bytes, entry, reference)?;
    match manifest::parse(bytes, Some(&entry.media_type), reference)? {
        Manifest::Image(image) => Ok(*image),
        Manifest::Index(_) => Err(malformed(
            reference,
            format!("index entry {} is itself an index", entry.digest),
        )),
    }
}

/// The config and layer blobs `image` names, config first, each with its size (the config's
/// within [`manifest::MAX_DOCUMENT_SIZE`]).
pub(crate) fn blobs_of(
    image: &ImageManifest,
    reference: &str,
) -> Result<Vec<(Digest, u64)>, ImageError> {
    let config = config_digest(image, reference)?;
    let config_size = size_of(image.config.size, &config, reference)?;
    document_size(
        config_size,
        &format!("the image config {config}"),
        reference,
    )?;
    std::iter::once((&image.config.digest, image.config.size))
        .chain(image.layers.iter().map(|l| (&l.digest, l.size)))
        .map(|(digest, size)| {
            let digest = digest_of(digest, reference)?;
            Ok((digest.clone(), size_of(size, &digest, reference)?))
        })
        .collect()
}

/// The digest of `image`'s config blob.
pub(crate) fn config_digest(image: &ImageManifest, reference: &str) -> Result<Digest, ImageError> {
    digest_of(&image.config.digest, reference)
}

/// The image `image` describes, given its config blob `config_bytes` (already verified against
/// [`config_digest`]): the config is parsed and checked (platform, one diff ID per layer).
/// `digest` is what the name resolved to (an index or the manifest itself).
pub(crate) fn describe(
    config_bytes: &[u8],
    wanted: &Platform,
    reference: &str,
    digest: Digest,
    manifest_digest: Digest,
    image: &ImageManifest,
) -> Result<PulledImage, ImageError> {
    let config_digest = config_digest(image, reference)?;
    let document = ImageDocument::from_json(config_bytes, &format!("image config {config_digest}"))
        .map_err(|e| malformed(reference, e.to_string()))?;
    if !document.os.is_empty()
        && !wanted.accepts(
            &document.os,
            &document.architecture,
            document.variant.as_deref(),
        )
    {
        return Err(ImageError::WrongPlatform {
            reference: reference.to_owned(),
            found: format!("{}/{}", document.os, document.architecture),
            wanted: wanted.to_string(),
        });
    }
    if document.rootfs.diff_ids.len() != image.layers.len() {
        return Err(malformed(
            reference,
            format!(
                "the manifest has {} layers but the config lists {} diff IDs",
                image.layers.len(),
                document.rootfs.diff_ids.len()
            ),
        ));
    }
    let mut layers = Vec::with_capacity(image.layers.len());
    for (layer, diff_id) in image.layers.iter().zip(&document.rootfs.diff_ids) {
        let digest = digest_of(&layer.digest, reference)?;
        layers.push(PulledLayer {
            size: size_of(layer.size, &digest, reference)?,
            digest,
            compression: manifest::layer_compression(&layer.media_type)
                .unwrap_or(Compression::None),
            media_type: layer.media_type.clone(),
            diff_id: digest_of(diff_id, reference)?,
        });
    }
    Ok(PulledImage {
        name: reference.to_owned(),
        digest,
        manifest_digest,
        config_digest,
        config: document,
        layers,
        blobs_downloaded: 0,
        warnings: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_over_4_mib_is_refused_before_it_is_fetched() {
        let manifest = |config_size: u64| {
            let json = serde_json::json!({"schemaVersion": 2, "mediaType": manifest::OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": format!("sha256:{}", "1".repeat(64)), "size": config_size},
                "layers": []});
            match manifest::parse(json.to_string().as_bytes(), None, "r").unwrap() {
                Manifest::Image(image) => *image,
                Manifest::Index(_) => unreachable!(),
            }
        };
        assert_eq!(blobs_of(&manifest(4 << 20), "r").unwrap().len(), 1);
        let err = blobs_of(&manifest((4 << 20) + 1), "r").unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::TooLarge {
                    size: Some(4194305),
                    limit: 4194304,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("the image config sha256:1111"),
            "{err}"
        );
    }
}
