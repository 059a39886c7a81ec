//! The pure GPU plan: devices, mount-table binds, `/proc` unmounts, variables, and (through
//! [`super::libs`]) the libraries.
//!
//! Owns: turning a [`GpuInventory`] and the outer mount table into a deterministic [`GpuPlan`].
//! It never touches the filesystem, the environment or the clock: same input, same output.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::mountinfo::{MountEntry, MountTable};

use super::libs;
use super::names::is_gpu_mount_point;
use super::paths::normalize;
use super::{GpuDevice, GpuInventory, GpuMount, GpuPlan};

/// GPU mount-table entries under here are unmounted, not bound.
const PROC: &str = "/proc";
/// GPU mount-table entries under here are skipped: device nodes come from the `/dev` scan.
const DEV: &str = "/dev";

pub(super) fn plan(inventory: &GpuInventory, mounts: &MountTable, inner_lib_dir: &Path) -> GpuPlan {
    let usr_lib_dir = normalize(&inventory.usr_lib_dir);
    let table = table_mounts(mounts, &usr_lib_dir);
    let bound: Vec<PathBuf> = table.binds.iter().map(|m| m.destination.clone()).collect();
    let libs = libs::plan(&libs::Context {
        usr_lib_dir: &usr_lib_dir,
        inner_lib_dir: &normalize(inner_lib_dir),
        entries: &inventory.usr_lib,
        mounts,
        bound: &bound,
    });
    let mut all_mounts = table.binds;
    all_mounts.extend(libs.mounts);
    all_mounts.sort_by(|a, b| a.destination.cmp(&b.destination));
    GpuPlan {
        devices: devices(inventory),
        mounts: all_mounts,
        symlinks: libs.symlinks,
        env: inventory.env.clone(),
        proc_unmounts: table.proc_unmounts,
        warnings: libs.warnings,
    }
}

fn devices(inventory: &GpuInventory) -> Vec<GpuDevice> {
    let mut devices: Vec<GpuDevice> = inventory
        .devices
        .iter()
        .map(|node| GpuDevice {
            path: node.path.clone(),
            major: node.major,
            minor: node.minor,
        })
        .collect();
    devices.sort_by(|a, b| a.path.cmp(&b.path));
    devices
}

/// What the GPU entries of the mount table become.
#[derive(Debug, Default)]
struct TableMounts {
    binds: Vec<GpuMount>,
    proc_unmounts: Vec<PathBuf>,
}

/// GPU mount-table entries, one per mount point (the last, as in [`MountTable::containing`]):
/// `/proc` ones to unmount, `/dev` ones and those in the usr-lib dir skipped, the rest bound.
fn table_mounts(mounts: &MountTable, usr_lib_dir: &Path) -> TableMounts {
    let mut latest: BTreeMap<&Path, &MountEntry> = BTreeMap::new();
    for entry in &mounts.entries {
        if is_gpu_mount_point(&entry.mount_point) {
            latest.insert(&entry.mount_point, entry);
        }
    }
    let mut table = TableMounts::default();
    for (mount_point, entry) in latest {
        if mount_point.starts_with(PROC) {
            table.proc_unmounts.push(mount_point.to_path_buf());
        } else if !mount_point.starts_with(DEV) && !mount_point.starts_with(usr_lib_dir) {
            table.binds.push(same_path_bind(entry));
        }
    }
    table
        .proc_unmounts
        .sort_by_key(|path| (Reverse(path.components().count()), Reverse(path.clone())));
    table
}

/// A bind of a mount-table entry at its own path, keeping read-only and the locked flags.
fn same_path_bind(entry: &MountEntry) -> GpuMount {
    let mut options = vec!["rbind".to_string()];
    if entry.is_read_only() {
        options.push("ro".to_string());
    }
    options.extend(entry.locked_flags().into_iter().map(str::to_string));
    GpuMount {
        source: entry.mount_point.clone(),
        destination: entry.mount_point.clone(),
        options,
    }
}
