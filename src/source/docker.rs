//! `docker save` archives.
//!
//! Owns: telling a current `docker save` (Docker 25 and later write an OCI layout beside
//! `manifest.json`; that layout is preferred) from a classic one (`manifest.json` only, whose
//! entries name a config file, `RepoTags` and uncompressed `layer.tar` members), and turning a
//! classic image into the image a registry would serve: the config is stored under its own
//! digest, each layer under its diff ID (the sha256 of a plain tar is both; the store verifies
//! it while copying), and a Docker schema 2 manifest naming them is written and stored, so the
//! rest of envbox (unpack, pins, an offline start) sees an ordinary image. Member names from
//! `manifest.json` are lookup keys in the archive, never paths.

use serde::Deserialize;

use super::files::Files;
use super::import::{import, Blob};
use super::{layout, names_match, Imported, SourceError};
use crate::cache::BlobStore;
use crate::digest::Digest;
use crate::image::describe;
use crate::image::manifest::{self, Manifest, DOCKER_MANIFEST};
use crate::image::ImageDocument;
use crate::image::Platform;
use crate::registry::LayerFeed;

const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// One image of a `docker save` `manifest.json`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct SavedImage {
    #[serde(rename = "Config")]
    pub config: String,
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    pub layers: Vec<String>,
}

impl SavedImage {
    pub(crate) fn tags(&self) -> &[String] {
        self.repo_tags.as_deref().unwrap_or_default()
    }
}

/// The image of `images` that `wanted` selects: one of its `RepoTags`, or `@N` (the N-th
/// image, as skopeo writes it); the only image when `wanted` is `None`. Pure.
pub(crate) fn select<'a>(
    images: &'a [SavedImage],
    wanted: Option<&str>,
    files: &Files,
) -> Result<&'a SavedImage, SourceError> {
    let choices = || -> Vec<String> {
        images
            .iter()
            .enumerate()
            .flat_map(|(i, image)| match image.tags() {
                [] => vec![format!("@{i}")],
                tags => tags.to_vec(),
            })
            .collect()
    };
    let found = match wanted {
        None => match images {
            [one] => return Ok(one),
            [] => None,
            _ => {
                return Err(SourceError::SeveralImages {
                    path: files.path().to_owned(),
                    transport: "docker-archive",
                    choices: choices(),
                })
            }
        },
        Some(w) => match w.strip_prefix('@').and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => images.get(n),
            None => images
                .iter()
                .find(|image| image.tags().iter().any(|tag| names_match(tag, w))),
        },
    };
    found.ok_or_else(|| match wanted {
        Some(w) => SourceError::NoSuchImage {
            path: files.path().to_owned(),
            wanted: w.to_owned(),
            choices: choices(),
        },
        None => SourceError::Missing {
            path: files.path().to_owned(),
            what: "image (its manifest.json lists none)".into(),
        },
    })
}

/// The Docker schema 2 manifest of a classic image: config and plain-tar layers by digest.
pub(crate) fn manifest_for(config: &Digest, config_size: u64, layers: &[(Digest, u64)]) -> Vec<u8> {
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|(digest, size)| {
            serde_json::json!({"mediaType": DOCKER_LAYER_TAR, "size": size, "digest": digest.to_string()})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": config_size, "digest": config.to_string()},
        "layers": layers,
    }))
    .unwrap_or_default()
}

fn put(
    files: &Files,
    store: &BlobStore,
    what: &str,
    bytes: &[u8],
) -> Result<(Digest, bool), SourceError> {
    let digest = Digest::of(bytes);
    if store.size_of(&digest) == Some(bytes.len() as u64) {
        return Ok((digest, false));
    }
    store
        .put(&digest, bytes)
        .map_err(|source| SourceError::Blob {
            path: files.path().to_owned(),
            what: what.to_owned(),
            source,
        })?;
    Ok((digest, true))
}

/// Imports the image `wanted` selects from a `docker save` archive into `store`.
pub(crate) fn import_image(
    files: &Files,
    reference: &str,
    wanted: Option<&str>,
    platform: &Platform,
    store: &BlobStore,
    feed: &LayerFeed,
) -> Result<Imported, SourceError> {
    if files.contains("index.json")? {
        return layout::import_image(
            files,
            "docker-archive",
            reference,
            wanted,
            platform,
            store,
            feed,
        );
    }
    let bytes = files.read("manifest.json", "the image list of a docker save archive")?;
    let images: Vec<SavedImage> =
        serde_json::from_slice(&bytes).map_err(|e| SourceError::Document {
            path: files.path().to_owned(),
            what: "manifest.json",
            detail: e.to_string(),
        })?;
    let saved = select(&images, wanted, files)?;
    let config = files.read(&saved.config, "the image config")?;
    let (config_digest, stored) = put(files, store, "the image config", &config)?;
    let mut copied = usize::from(stored);
    let document = ImageDocument::from_json(&config, &format!("image config {}", saved.config))
        .map_err(|e| describe::malformed(reference, e.to_string()))?;
    if document.rootfs.diff_ids.len() != saved.layers.len() {
        return Err(describe::malformed(
            reference,
            format!(
                "manifest.json lists {} layers but the config lists {} diff IDs",
                saved.layers.len(),
                document.rootfs.diff_ids.len()
            ),
        )
        .into());
    }
    let mut layers = Vec::with_capacity(saved.layers.len());
    for (name, diff_id) in saved.layers.iter().zip(&document.rootfs.diff_ids) {
        let size = files.size_of(name)?.ok_or_else(|| SourceError::Missing {
            path: files.path().to_owned(),
            what: format!("layer {name} (listed in manifest.json)"),
        })?;
        layers.push((describe::digest_of(diff_id, reference)?, size));
    }
    let manifest = manifest_for(&config_digest, config.len() as u64, &layers);
    let (manifest_digest, stored) = put(files, store, "the image manifest", &manifest)?;
    copied += usize::from(stored);
    let Manifest::Image(parsed) = manifest::parse(&manifest, Some(DOCKER_MANIFEST), reference)?
    else {
        return Err(
            describe::malformed(reference, "the manifest built for it is not an image").into(),
        );
    };
    let mut image = describe::describe(
        &config,
        platform,
        reference,
        manifest_digest.clone(),
        manifest_digest.clone(),
        &parsed,
    )?;
    let count = layers.len();
    for (i, (name, (digest, size))) in saved.layers.iter().zip(&layers).enumerate() {
        if feed.stopped() {
            return Err(SourceError::Stopped {
                path: files.path().to_owned(),
            });
        }
        let what = format!("layer {} of {count}", i + 1);
        let blob = Blob {
            name,
            digest,
            size: *size,
            what: &what,
            plain_tar: true,
        };
        copied += usize::from(import(files, store, &blob)?);
        feed.ready(i, &image.layers[i]);
    }
    image.blobs_downloaded = copied;
    Ok(Imported {
        image,
        top: manifest_digest,
        names: saved.tags().to_vec(),
    })
}
