//! The run dir (`ENVBOX_RUN_DIR`): every path a start creates under it, and their removal once
//! the workspace has stopped.
//!
//! Owns: the names under the run dir, and clearing them. It removes only the entries it names,
//! never crosses a mount point (a still-mounted rootfs under containerd's state would lead into
//! the volume) and never touches the state on the volume.

use std::path::{Path, PathBuf};

use crate::mountinfo::MountTable;

/// The entries of the run dir a start creates, in the order they are removed.
const ENTRIES: [&str; 7] = ["io", "etc", CNI, "runtime", "containerd", INIT_LOG, LOGS];
const CNI: &str = "cni";
/// The logs: the workspace init's output, and the daemons' logs.
const INIT_LOG: &str = "init.log";
const LOGS: &str = "log";

/// What a clear leaves in place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keep {
    /// The init's output and the daemons' logs (after a failure, for whoever looks into it).
    pub logs: bool,
    /// The CNI state (an attachment whose DEL failed: the next start releases it from there).
    pub cni: bool,
}

/// Paths under one run dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLayout {
    root: PathBuf,
}

/// Why an entry of the run dir was left in place.
#[derive(Debug, thiserror::Error)]
pub enum ClearError {
    #[error("left {path}: {mount} is still mounted under it")]
    Mounted { path: PathBuf, mount: PathBuf },
    #[error("removing {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading the mount table to clear {path}: {source}")]
    MountTable {
        path: PathBuf,
        source: crate::mountinfo::MountInfoError,
    },
}

impl RunLayout {
    pub fn new(root: &Path) -> RunLayout {
        RunLayout {
            root: root.to_owned(),
        }
    }

    /// The run dir itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Generated `/etc` files (hosts, hostname, resolv.conf) bound into the workspace.
    pub fn etc(&self) -> PathBuf {
        self.root.join("etc")
    }

    /// containerd's config, sockets and per-boot state.
    pub fn containerd(&self) -> PathBuf {
        self.root.join("containerd")
    }

    /// The supervised daemons' logs.
    pub fn logs(&self) -> PathBuf {
        self.root.join(LOGS)
    }

    /// The CNI plugins' state (leases) and the cached attachment.
    pub fn cni(&self) -> PathBuf {
        self.root.join(CNI)
    }

    /// The workspace init's output.
    pub fn init_log(&self) -> PathBuf {
        self.root.join(INIT_LOG)
    }

    /// FIFOs of the processes executed in the workspace.
    pub fn exec_io(&self) -> PathBuf {
        self.root.join("io")
    }

    /// The OCI runtime's state root.
    pub fn runtime_root(&self) -> PathBuf {
        self.root.join("runtime")
    }

    /// Removes every entry a start creates but those `keep` names, and the run dir itself when
    /// `remove_root` and nothing else is left in it. An entry with a mount point at or below it
    /// is left (and named in the errors); the others are removed anyway.
    pub fn clear(&self, keep: Keep, remove_root: bool) -> Vec<ClearError> {
        let mounts = match MountTable::read_self() {
            Ok(table) => table,
            Err(source) => {
                return vec![ClearError::MountTable {
                    path: self.root.clone(),
                    source,
                }]
            }
        };
        let mut errors = Vec::new();
        for name in ENTRIES {
            if (keep.logs && (name == LOGS || name == INIT_LOG)) || (keep.cni && name == CNI) {
                continue;
            }
            let path = self.root.join(name);
            if let Some(mount) = mounts
                .entries
                .iter()
                .find(|m| m.mount_point.starts_with(&path))
            {
                errors.push(ClearError::Mounted {
                    path,
                    mount: mount.mount_point.clone(),
                });
                continue;
            }
            let removed = match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&path),
                Ok(_) => std::fs::remove_file(&path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(source) = removed {
                errors.push(ClearError::Remove { path, source });
            }
        }
        if remove_root && errors.is_empty() {
            // Fails, as it should, when something envbox did not make is in it (or kept logs).
            let _ = std::fs::remove_dir(&self.root);
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn populated() -> (tempfile::TempDir, RunLayout) {
        let dir = tempfile::tempdir().unwrap();
        let run = RunLayout::new(&dir.path().join("run"));
        for path in [
            run.etc(),
            run.containerd().join("state/io.containerd.runtime.v2.task"),
            run.logs(),
            run.cni().join("ipam/envbox"),
            run.exec_io(),
            run.runtime_root().join("envbox"),
        ] {
            std::fs::create_dir_all(path).unwrap();
        }
        std::fs::write(run.etc().join("hosts"), "127.0.0.1 localhost\n").unwrap();
        std::fs::write(run.logs().join("containerd.log"), "log\n").unwrap();
        std::fs::write(run.init_log(), "").unwrap();
        std::os::unix::net::UnixListener::bind(run.containerd().join("containerd.sock.ttrpc"))
            .unwrap();
        (dir, run)
    }

    #[test]
    fn a_clear_removes_every_entry_and_the_root_it_made() {
        let (_dir, run) = populated();
        assert!(run.clear(Keep::default(), true).is_empty());
        assert!(!run.root().exists());
    }

    #[test]
    fn logs_and_cni_state_can_be_kept_and_an_unknown_entry_is_never_touched() {
        let (_dir, run) = populated();
        std::fs::write(run.root().join("not-ours"), "x").unwrap();
        let keep = Keep {
            logs: true,
            cni: true,
        };
        assert!(run.clear(keep, true).is_empty());
        let mut left: Vec<_> = std::fs::read_dir(run.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["cni", "init.log", "log", "not-ours"]);
        assert!(run.logs().join("containerd.log").is_file());
    }

    /// A rootfs still mounted under containerd's state leads into the volume: never followed.
    #[test]
    fn an_entry_with_a_mount_under_it_is_left_whole() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs the unit tests as root"
            );
            eprintln!("skipped: bind mounts need root");
            return;
        }
        let (dir, run) = populated();
        let volume = dir.path().join("volume");
        std::fs::create_dir_all(&volume).unwrap();
        std::fs::write(volume.join("precious"), "data").unwrap();
        let mount_point = run.containerd().join("state/rootfs");
        std::fs::create_dir_all(&mount_point).unwrap();
        nix::mount::mount(
            Some(&volume),
            &mount_point,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        let errors = run.clear(Keep::default(), true);
        let unmounted = nix::mount::umount(&mount_point);
        assert!(
            matches!(&errors[..], [ClearError::Mounted { path, mount }]
                if *path == run.containerd() && *mount == mount_point),
            "{errors:?}"
        );
        unmounted.unwrap();
        assert!(volume.join("precious").is_file());
        assert!(run.containerd().exists() && !run.etc().exists() && !run.logs().exists());
    }

    #[test]
    fn a_root_that_was_there_before_stays() {
        let (_dir, run) = populated();
        assert!(run.clear(Keep::default(), false).is_empty());
        assert_eq!(std::fs::read_dir(run.root()).unwrap().count(), 0);
    }
}
