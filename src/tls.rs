//! CA certificates: the system's bundle, and extra ones from `CODER_EXTRA_CERTS_PATH`.
//!
//! Owns: finding and reading the system's CA bundle once per process ([`system_roots`]), and
//! reading a PEM file, or every file of a directory (sub-directories skipped: Kubernetes
//! volumes hold `..data` directories of symlinks), into individual PEM certificates, each
//! checked to parse, and the HTTP client builder that trusts both ([`client_builder`]), which
//! the registry client and the Coder client (`crate::agentlog`) start from. System roots are
//! always trusted as well; the extra ones only add. It never connects anywhere.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// Where distributions keep their CA bundle (the list Go's crypto/x509 searches), first
/// found wins.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The system's CA bundle: `SSL_CERT_FILE`, else the first of [`SYSTEM_BUNDLES`] that
/// exists. `None` when `SSL_CERT_DIR` is set (the HTTP clients then discover the roots
/// themselves) or there is none.
fn system_bundle() -> Option<PathBuf> {
    if std::env::var_os("SSL_CERT_DIR").is_some() {
        return None;
    }
    if let Some(file) = std::env::var_os("SSL_CERT_FILE") {
        return Some(file.into());
    }
    SYSTEM_BUNDLES
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
}

/// The certificates (DER) of [`system_bundle`], read once per process and handed to every
/// client's rustls config ([`client_builder`]). `None` when there is no bundle or it holds no
/// certificate: the HTTP clients then discover the roots themselves (rustls-platform-verifier),
/// which reads the bundle and every file of `/etc/ssl/certs` again for each client.
pub fn system_roots() -> Option<&'static [CertificateDer<'static>]> {
    static ROOTS: OnceLock<Option<Vec<CertificateDer<'static>>>> = OnceLock::new();
    ROOTS
        .get_or_init(|| read_bundle(&system_bundle()?).filter(|certs| !certs.is_empty()))
        .as_deref()
}

/// Every certificate of a PEM bundle that parses (the system's tools skip bad ones too);
/// `None` when the file cannot be read.
fn read_bundle(path: &Path) -> Option<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(path).ok()?;
    Some(
        CertificateDer::pem_slice_iter(&bytes)
            .filter_map(Result::ok)
            .collect(),
    )
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("CODER_EXTRA_CERTS_PATH {path}: {reason}")]
    ExtraCerts { path: PathBuf, reason: String },
}

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

fn error(path: &Path, reason: impl Into<String>) -> CertsError {
    CertsError::ExtraCerts {
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

fn read_file(path: &Path) -> Result<Vec<String>, CertsError> {
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

/// reqwest is built without a default TLS provider: ring is installed (no C toolchain needed)
/// before any client is built. Installing twice is harmless: the first one stays.
pub(crate) fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A reqwest client builder trusting the system's roots (read once, see [`system_roots`]) and
/// the PEM certificates `extra_roots`, with the crypto provider installed: what every HTTP
/// client of envbox starts from.
pub(crate) fn client_builder(extra_roots: &[String]) -> Result<reqwest::ClientBuilder, String> {
    install_crypto_provider();
    let extra = extra_roots
        .iter()
        .map(|pem| reqwest::Certificate::from_pem(pem.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("extra CA certificate: {e}"))?;
    let mut builder = reqwest::Client::builder();
    if let Some(system) = system_roots() {
        let system = system
            .iter()
            .map(|der| reqwest::Certificate::from_der(der))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("system CA certificate: {e}"))?;
        builder = builder.tls_certs_only(system);
    }
    Ok(builder.tls_certs_merge(extra))
}

/// Reads the PEM certificates at `path` (a file, or a directory of files).
pub fn load_extra_certs(path: &Path) -> Result<Vec<String>, CertsError> {
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
    fn a_bundle_yields_each_certificate_and_skips_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let a = rcgen::generate_simple_self_signed(vec!["a.example".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.example".into()]).unwrap();
        let bundle = dir.path().join("bundle.crt");
        let text = format!(
            "# comment\n{}\n-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n{}",
            a.cert.pem(),
            b.cert.pem()
        );
        std::fs::write(&bundle, text).unwrap();
        let certs = read_bundle(&bundle).unwrap();
        assert_eq!(
            certs,
            [a.cert.der().clone(), b.cert.der().clone()],
            "both good certificates, in order; the broken one skipped"
        );
        assert_eq!(read_bundle(&dir.path().join("absent")), None);
    }

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
