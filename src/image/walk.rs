//! Choosing this node's image manifest in an image index, through nested indexes.
//!
//! Owns: [`Walk`], a pure state machine over an index's entries, depth-first in document order
//! (containerd's order): an entry for this platform is chosen; a nested index (OCI allows
//! index -> index -> manifest) is asked for and walked in turn, at most [`MAX_DEPTH`] levels
//! deep; attestation manifests (buildkit's `unknown/unknown` entries) are no images and are
//! skipped; a manifest entry without a platform is chosen only when nothing else matches (its
//! config says its platform, which `describe` checks). When nothing matches, the error names
//! every platform offered at every level. The caller fetches what the walk asks for (registry
//! or layout): it never fetches anything itself.

use super::describe::{self, malformed, Target};
use super::manifest::{self, Descriptor, ImageIndex, Manifest};
use super::{platform, ImageError, Platform};

/// Deepest nesting of image indexes followed (the top index is level 1).
pub(crate) const MAX_DEPTH: usize = 4;

/// Marks buildkit's attestation manifests in an index (`vnd.docker.reference.type`).
const REFERENCE_TYPE: &str = "vnd.docker.reference.type";

/// What the walk needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// A nested index: hand its bytes to [`Walk::index`].
    Index(Target),
    /// The image manifest chosen for this platform (`describe::entry_manifest` reads it).
    Manifest(Target),
}

/// The walk through an index and the indexes it nests.
pub(crate) struct Walk {
    wanted: Platform,
    reference: String,
    /// Entries left at each level, innermost last (reversed: the next is popped).
    levels: Vec<Vec<Descriptor>>,
    /// What the indexes offer, in order, each once.
    offered: Vec<String>,
    /// The first manifest entry without a platform.
    fallback: Option<Target>,
}

fn is_index(media_type: &str) -> bool {
    media_type == manifest::OCI_INDEX || media_type == manifest::DOCKER_LIST
}

fn is_attestation(entry: &Descriptor) -> bool {
    entry
        .annotations
        .as_ref()
        .and_then(|a| a.get(REFERENCE_TYPE))
        .is_some_and(|kind| kind == "attestation-manifest")
}

impl Walk {
    /// A walk of `index`, the top-level index `reference` names.
    pub(crate) fn new(index: ImageIndex, wanted: &Platform, reference: &str) -> Walk {
        let mut walk = Walk {
            wanted: wanted.clone(),
            reference: reference.to_owned(),
            levels: Vec::new(),
            offered: Vec::new(),
            fallback: None,
        };
        walk.push(index);
        walk
    }

    fn push(&mut self, index: ImageIndex) {
        let mut entries = index.manifests;
        entries.reverse();
        self.levels.push(entries);
    }

    fn offer(&mut self, what: String) {
        if !self.offered.contains(&what) {
            self.offered.push(what);
        }
    }

    /// The next step; once every entry is seen without a match, the platform-less manifest
    /// if there was one, else [`ImageError::NoMatchingPlatform`] listing what is offered.
    pub(crate) fn next(&mut self) -> Result<Next, ImageError> {
        while let Some(level) = self.levels.last_mut() {
            let Some(entry) = level.pop() else {
                self.levels.pop();
                continue;
            };
            if is_attestation(&entry) {
                continue;
            }
            let accepted = entry.platform.as_ref().map(|p| {
                self.wanted
                    .accepts(&p.os, &p.architecture, p.variant.as_deref())
            });
            if is_index(&entry.media_type) {
                if accepted == Some(false) {
                    self.offer(platform::describe(&entry));
                    continue;
                }
                if self.levels.len() >= MAX_DEPTH {
                    return Err(malformed(
                        &self.reference,
                        format!(
                            "image index {} nests indexes more than {MAX_DEPTH} levels deep",
                            entry.digest
                        ),
                    ));
                }
                return Ok(Next::Index(describe::target(&entry, &self.reference)?));
            }
            match accepted {
                Some(true) => {
                    return Ok(Next::Manifest(describe::target(&entry, &self.reference)?))
                }
                Some(false) => self.offer(platform::describe(&entry)),
                None => {
                    self.offer(platform::describe(&entry));
                    if self.fallback.is_none() {
                        self.fallback = Some(describe::target(&entry, &self.reference)?);
                    }
                }
            }
        }
        match self.fallback.take() {
            Some(target) => Ok(Next::Manifest(target)),
            None => Err(ImageError::NoMatchingPlatform {
                reference: self.reference.clone(),
                wanted: self.wanted.to_string(),
                offered: std::mem::take(&mut self.offered),
            }),
        }
    }

