//! Extra CA certificates from `CODER_EXTRA_CERTS_PATH`.
//!
//! Owns: reading a PEM file, or every file of a directory (sub-directories skipped: Kubernetes
//! volumes hold `..data` directories of symlinks), into individual PEM certificates, each
//! checked to parse. System roots are always trusted as well; this only adds. It never
//! connects anywhere.

use std::path::{Path, PathBuf};

use super::RegistryError;

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

fn error(path: &Path, reason: impl Into<String>) -> RegistryError {
    RegistryError::ExtraCerts {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Splits a PEM bundle into single certificates.
fn split_pem(text: &str) -> Vec<String> {
    let mut certs = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let end = start + len + END.len();
        certs.push(format!("{}\n", &rest[start..end]));
        rest = &rest[end..];
    }
    certs
}

fn read_file(path: &Path) -> Result<Vec<String>, RegistryError> {
    let text = std::fs::read_to_string(path).map_err(|e| error(path, e.to_string()))?;
    let certs = split_pem(&text);
    if certs.is_empty() {
        return Err(error(
            path,
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in the file",
        ));
    }
    for (i, pem) in certs.iter().enumerate() {
        reqwest::Certificate::from_pem(pem.as_bytes())
            .map_err(|e| error(path, format!("certificate {} does not parse: {e}", i + 1)))?;
    }
    Ok(certs)
}

/// Reads the PEM certificates at `path` (a file, or a directory of files).
pub fn load_extra_certs(path: &Path) -> Result<Vec<String>, RegistryError> {
    let meta = std::fs::metadata(path).map_err(|e| error(path, e.to_string()))?;
    if meta.is_file() {
        return read_file(path);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| error(path, e.to_string()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut certs = Vec::new();
    for file in &files {
        certs.extend(read_file(file)?);
    }
    if certs.is_empty() {
        return Err(error(path, "the directory holds no certificate files"));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_bundles() {
        let one = format!("{BEGIN}\nAAA\n{END}\n");
        assert_eq!(split_pem(&format!("junk\n{one}{one}trailer")).len(), 2);
        assert!(split_pem("nothing").is_empty());
    }

    #[test]
    fn a_file_without_certificates_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ca.pem");
        std::fs::write(&f, "hello").unwrap();
        let err = load_extra_certs(&f).unwrap_err().to_string();
        assert!(
            err.contains("CODER_EXTRA_CERTS_PATH") && err.contains("ca.pem"),
            "{err}"
        );
        assert!(load_extra_certs(&dir.path().join("missing")).is_err());
    }
}
