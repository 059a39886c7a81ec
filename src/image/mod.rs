//! The image model: what an OCI image is, wherever it comes from.
//!
//! Owns: image references (`reference`), manifests, image indexes and layer compressions
//! (`manifest`), this node's platform and the choice of an index entry (`platform`), the image
//! config document (`config`), turning a manifest plus its config into a [`PulledImage`]
//! (`describe`), the walk through nested indexes to this node's manifest (`walk`), and the
//! uid/gid shift every unpacked image gets ([`ID_SHIFT`], [`ID_RANGE`]).
//! Pure: bytes in, typed values out. It never talks to a registry, never reads a file or the
//! store, and never unpacks: `crate::registry` and `crate::source` fetch, `crate::unpack`
//! unpacks, both by these rules.

pub(crate) mod config;
pub(crate) mod describe;
pub(crate) mod manifest;
pub(crate) mod platform;
pub(crate) mod reference;
pub(crate) mod walk;

pub use config::{ImageConfig, ImageConfigError, ImageDocument};
pub use describe::{PulledImage, PulledLayer};
pub use manifest::Compression;
pub use platform::Platform;
pub use reference::{normalize_host, ImageRef};

/// Container ids 0..65536 map to host ids 100000..165536.
pub const ID_SHIFT: u32 = 100_000;
/// Size of the id mapping.
pub(crate) const ID_RANGE: u32 = 65_536;

fn size_text(size: &Option<u64>, limit: &u64) -> String {
    match size {
        Some(size) => format!("{size} bytes"),
        None => format!("more than {limit} bytes"),
    }
}

/// Errors of the image model: a reference, manifest, index or config that is not a usable
/// image for this node. Messages say what to do where there is something to do.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message documents it
pub enum ImageError {
    #[error("image reference {reference:?}: {reason}")]
    Reference { reference: String, reason: String },
    #[error("image {reference} has no variant for this node's platform {wanted}; it offers: {}", offered.join(", "))]
    NoMatchingPlatform {
        reference: String,
        wanted: String,
        offered: Vec<String>,
    },
    #[error("image {reference} is a Docker schema 1 image, which envbox does not pull; rebuild and push it with a current docker or buildkit (schema 2)")]
    SchemaV1 { reference: String },
    #[error("{reference} is not a container image (media type {media_type})")]
    UnsupportedManifest {
        reference: String,
        media_type: String,
    },
    #[error("image {reference} has layer {digest} of media type {media_type}, which envbox cannot unpack (gzip, zstd or uncompressed tar only)")]
    UnsupportedLayer {
        reference: String,
        digest: String,
        media_type: String,
    },
    #[error("image {reference}: bad manifest: {detail}")]
    Manifest { reference: String, detail: String },
    #[error("{what} of {reference} is {}, over the limit of {limit} bytes for manifests, indexes and image configs (containerd's too): it is not read", size_text(.size, .limit))]
    TooLarge {
        reference: String,
        /// "the manifest", "the image config sha256:...", ...
        what: String,
        /// `None` when the size is not known (a chunked answer cut at the limit).
        size: Option<u64>,
        limit: u64,
    },
    #[error("image {reference} is for {found} but this node is {wanted}")]
    WrongPlatform {
        reference: String,
        found: String,
        wanted: String,
    },
}
