//! Which manifest of an image index this node runs.
//!
//! Owns: this node's platform (`linux/amd64`, `linux/arm64/v8`, ...) and choosing the index entry
//! for it: same OS and architecture, and the same variant or none (an arm64 entry without a
//! variant is `v8`). No silent fallback: when nothing matches, the error lists what the image
//! offers. It never fetches anything.

use super::manifest::Descriptor;

/// An OS/architecture/variant triple in OCI terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// The OS (`linux`).
    pub os: String,
    /// The CPU architecture (`amd64`, `arm64`, ...).
    pub architecture: String,
    /// The architecture variant (`v8`), if any.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of this machine.
    pub(crate) fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            other => (other, None),
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: variant.map(str::to_owned),
        }
    }

    fn variant_matches(&self, offered: Option<&str>) -> bool {
        let implied = |arch: &str, v: Option<&str>| match (arch, v) {
            ("arm64", None) => Some("v8".to_owned()),
            (_, v) => v.map(str::to_owned),
        };
        let wanted = implied(&self.architecture, self.variant.as_deref());
        let offered = implied(&self.architecture, offered);
        offered.is_none() || offered == wanted
    }

    /// True when an entry for `os/architecture/variant` runs here.
    pub(crate) fn accepts(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        os == self.os && architecture == self.architecture && self.variant_matches(variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// How an index entry is named in messages: its platform, or its digest when it states none.
pub(crate) fn describe(entry: &Descriptor) -> String {
    match &entry.platform {
        Some(p) => Platform {
            os: p.os.clone(),
            architecture: p.architecture.clone(),
            variant: p.variant.clone(),
        }
        .to_string(),
        None => format!("a manifest without a platform ({})", entry.digest),
    }
}

/// The entry for `wanted`, or the list of platforms offered.
pub(crate) fn choose<'a>(
    entries: &'a [Descriptor],
    wanted: &Platform,
) -> Result<&'a Descriptor, Vec<String>> {
    entries
        .iter()
        .find(|e| {
            e.platform
                .as_ref()
                .is_some_and(|p| wanted.accepts(&p.os, &p.architecture, p.variant.as_deref()))
        })
        .ok_or_else(|| entries.iter().map(describe).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(platforms: &[(&str, &str, Option<&str>)]) -> Vec<Descriptor> {
        let manifests: Vec<serde_json::Value> = platforms
            .iter()
            .enumerate()
            .map(|(i, (os, arch, variant))| {
                let mut p = serde_json::json!({"os": os, "architecture": arch});
                if let Some(v) = variant {
                    p["variant"] = (*v).into();
                }
                serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": format!("sha256:{}", i.to_string().repeat(64)), "size": 1, "platform": p})
            })
            .collect();
        serde_json::from_value(serde_json::Value::Array(manifests)).unwrap()
    }

    fn linux(arch: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.map(Into::into),
        }
    }

    #[test]
    fn picks_the_matching_entry() {
        let entries = index(&[
            ("linux", "arm64", Some("v8")),
            ("linux", "amd64", None),
            ("unknown", "unknown", None),
        ]);
        assert_eq!(
            choose(&entries, &linux("amd64", None)).unwrap().digest,
            entries[1].digest
        );
        assert_eq!(
            choose(&entries, &linux("arm64", Some("v8")))
                .unwrap()
                .digest,
            entries[0].digest
        );
    }

    #[test]
    fn arm64_without_variant_is_v8() {
        let entries = index(&[("linux", "arm64", None)]);
        assert!(choose(&entries, &linux("arm64", Some("v8"))).is_ok());
        let v7 = index(&[("linux", "arm", Some("v6"))]);
        assert!(choose(&v7, &linux("arm", Some("v7"))).is_err());
    }

    #[test]
    fn no_match_lists_what_is_offered() {
        let entries = index(&[("linux", "arm64", Some("v8")), ("windows", "amd64", None)]);
        let offered = choose(&entries, &linux("amd64", None)).unwrap_err();
        assert_eq!(offered, ["linux/arm64/v8", "windows/amd64"]);
    }
}
