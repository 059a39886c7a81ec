//! Reading the GPU inventory of the outer container: device nodes, the host usr-lib tree and
//! the NVIDIA variables.
//!
//! Owns: every filesystem read of GPU detection. Below the two roots it is given it uses `lstat`
//! and `readlink` only: it never follows a symlink (a symlink is never a device, a symlinked
//! directory is never descended), and it never creates, changes or opens anything for writing.

use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{major, minor};

use super::names::is_gpu_env_name;
use super::{DeviceNode, GpuError, LibEntry, LibEntryKind};

/// Top-level device nodes have names starting with this.
const DEVICE_PREFIX: &str = "nvidia";
/// Every character device in this subdirectory of `/dev` is taken.
const CAPS_DIR: &str = "nvidia-caps";
/// Permission bits of `st_mode`.
const PERMISSION_BITS: u32 = 0o777;

/// `dev_dir/nvidia*` and `dev_dir/nvidia-caps/*` character devices, sorted by path.
pub(super) fn devices(dev_dir: &Path) -> Result<Vec<DeviceNode>, GpuError> {
    let mut devices: Vec<DeviceNode> = read_dir_entries(dev_dir)
        .map_err(|source| devices_error(dev_dir, source))?
        .into_iter()
        .filter(|(name, _)| name.starts_with(DEVICE_PREFIX))
        .filter_map(|(_, path)| device_at(&path).transpose())
        .collect::<Result<_, _>>()?;
    devices.extend(caps_devices(&dev_dir.join(CAPS_DIR))?);
    devices.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(devices)
}

/// Every character device in the caps dir; none when it is missing or not a real directory.
fn caps_devices(caps_dir: &Path) -> Result<Vec<DeviceNode>, GpuError> {
    match fs::symlink_metadata(caps_dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Ok(Vec::new()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(devices_error(caps_dir, err)),
    }
    read_dir_entries(caps_dir)
        .map_err(|source| devices_error(caps_dir, source))?
        .into_iter()
        .filter_map(|(_, path)| device_at(&path).transpose())
        .collect()
}

/// The device node at `path`, or `None` when it is anything but a character device (or
/// vanished since the directory was listed).
fn device_at(path: &Path) -> Result<Option<DeviceNode>, GpuError> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(device_node(path, &meta)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(devices_error(path, err)),
    }
}

fn device_node(path: &Path, meta: &Metadata) -> Option<DeviceNode> {
    meta.file_type().is_char_device().then(|| DeviceNode {
        path: path.to_path_buf(),
        major: major(meta.rdev()),
        minor: minor(meta.rdev()),
        mode: meta.mode() & PERMISSION_BITS,
    })
}

fn devices_error(path: &Path, source: io::Error) -> GpuError {
    GpuError::Devices {
        path: path.to_path_buf(),
        source,
    }
}

/// (file name, path) of every entry of `dir`; names that are not UTF-8 are kept lossily for
/// the prefix test only.
fn read_dir_entries(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    fs::read_dir(dir)?
        .map(|entry| {
            let entry = entry?;
            Ok((
                entry.file_name().to_string_lossy().into_owned(),
                entry.path(),
            ))
        })
        .collect()
}

