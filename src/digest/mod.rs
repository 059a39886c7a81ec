//! Content digests (`sha256:<64 hex>`), the keys of everything envbox caches.
//!
//! Owns: parsing and printing digests, and hashing ([`Hasher`]: a running sha256 that hashes two
//! streams at once where the CPU has the SHA extensions). Only sha256 is accepted: it is what every
//! registry serves, and refusing the rest by name beats half-supporting them. It never does I/O.

use sha2::{Digest as _, Sha256};

mod hasher;
#[cfg(target_arch = "x86_64")]
mod shani;

pub(crate) use hasher::Hasher;

/// A sha256 content digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

/// Why a digest string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message documents it
pub enum DigestError {
    #[error("digest {0:?} uses an unsupported algorithm (only sha256 is supported)")]
    Algorithm(String),
    #[error("digest {0:?} is not sha256 followed by 64 lower-case hex digits")]
    Malformed(String),
}

impl Digest {
    /// Parses `sha256:<64 lower-case hex>`.
    pub fn parse(text: &str) -> Result<Digest, DigestError> {
        let (algorithm, hex) = text
            .split_once(':')
            .ok_or_else(|| DigestError::Malformed(text.to_owned()))?;
        if algorithm != "sha256" {
            return Err(DigestError::Algorithm(text.to_owned()));
        }
        let valid = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !valid {
            return Err(DigestError::Malformed(text.to_owned()));
        }
        Ok(Digest {
            hex: hex.to_owned(),
        })
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    /// The digest a finished hasher computed.
    pub(crate) fn from_hasher(hasher: Sha256) -> Digest {
        Digest::from_bytes(&hasher.finalize().into())
    }

    /// The digest whose 32 bytes are `bytes`.
    fn from_bytes(bytes: &[u8; 32]) -> Digest {
        Digest { hex: hex(bytes) }
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]])
        .map(char::from)
        .collect()
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl std::str::FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prints_and_hashes() {
        let empty = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(Digest::of(b"").to_string(), empty);
        assert_eq!(Digest::parse(empty).unwrap(), Digest::of(b""));
        assert_eq!(Digest::of(b"").hex().len(), 64);
    }

    #[test]
    fn refuses_other_algorithms_and_malformed_digests() {
        assert!(matches!(
            Digest::parse("sha512:abcd"),
            Err(DigestError::Algorithm(_))
        ));
        for bad in [
            "sha256",
            "sha256:",
            "sha256:ABC",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha256:{}", "0".repeat(63)),
            &format!("sha256:../{}", "0".repeat(61)),
        ] {
            assert!(
                matches!(Digest::parse(bad), Err(DigestError::Malformed(_))),
                "{bad}"
            );
        }
    }
}
