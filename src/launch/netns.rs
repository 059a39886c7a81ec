//! A hold on the inner container's network namespace.
//!
//! Owns: an open file on `/proc/<init pid>/ns/net`, which keeps the namespace alive after the
//! init exits, so CNI DEL can still enter it and remove its interface and NAT rules (run
//! against a namespace that is gone, DEL leaks the masquerade rules). The plugins are given
//! `/proc/<envbox pid>/fd/<n>`. It never creates or mounts namespaces.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// An open network namespace.
#[derive(Debug)]
pub(crate) struct NetnsHold {
    file: File,
}

impl NetnsHold {
    /// Holds the network namespace of process `pid`.
    pub(crate) fn of_pid(pid: u32) -> std::io::Result<NetnsHold> {
        Ok(NetnsHold {
            file: File::open(format!("/proc/{pid}/ns/net"))?,
        })
    }

    /// A path to the namespace that stays valid while this hold lives.
    pub(crate) fn path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.file.as_raw_fd()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_held_path_names_the_same_namespace() {
        let hold = NetnsHold::of_pid(std::process::id()).unwrap();
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        assert_eq!(std::fs::read_link(hold.path()).unwrap(), ours);
    }
}