/// Every entry under `usr_lib_dir` at any depth, sorted by path. Symlinked directories are
/// recorded as symlinks and not descended.
pub(super) fn usr_lib(usr_lib_dir: &Path) -> Result<Vec<LibEntry>, GpuError> {
    let usr_lib_error = |source| GpuError::UsrLibDir {
        path: usr_lib_dir.to_path_buf(),
        source,
    };
    if !fs::metadata(usr_lib_dir).map_err(usr_lib_error)?.is_dir() {
        return Err(usr_lib_error(io::Error::from(io::ErrorKind::NotADirectory)));
    }
    let mut entries = Vec::new();
    let mut pending = vec![usr_lib_dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for (_, path) in read_dir_entries(&dir).map_err(|e| usr_lib_error_at(&dir, e))? {
            let kind = lib_entry_kind(&path)?;
            if kind == LibEntryKind::Dir {
                pending.push(path.clone());
            }
            entries.push(LibEntry { path, kind });
        }
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(entries)
}

fn lib_entry_kind(path: &Path) -> Result<LibEntryKind, GpuError> {
    let file_type = fs::symlink_metadata(path)
        .map_err(|e| usr_lib_error_at(path, e))?
        .file_type();
    Ok(if file_type.is_symlink() {
        LibEntryKind::Symlink(fs::read_link(path).map_err(|e| usr_lib_error_at(path, e))?)
    } else if file_type.is_dir() {
        LibEntryKind::Dir
    } else {
        LibEntryKind::File
    })
}

/// An error somewhere inside the tree: the path named is the one that failed.
fn usr_lib_error_at(path: &Path, source: io::Error) -> GpuError {
    GpuError::UsrLibDir {
        path: path.to_path_buf(),
        source,
    }
}

/// The variables whose name matches `(?i)nvidia`, in the given order.
pub(super) fn env(environ: &[(String, String)]) -> Vec<(String, String)> {
    environ
        .iter()
        .filter(|(name, _)| is_gpu_env_name(name))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_character_device_gives_its_numbers_and_mode() {
        let null = Path::new("/dev/null");
        let node = device_node(null, &fs::symlink_metadata(null).unwrap()).unwrap();
        assert_eq!((node.major, node.minor), (1, 3));
        assert_eq!(node.mode, 0o666);
        assert_eq!(node.path, null);
    }

    #[test]
    fn regular_files_directories_and_symlinks_are_not_devices() {
        let dev = tempfile::tempdir().unwrap();
        fs::write(dev.path().join("nvidia0"), "").unwrap();
        fs::create_dir(dev.path().join("nvidia-uvm")).unwrap();
        symlink("/dev/null", dev.path().join("nvidiactl")).unwrap();
        fs::create_dir(dev.path().join(CAPS_DIR)).unwrap();
        fs::write(dev.path().join(CAPS_DIR).join("nvidia-cap1"), "").unwrap();
        symlink("/dev/null", dev.path().join(CAPS_DIR).join("nvidia-cap2")).unwrap();
        assert_eq!(devices(dev.path()).unwrap(), vec![]);
    }

    #[test]
    fn missing_caps_dir_is_fine_but_a_missing_dev_dir_is_not() {
        let dev = tempfile::tempdir().unwrap();
        assert_eq!(devices(dev.path()).unwrap(), vec![]);
        let missing = dev.path().join("nope");
        assert!(
            matches!(devices(&missing), Err(GpuError::Devices { path, .. }) if path == missing)
        );
    }

    #[test]
    fn a_symlinked_caps_dir_is_not_followed() {
        let dev = tempfile::tempdir().unwrap();
        symlink("/dev", dev.path().join(CAPS_DIR)).unwrap();
        assert_eq!(devices(dev.path()).unwrap(), vec![]);
    }

    #[test]
    fn walks_without_following_symlinked_directories() {
        let root = tempfile::tempdir().unwrap();
        let lib = root.path();
        fs::create_dir_all(lib.join("sub/deeper")).unwrap();
        fs::write(lib.join("sub/deeper/libx.so"), "").unwrap();
        symlink("sub", lib.join("linked")).unwrap();
        symlink("/etc", lib.join("etc")).unwrap();
        let entries = usr_lib(lib).unwrap();
        let expected = vec![
            LibEntry {
                path: lib.join("etc"),
                kind: LibEntryKind::Symlink("/etc".into()),
            },
            LibEntry {
                path: lib.join("linked"),
                kind: LibEntryKind::Symlink("sub".into()),
            },
            LibEntry {
                path: lib.join("sub"),
                kind: LibEntryKind::Dir,
            },
            LibEntry {
                path: lib.join("sub/deeper"),
                kind: LibEntryKind::Dir,
            },
            LibEntry {
                path: lib.join("sub/deeper/libx.so"),
                kind: LibEntryKind::File,
            },
        ];
        assert_eq!(entries, expected);
    }

    #[test]
    fn a_missing_or_non_directory_usr_lib_dir_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let missing = root.path().join("missing");
        assert!(
            matches!(usr_lib(&missing), Err(GpuError::UsrLibDir { path, .. }) if path == missing)
        );
        let file = root.path().join("file");
        fs::write(&file, "").unwrap();
        assert!(matches!(usr_lib(&file), Err(GpuError::UsrLibDir { path, .. }) if path == file));
    }

    #[test]
    fn keeps_nvidia_variables_in_order() {
        let environ: Vec<(String, String)> = [
            ("PATH", "/bin"),
            ("NVIDIA_VISIBLE_DEVICES", "all"),
            ("OCL_ICD_FILENAMES", "libnvidia-opencl.so.1"),
            ("my_Nvidia_thing", "1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let names: Vec<_> = env(&environ).into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["NVIDIA_VISIBLE_DEVICES", "my_Nvidia_thing"]);
    }
}
