//! The inner container's root filesystem at start.
//!
//! Owns: `<state_dir>/container/`: an overlay of the image's read-only layer directories plus
//! a fresh, empty upper directory each start (changes outside mounts do not persist, as with
//! the Go envbox's fresh container per start), mounted at `merged/`; or, where overlayfs is
//! not usable (the volume is itself overlayfs, the kernel refuses), a flattened copy in
//! `rootfs/`, which is slower and said so (made afresh each start, so no start waits for its
//! write-back). The layer directories show the image as its layers say stacked in any case:
//! each was applied onto the view of the layers below it (see `crate::unpack`). Leftovers of a
//! previous start (a mount still there after a kill -9, an old upper dir, an old copy) are
//! cleared first; which layer directories a mounted overlay uses is read back from its lower
//! links ([`layers_in_use`]). It never changes a layer directory, and neither can the overlay:
//! its lower dirs are reached through a read-only bind mount of the layer store (`lower/`),
//! since a published layer may be shared by every workspace of a node (`crate::nodecache`).

use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::unpack::{self, Durability, LayerSource, Limits, UnpackError};

/// How the rootfs was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootfsKind {
    /// An overlay mount of the layer directories.
    Overlay,
    /// A flattened copy of the layers.
    Flattened,
}

/// Which way to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Overlay, falling back to a flattened copy when the kernel refuses.
    Auto,
    /// Always a flattened copy.
    Flatten,
}

/// An assembled root filesystem.
#[derive(Debug, Clone)]
pub struct Rootfs {
    /// The root filesystem directory.
    pub path: PathBuf,
    /// How it was made.
    pub kind: RootfsKind,
    /// Why a flattened copy was used, for the log.
    pub warnings: Vec<String>,
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message documents it
pub enum OverlayError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("flattening the image into {path}: {source}")]
    Flatten { path: PathBuf, source: UnpackError },
    #[error(transparent)]
    MountInfo(#[from] crate::mountinfo::MountInfoError),
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> OverlayError + 'a {
    move |source| OverlayError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

struct Layout {
    root: PathBuf,
    /// The read-only view of the layer store the lower links lead into.
    view: PathBuf,
    /// The layer store the view shows (written when the view is mounted).
    view_source: PathBuf,
    lower_links: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    merged: PathBuf,
    flat: PathBuf,
}

impl Layout {
    fn new(state_dir: &Path) -> Layout {
        Layout::at(crate::volume::VolumeLayout::new(state_dir).container())
    }

    /// The layout under `root` (`<state_dir>/container`).
    fn at(root: PathBuf) -> Layout {
        Layout {
            view: root.join("lower"),
            view_source: root.join("lower.source"),
            lower_links: root.join("l"),
            upper: root.join("upper"),
            work: root.join("work"),
            merged: root.join("merged"),
            flat: root.join("rootfs"),
            root,
        }
    }
}

/// Unmounts `path` if something is mounted there (lazily: a kill -9'd start may have left it).
fn unmount_if_mounted(path: &Path) -> Result<(), OverlayError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(io("unmounting a previous rootfs at", path)(e.into())),
    }
}

fn remove_all(path: &Path) -> Result<(), OverlayError> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing", path)(e)),
        _ => Ok(()),
    }
}

/// Clears what a previous start left.
fn clear(layout: &Layout) -> Result<(), OverlayError> {
    unmount_if_mounted(&layout.merged)?;
    unmount_if_mounted(&layout.view)?;
    for dir in [
        &layout.upper,
        &layout.work,
        &layout.flat,
        &layout.lower_links,
    ] {
        remove_all(dir)?;
    }
    Ok(())
}

fn mkdir(path: &Path) -> Result<(), OverlayError> {
    std::fs::create_dir_all(path).map_err(io("creating", path))
}

/// Mounts the layer store holding `layer_dirs` (all in one directory, as the layer store keeps
/// them) read-only at `view/`; the layer directories as seen through it.
fn mount_view(layout: &Layout, layer_dirs: &[PathBuf]) -> Result<Vec<PathBuf>, OverlayError> {
    let Some(store) = layer_dirs.first().and_then(|d| d.parent()) else {
        return Ok(Vec::new());
    };
    let mut seen = Vec::with_capacity(layer_dirs.len());
    for dir in layer_dirs {
        match (dir.parent(), dir.file_name()) {
            (Some(parent), Some(name)) if parent == store => seen.push(layout.view.join(name)),
            _ => {
                return Err(io("viewing read-only", dir)(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("not in the layer store {}", store.display()),
                )))
            }
        }
    }
    mkdir(&layout.view)?;
    std::fs::write(&layout.view_source, store.as_os_str().as_encoded_bytes())
        .map_err(io("writing", &layout.view_source))?;
    let view = &layout.view;
    mount(
        Some(store),
        view,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| io("bind-mounting the layer store at", view)(e.into()))?;
    let read_only = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    if let Err(e) = mount(None::<&str>, view, None::<&str>, read_only, None::<&str>) {
        unmount_if_mounted(view)?;
        return Err(io("making read-only the layer store's view at", view)(
            e.into(),
        ));
    }
    Ok(seen)
}

/// Short names for the layer directories, so the mount options stay far below the page-size
/// limit however many layers the image has (the trick containerd and Docker use too).
fn lower_option(layout: &Layout, layer_dirs: &[PathBuf]) -> Result<String, OverlayError> {
    mkdir(&layout.lower_links)?;
    let mut lowers = Vec::with_capacity(layer_dirs.len());
    // overlayfs wants the top-most layer first.
    for (i, dir) in layer_dirs.iter().rev().enumerate() {
        let link = layout.lower_links.join(i.to_string());
        std::os::unix::fs::symlink(dir, &link).map_err(io("linking a layer at", &link))?;
        lowers.push(link.display().to_string());
    }
    Ok(lowers.join(":"))
}

