//! The parts of an OCI image configuration the runtime spec depends on.
//!
//! Owns: reading the image config document (the JSON blob a manifest's `config` descriptor
//! points to: `{"architecture":..,"os":..,"config":{"Env":[..],..}}`) into a plain struct. It
//! never fetches anything: the registry and source stages hand the document over.

use std::path::Path;

use serde::Deserialize;

/// `config` of an OCI image configuration. Absent fields are empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ImageConfig {
    /// `Env`: `NAME=value` pairs.
    #[serde(rename = "Env", default)]
    pub env: Vec<String>,
    /// `WorkingDir`.
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    /// `User`: a name or uid, optionally `:group`.
    #[serde(rename = "User", default)]
    pub user: Option<String>,
    /// `Entrypoint`.
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    /// `StopSignal`, as a name or number.
    #[serde(rename = "StopSignal", default)]
    pub stop_signal: Option<String>,
}

/// The whole image configuration document: platform, run config, layer diff IDs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ImageDocument {
    /// The OS the image is for (`linux`).
    #[serde(default)]
    pub os: String,
    /// The CPU architecture (`amd64`, `arm64`, ...).
    #[serde(default)]
    pub architecture: String,
    /// The architecture variant (`v8`), if any.
    #[serde(default)]
    pub variant: Option<String>,
    /// The run configuration.
    #[serde(default)]
    pub config: Option<ImageConfig>,
    /// The layers' diff IDs.
    #[serde(default)]
    pub rootfs: RootfsSection,
}

/// `rootfs` of the image configuration: the uncompressed layer digests, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RootfsSection {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

impl ImageDocument {
    /// Parses an image configuration document. `origin` names it in errors.
    pub(crate) fn from_json(json: &[u8], origin: &str) -> Result<ImageDocument, ImageConfigError> {
        serde_json::from_slice(json).map_err(|source| ImageConfigError::Parse {
            path: origin.to_owned(),
            source,
        })
    }
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message documents it
pub enum ImageConfigError {
    #[error("reading image config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("image config {path} is not an OCI image configuration: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
}

impl ImageConfig {
    /// Parses an image configuration document. `origin` names it in errors.
    pub(crate) fn from_json(json: &str, origin: &str) -> Result<ImageConfig, ImageConfigError> {
        Ok(ImageDocument::from_json(json.as_bytes(), origin)?
            .config
            .unwrap_or_default())
    }

    /// Reads and parses an image configuration file.
    pub(crate) fn read(path: &Path) -> Result<ImageConfig, ImageConfigError> {
        let origin = path.display().to_string();
        let json = std::fs::read_to_string(path).map_err(|source| ImageConfigError::Read {
            path: origin.clone(),
            source,
        })?;
        Self::from_json(&json, &origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_config_object_of_an_image_configuration() {
        let json = r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
            "config":{"Env":["PATH=/usr/bin","LANG=C.UTF-8"],"WorkingDir":"/src","User":"1000",
            "Cmd":["bash"],"StopSignal":"SIGQUIT","Labels":{"a":"b"}}}"#;
        let c = ImageConfig::from_json(json, "test").unwrap();
        assert_eq!(c.env, ["PATH=/usr/bin", "LANG=C.UTF-8"]);
        assert_eq!(c.working_dir.as_deref(), Some("/src"));
        assert_eq!(c.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(c.cmd, Some(vec!["bash".to_owned()]));
    }

    #[test]
    fn a_config_without_config_object_is_empty_and_garbage_is_an_error() {
        assert_eq!(
            ImageConfig::from_json(r#"{"os":"linux"}"#, "t").unwrap(),
            ImageConfig::default()
        );
        let err = ImageConfig::from_json("[1]", "cfg.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cfg.json") && err.contains("not an OCI image configuration"),
            "{err}"
        );
    }
}
