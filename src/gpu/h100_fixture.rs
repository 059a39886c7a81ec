//! Readers for the H100 host capture in `tests/fixtures/gpu-h100` (test builds only).
//!
//! Owns: turning the capture's text files into the inventory types, for the GPU tests and the
//! golden specs. The capture's host `/usr/lib` is moved to where the outer container has it.

use std::fs;
use std::path::{Path, PathBuf};

use super::{DeviceNode, GpuInventory, LibEntry, LibEntryKind};
use crate::mountinfo::MountTable;

pub(crate) const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gpu-h100");
/// Where the host's `/usr/lib` is mounted in the outer container in the fixture test.
pub(crate) const OUTER_USR_LIB: &str = "/var/coder/usr/lib";
pub(crate) fn fixture(name: &str) -> String {
    fs::read_to_string(Path::new(FIXTURES).join(name)).expect("read fixture")
}

/// `dev-stat.txt`: `%n %F %t:%T %a %u:%g`, major:minor in hex.
pub(crate) fn fixture_devices() -> Vec<DeviceNode> {
    let mut devices: Vec<DeviceNode> = fixture("dev-stat.txt")
        .lines()
        .filter(|line| line.contains(" character special file "))
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let n = fields.len();
            let (major, minor) = fields[n - 3].split_once(':').unwrap();
            DeviceNode {
                path: PathBuf::from(fields[0]),
                major: u64::from_str_radix(major, 16).unwrap(),
                minor: u64::from_str_radix(minor, 16).unwrap(),
                mode: u32::from_str_radix(fields[n - 2], 8).unwrap(),
            }
        })
        .collect();
    devices.sort_by(|a, b| a.path.cmp(&b.path));
    devices
}

/// `usr-lib-matches.txt`: `type mode path -> target`, host `/usr/lib` moved to where the
/// outer container has it; targets as written.
pub(crate) fn fixture_usr_lib() -> Vec<LibEntry> {
    let mut entries: Vec<LibEntry> = fixture("usr-lib-matches.txt")
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let (head, target) = line.split_once(" -> ").unwrap();
            let mut fields = head.splitn(3, ' ');
            let (kind, _mode, path) = (
                fields.next().unwrap(),
                fields.next(),
                fields.next().unwrap(),
            );
            let path = PathBuf::from(path.replacen("/usr/lib", OUTER_USR_LIB, 1));
            let kind = match kind {
                "f" => LibEntryKind::File,
                "d" => LibEntryKind::Dir,
                "l" => LibEntryKind::Symlink(PathBuf::from(target.trim_end())),
                other => panic!("entry type {other}"),
            };
            LibEntry { path, kind }
        })
        .collect();
    entries.push(LibEntry {
        path: PathBuf::from(OUTER_USR_LIB).join("x86_64-linux-gnu"),
        kind: LibEntryKind::Dir,
    });
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    entries
}

pub(crate) fn fixture_env() -> Vec<(String, String)> {
    fixture("env-nvidia.txt")
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The mount table of the capture.
pub(crate) fn fixture_mounts() -> MountTable {
    MountTable::parse(&fixture("mountinfo.txt")).expect("fixture mount table")
}

/// The inventory `scan` would have produced on that host (GPU variables only).
pub(crate) fn fixture_inventory() -> GpuInventory {
    GpuInventory {
        devices: fixture_devices(),
        usr_lib_dir: PathBuf::from(OUTER_USR_LIB),
        usr_lib: fixture_usr_lib(),
        env: super::scan::env(&fixture_env()),
    }
}