fn try_overlay(layout: &Layout, layer_dirs: &[PathBuf]) -> Result<Result<(), Errno>, OverlayError> {
    for dir in [&layout.upper, &layout.work, &layout.merged] {
        mkdir(dir)?;
    }
    // The merged root takes the upper dir's owner and mode: root of the workspace, shifted, so
    // the runtime (as root in the user namespace) can create mount points such as `/proc`.
    let shifted = Some(crate::image::ID_SHIFT);
    std::os::unix::fs::chown(&layout.upper, shifted, shifted)
        .map_err(io("changing the owner of", &layout.upper))?;
    std::fs::set_permissions(
        &layout.upper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .map_err(io("setting the mode of", &layout.upper))?;
    let seen = mount_view(layout, layer_dirs)?;
    let lower = lower_option(layout, &seen)?;
    let options = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        layout.upper.display(),
        layout.work.display()
    );
    let mounted = mount(
        Some("overlay"),
        &layout.merged,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    );
    if mounted.is_err() {
        unmount_if_mounted(&layout.view)?;
    }
    Ok(mounted)
}

/// The layer directories a mounted overlay rootfs under `state_dir` uses (whichever process
/// mounted it, alive or not): empty when no overlay is mounted at `merged/` in this mount
/// namespace. What a cleanup must never remove (`crate::prune`).
pub fn layers_in_use(state_dir: &Path) -> Result<Vec<PathBuf>, OverlayError> {
    let layout = Layout::new(state_dir);
    let merged = std::fs::canonicalize(&layout.merged).unwrap_or(layout.merged.clone());
    let table = crate::mountinfo::MountTable::read_self()?;
    if !table
        .entries
        .iter()
        .any(|m| m.mount_point == merged && m.fs_type == "overlay")
    {
        return Ok(Vec::new());
    }
    // An overlay mounted before the view existed links to the layer directories themselves.
    let store = match std::fs::read(&layout.view_source) {
        Ok(source) => Some(PathBuf::from(std::ffi::OsString::from_vec(source))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io("reading", &layout.view_source)(e)),
    };
    let mut dirs = Vec::new();
    let entries =
        std::fs::read_dir(&layout.lower_links).map_err(io("listing", &layout.lower_links))?;
    for entry in entries {
        let link = entry.map_err(io("listing", &layout.lower_links))?.path();
        let seen = std::fs::read_link(&link).map_err(io("reading the link", &link))?;
        // Through the view: the same name in the store.
        let dir = match (&store, seen.strip_prefix(&layout.view)) {
            (Some(store), Ok(name)) => store.join(name),
            _ => seen,
        };
        dirs.push(dir);
    }
    Ok(dirs)
}

/// Whether the state dir at `state_dir` is itself on overlayfs. Its upper and work dirs cannot
/// be there, and its layer directories cannot hold the overlay whiteouts their layers need
/// (overlayfs refuses to create them): such a volume gets no layer directories, and each start
/// a flattened copy made from the blobs. A filesystem that cannot be checked counts as not.
pub fn on_overlayfs(state_dir: &Path) -> bool {
    nix::sys::statfs::statfs(state_dir)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::OVERLAYFS_SUPER_MAGIC)
}

/// Assembles the rootfs for a start from the layers (bottom first).
pub fn assemble(
    state_dir: &Path,
    sources: &[LayerSource],
    layer_dirs: &[PathBuf],
    mode: Mode,
    limits: &Limits,
) -> Result<Rootfs, OverlayError> {
    let layout = Layout::new(state_dir);
    clear(&layout)?;
    mkdir(&layout.root)?;
    let mut warnings = Vec::new();
    if mode == Mode::Auto && on_overlayfs(state_dir) {
        warnings.push(format!(
            "{} is on overlayfs, which can be neither an overlay's upper dir nor hold the layers' whiteouts: using a flattened copy of the image; start-up will be slower (a volume on another filesystem avoids it)",
            state_dir.display()
        ));
    } else if mode == Mode::Auto {
        match try_overlay(&layout, layer_dirs)? {
            Ok(()) => {
                return Ok(Rootfs {
                    path: layout.merged,
                    kind: RootfsKind::Overlay,
                    warnings,
                })
            }
            Err(errno) => {
                warnings.push(format!(
                    "overlayfs cannot be used here ({errno}: {} is perhaps itself on overlayfs): using a flattened copy of the image; start-up will be slower",
                    layout.root.display()
                ));
                clear(&layout)?;
            }
        }
    }
    // Cleared by every start, so no start waits for its write-back.
    let report =
        unpack::flatten(sources, &layout.flat, limits, Durability::Scratch).map_err(|source| {
            OverlayError::Flatten {
                path: layout.flat.clone(),
                source,
            }
        })?;
    warnings.extend(report.warnings);
    Ok(Rootfs {
        path: layout.flat,
        kind: RootfsKind::Flattened,
        warnings,
    })
}

/// Undoes [`assemble`]'s mount (the upper dir is cleared by the next start).
pub fn release(rootfs: &Rootfs) -> Result<(), OverlayError> {
    match rootfs.kind {
        RootfsKind::Overlay => {
            unmount_if_mounted(&rootfs.path)?;
            // The overlay is mounted at the layout's `merged/`.
            let root = rootfs.path.parent().unwrap_or(&rootfs.path);
            unmount_if_mounted(&Layout::at(root.to_owned()).view)
        }
        RootfsKind::Flattened => Ok(()),
    }
}
