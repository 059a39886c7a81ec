//! Manifests: what a registry answered, classified and checked.
//!
//! Owns: the manifest and index documents as plain structs (only the fields envbox reads),
//! telling an image index / manifest list from an image manifest (OCI or Docker schema 2),
//! refusing schema 1 with a message that says what to do, and checking every layer's media
//! type (tar, gzip or zstd; anything else refused by name). Pure: bytes in, typed manifests out.

use std::collections::BTreeMap;

use serde::Deserialize;

use serde_json::Value;

use super::ImageError;

pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub(crate) const DOCKER_SCHEMA1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Longest manifest, index or image config read (containerd's limit, `MaxManifestSize`):
/// anything longer is refused before it is read whole.
pub(crate) const MAX_DOCUMENT_SIZE: u64 = 4 << 20;

/// What envbox asks registries for (schema 1 included, to refuse it by name).
pub(crate) const ACCEPTED: [&str; 6] = [
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1_SIGNED,
    DOCKER_SCHEMA1,
];

const CONFIG_TYPES: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// How a layer is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// An uncompressed tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// The compression of a layer media type, or `None` when envbox cannot unpack it.
pub(crate) fn layer_compression(media_type: &str) -> Option<Compression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Some(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => Some(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

/// A descriptor (OCI image-spec `descriptor.md`): what a manifest or index points to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    /// Alternate locations (foreign layers).
    #[serde(default)]
    pub urls: Option<Vec<String>>,
    /// The platform of an index entry.
    #[serde(default)]
    pub platform: Option<DescriptorPlatform>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// `platform` of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct DescriptorPlatform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// An image index or Docker manifest list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ImageIndex {
    #[serde(default)]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ImageManifest {
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// A manifest as served.
#[derive(Debug, Clone)]
pub(crate) enum Manifest {
    Index(ImageIndex),
    Image(Box<ImageManifest>),
}

fn malformed(reference: &str, detail: impl Into<String>) -> ImageError {
    ImageError::Manifest {
        reference: reference.to_owned(),
        detail: detail.into(),
    }
}

/// Classifies and parses a manifest. `content_type` is the response's, if known.
pub(crate) fn parse(
    bytes: &[u8],
    content_type: Option<&str>,
    reference: &str,
) -> Result<Manifest, ImageError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| malformed(reference, format!("not JSON: {e}")))?;
    let media_type = value
        .get("mediaType")
        .and_then(Value::as_str)
        .or(content_type)
        .unwrap_or_default()
        .to_owned();
    if value.get("schemaVersion").and_then(Value::as_i64) == Some(1)
        || media_type == DOCKER_SCHEMA1
        || media_type == DOCKER_SCHEMA1_SIGNED
    {
        return Err(ImageError::SchemaV1 {
            reference: reference.to_owned(),
        });
    }
    let is_index = media_type == OCI_INDEX
        || media_type == DOCKER_LIST
        || (media_type.is_empty() && value.get("manifests").is_some());
    let is_image = media_type == OCI_MANIFEST
        || media_type == DOCKER_MANIFEST
        || (media_type.is_empty() && value.get("layers").is_some());
    if is_index {
        let index: ImageIndex = serde_json::from_value(value)
            .map_err(|e| malformed(reference, format!("bad image index: {e}")))?;
        return Ok(Manifest::Index(index));
    }
    if !is_image {
        return Err(ImageError::UnsupportedManifest {
            reference: reference.to_owned(),
            media_type,
        });
    }
    let image: ImageManifest = serde_json::from_value(value)
        .map_err(|e| malformed(reference, format!("bad image manifest: {e}")))?;
    check_image(&image, reference)?;
    Ok(Manifest::Image(Box::new(image)))
}

fn check_image(image: &ImageManifest, reference: &str) -> Result<(), ImageError> {
    if !CONFIG_TYPES.contains(&image.config.media_type.as_str()) {
        return Err(ImageError::UnsupportedManifest {
            reference: reference.to_owned(),
            media_type: format!("config {}", image.config.media_type),
        });
    }
    for layer in &image.layers {
        if layer_compression(&layer.media_type).is_none() {
            return Err(ImageError::UnsupportedLayer {
                reference: reference.to_owned(),
                digest: layer.digest.clone(),
                media_type: layer.media_type.clone(),
            });
        }
        if layer.size < 0 {
            return Err(malformed(
                reference,
                format!("layer {} has a negative size", layer.digest),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(layer_type: &str) -> String {
        serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", "1".repeat(64)), "size": 10},
            "layers": [{"mediaType": layer_type, "digest": format!("sha256:{}", "2".repeat(64)), "size": 20}]
        })
        .to_string()
    }

    #[test]
    fn images_with_known_layers_parse() {
        for t in [
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.oci.image.layer.v1.tar",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        ] {
            assert!(
                matches!(
                    parse(image(t).as_bytes(), None, "r"),
                    Ok(Manifest::Image(_))
                ),
                "{t}"
            );
        }
    }

    #[test]
    fn unknown_layer_types_are_refused_by_name() {
        let err = parse(
            image("application/vnd.oci.image.layer.v1.tar+bzip2").as_bytes(),
            None,
            "r",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("application/vnd.oci.image.layer.v1.tar+bzip2"),
            "{err}"
        );
    }

    #[test]
    fn schema1_is_refused_with_advice() {
        let s1 = r#"{"schemaVersion":1,"name":"x","tag":"latest","fsLayers":[]}"#;
        let err = parse(s1.as_bytes(), Some(DOCKER_SCHEMA1_SIGNED), "x:latest").unwrap_err();
        assert!(matches!(err, ImageError::SchemaV1 { .. }));
        assert!(err.to_string().contains("rebuild"), "{err}");
    }

    #[test]
    fn indexes_and_docker_lists_parse() {
        let list =
            serde_json::json!({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": []})
                .to_string();
        assert!(matches!(
            parse(list.as_bytes(), None, "r"),
            Ok(Manifest::Index(_))
        ));
    }

    #[test]
    fn artifacts_are_not_images() {
        let helm = image("application/vnd.oci.image.layer.v1.tar").replace(
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.cncf.helm.config.v1+json",
        );
        let err = parse(helm.as_bytes(), None, "r").unwrap_err();
        assert!(err.to_string().contains("helm"), "{err}");
    }
}