    /// The bytes of the nested index `target` that [`Walk::next`] asked for.
    pub(crate) fn index(&mut self, target: &Target, bytes: &[u8]) -> Result<(), ImageError> {
        describe::check_length(bytes, target, &self.reference)?;
        match manifest::parse(bytes, Some(&target.media_type), &self.reference)? {
            Manifest::Index(index) => {
                self.push(index);
                Ok(())
            }
            Manifest::Image(_) => Err(malformed(
                &self.reference,
                format!(
                    "index entry {} says it is an index but is an image manifest",
                    target.digest
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    fn entry(media_type: &str, name: &str, platform: Option<(&str, &str)>) -> serde_json::Value {
        let mut e = serde_json::json!({"mediaType": media_type,
            "digest": Digest::of(name.as_bytes()).to_string(), "size": 10});
        if let Some((os, arch)) = platform {
            e["platform"] = serde_json::json!({"os": os, "architecture": arch});
        }
        e
    }

    fn index(entries: Vec<serde_json::Value>) -> ImageIndex {
        serde_json::from_value(serde_json::json!({"schemaVersion": 2, "manifests": entries}))
            .unwrap()
    }

    fn amd64() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }

    const M: &str = manifest::OCI_MANIFEST;
    const I: &str = manifest::OCI_INDEX;

    fn digest(name: &str) -> Digest {
        Digest::of(name.as_bytes())
    }

    #[test]
    fn nested_indexes_are_walked_in_document_order() {
        let mut walk = Walk::new(
            index(vec![
                entry(M, "arm", Some(("linux", "arm64"))),
                entry(I, "inner", None),
                entry(M, "late-amd64", Some(("linux", "amd64"))),
            ]),
            &amd64(),
            "r",
        );
        let Next::Index(inner) = walk.next().unwrap() else {
            panic!("the nested index is asked for first");
        };
        assert_eq!(inner.digest, digest("inner"));
        let inner_bytes = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2,
            "mediaType": I, "manifests": [entry(M, "amd64", Some(("linux", "amd64")))]}))
        .unwrap();
        // The size is checked against the entry's.
        assert!(walk.index(&inner, &inner_bytes).is_err());
        let inner = Target {
            size: inner_bytes.len() as u64,
            ..inner
        };
        walk.index(&inner, &inner_bytes).unwrap();
        assert_eq!(
            walk.next().unwrap(),
            Next::Manifest(
                describe::target(
                    &serde_json::from_value(entry(M, "amd64", Some(("linux", "amd64")))).unwrap(),
                    "r"
                )
                .unwrap()
            )
        );
    }

    #[test]
    fn no_match_names_every_platform_at_every_level() {
        let mut attestation = entry(M, "att", Some(("unknown", "unknown")));
        attestation["annotations"] = serde_json::json!({REFERENCE_TYPE: "attestation-manifest"});
        let mut walk = Walk::new(
            index(vec![
                entry(M, "arm", Some(("linux", "arm64"))),
                attestation,
                entry(I, "inner", None),
                entry(I, "windows", Some(("windows", "amd64"))),
            ]),
            &Platform {
                architecture: "s390x".into(),
                ..amd64()
            },
            "r",
        );
        let Next::Index(inner) = walk.next().unwrap() else {
            panic!("the nested index is asked for");
        };
        let bytes = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2,
            "manifests": [entry(M, "ppc", Some(("linux", "ppc64le"))), entry(M, "arm2", Some(("linux", "arm64")))]}))
        .unwrap();
        walk.index(
            &Target {
                size: bytes.len() as u64,
                ..inner
            },
            &bytes,
        )
        .unwrap();
        let err = walk.next().unwrap_err();
        match &err {
            ImageError::NoMatchingPlatform { offered, .. } => {
                assert_eq!(offered, &["linux/arm64", "linux/ppc64le", "windows/amd64"])
            }
            other => panic!("{other}"),
        }
        assert!(!err.to_string().contains("unknown"), "{err}");
    }

    #[test]
    fn a_manifest_without_platform_is_the_last_resort_and_depth_is_limited() {
        let mut walk = Walk::new(
            index(vec![
                entry(M, "plain", None),
                entry(M, "arm", Some(("linux", "arm64"))),
            ]),
            &amd64(),
            "r",
        );
        match walk.next().unwrap() {
            Next::Manifest(t) => assert_eq!(t.digest, digest("plain")),
            other => panic!("{other:?}"),
        }

        let nested = |name: &str| {
            serde_json::to_vec(
                &serde_json::json!({"schemaVersion": 2, "manifests": [entry(I, name, None)]}),
            )
            .unwrap()
        };
        let mut walk = Walk::new(index(vec![entry(I, "1", None)]), &amd64(), "r");
        let mut levels = 1;
        let err = loop {
            match walk.next() {
                Ok(Next::Index(t)) => {
                    levels += 1;
                    let bytes = nested(&levels.to_string());
                    walk.index(
                        &Target {
                            size: bytes.len() as u64,
                            ..t
                        },
                        &bytes,
                    )
                    .unwrap();
                }
                Ok(other) => panic!("{other:?}"),
                Err(e) => break e,
            }
        };
        assert_eq!(levels, MAX_DEPTH, "{err}");
        assert!(err.to_string().contains("more than 4 levels deep"), "{err}");
    }
}
