//! Where GPU libraries go inside the inner container, from the image's os-release.
//!
//! Owns: the distribution-family table (Debian multiarch dir, Red Hat `lib64`, else `/usr/lib`).
//! It never reads the image (the caller passes the parsed os-release) and never handles the
//! `CODER_INNER_USR_LIB_DIR` override (the caller does).

use std::path::PathBuf;

use crate::rootfs::OsRelease;

const DEBIAN_FAMILY: [&str; 2] = ["debian", "ubuntu"];
const RED_HAT_FAMILY: [&str; 5] = ["fedora", "rhel", "centos", "rocky", "almalinux"];

/// The inner lib dir: `ID` decides first, then each `ID_LIKE` in order.
pub(super) fn lib_dir(os_release: Option<&OsRelease>, arch: &str) -> PathBuf {
    let family = os_release.and_then(|release| {
        std::iter::once(&release.id)
            .chain(&release.id_like)
            .find_map(|id| family_dir(id, arch))
    });
    family.unwrap_or_else(|| PathBuf::from("/usr/lib"))
}

fn family_dir(id: &str, arch: &str) -> Option<PathBuf> {
    let id = id.to_ascii_lowercase();
    if DEBIAN_FAMILY.contains(&id.as_str()) {
        Some(PathBuf::from(format!(
            "/usr/lib/{}-linux-gnu",
            multiarch_cpu(arch)
        )))
    } else if RED_HAT_FAMILY.contains(&id.as_str()) {
        Some(PathBuf::from("/usr/lib64"))
    } else {
        None
    }
}

/// The CPU part of the Debian multiarch triplet (`x86_64`, `aarch64`); Go/OCI spellings
/// (`amd64`, `arm64`) are accepted too, anything else is used as given.
fn multiarch_cpu(arch: &str) -> &str {
    match arch {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn release(id: &str, id_like: &[&str]) -> OsRelease {
        OsRelease {
            id: id.into(),
            id_like: id_like.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn debian_family_uses_the_multiarch_dir() {
        let ubuntu = release("ubuntu", &["debian"]);
        assert_eq!(
            lib_dir(Some(&ubuntu), "x86_64"),
            Path::new("/usr/lib/x86_64-linux-gnu")
        );
        assert_eq!(
            lib_dir(Some(&ubuntu), "aarch64"),
            Path::new("/usr/lib/aarch64-linux-gnu")
        );
        assert_eq!(
            lib_dir(Some(&ubuntu), "arm64"),
            Path::new("/usr/lib/aarch64-linux-gnu")
        );
        let mint = release("linuxmint", &["ubuntu", "debian"]);
        assert_eq!(
            lib_dir(Some(&mint), "x86_64"),
            Path::new("/usr/lib/x86_64-linux-gnu")
        );
    }

    #[test]
    fn red_hat_family_uses_lib64() {
        assert_eq!(
            lib_dir(Some(&release("rhel", &["fedora"])), "x86_64"),
            Path::new("/usr/lib64")
        );
        let rocky = release("rocky", &["rhel", "centos", "fedora"]);
        assert_eq!(lib_dir(Some(&rocky), "aarch64"), Path::new("/usr/lib64"));
        let ol = release("ol", &["FEDORA"]);
        assert_eq!(lib_dir(Some(&ol), "x86_64"), Path::new("/usr/lib64"));
    }

    #[test]
    fn id_wins_over_id_like_and_id_like_goes_in_order() {
        let odd = release("fedora", &["debian"]);
        assert_eq!(lib_dir(Some(&odd), "x86_64"), Path::new("/usr/lib64"));
        let both = release("custom", &["debian", "rhel"]);
        assert_eq!(
            lib_dir(Some(&both), "x86_64"),
            Path::new("/usr/lib/x86_64-linux-gnu")
        );
    }

    #[test]
    fn others_use_usr_lib() {
        assert_eq!(lib_dir(None, "x86_64"), Path::new("/usr/lib"));
        assert_eq!(
            lib_dir(Some(&release("alpine", &[])), "x86_64"),
            Path::new("/usr/lib")
        );
        assert_eq!(
            lib_dir(Some(&release("arch", &["archlinux"])), "x86_64"),
            Path::new("/usr/lib")
        );
    }
}
