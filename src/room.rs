//! Room on the volume: what an image needs, what is free, and a full volume told as such.
//!
//! Owns: the estimate of what an image still needs on the volume ([`Need`]: its blobs still to
//! download plus their unpacked size, estimated from the compressed size), the free space of the
//! state dir's filesystem (`statvfs`), telling a full volume apart from other failures by the
//! error's kind (`io::ErrorKind::StorageFull`, or raw `ENOSPC`, anywhere in a typed error's
//! chain: never by its text), [`VolumeFull`], the error that says which volume, how much is
//! needed and free, and what to do, and the warning at start when the volume is nearly full and
//! the workspace's own Docker (and Podman) data on it is part of why ([`nearly_full`]). It
//! removes nothing (`crate::prune` does) and never retries.

use std::io;
use std::path::{Path, PathBuf};

use crate::config::names;
use crate::image::PulledLayer;
use crate::unpack::LayerStore;

/// How many times its compressed size a compressed layer is estimated to take once unpacked
/// (file system overhead included).
const UNPACKED_PER_COMPRESSED: u64 = 3;

/// What an image still needs on the volume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Need {
    /// Its blobs still to download.
    pub download: u64,
    /// Its layers still to unpack (an estimate).
    pub unpack: u64,
}

impl Need {
    /// What an image with `layers` needs when `download` bytes of its blobs are still to be
    /// fetched and the layers not complete in `store` still to be unpacked.
    pub(crate) fn of(layers: &[PulledLayer], download: u64, store: &LayerStore) -> Need {
        let diff_ids: Vec<_> = layers.iter().map(|l| l.diff_id.clone()).collect();
        let dirs = store.image_layer_dirs(&diff_ids);
        let unpack = layers
            .iter()
            .zip(dirs)
            .filter(|(_, dir)| !dir.is_dir())
            .map(|(layer, _)| match layer.compression {
                crate::image::Compression::None => layer.size,
                _ => layer.size.saturating_mul(UNPACKED_PER_COMPRESSED),
            })
            .sum();
        Need { download, unpack }
    }

    pub(crate) fn total(&self) -> u64 {
        self.download.saturating_add(self.unpack)
    }
}

/// The space on the filesystem holding `path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Space {
    /// Bytes available (what `df` shows as available).
    pub free: u64,
    pub size: u64,
}

impl Space {
    pub(crate) fn of(path: &Path) -> io::Result<Space> {
        let stat = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
        let block = stat.fragment_size();
        Ok(Space {
            free: stat.blocks_available().saturating_mul(block),
            size: stat.blocks().saturating_mul(block),
        })
    }

    /// The share of the filesystem in use, in percent (what `df` shows as Use%).
    pub(crate) fn used_percent(&self) -> u64 {
        let used = self.size.saturating_sub(self.free);
        used.saturating_mul(100).checked_div(self.size).unwrap_or(0)
    }
}

/// Whether `error`, or an error it was caused by, says the file system is full.
pub(crate) fn is_full(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(io) = error.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::StorageFull || io.raw_os_error() == Some(libc::ENOSPC) {
                return true;
            }
            // A wrapped error is not among an io::Error's sources.
            if io.get_ref().is_some_and(|inner| is_full(inner)) {
                return true;
            }
        }
        next = error.source();
    }
    false
}

/// Bytes for people: `1.2 GB`, `340.0 MB`.
pub(crate) fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1_000_000_000 => format!("{:.1} GB", b as f64 / 1e9),
        b => crate::progress::mb(b),
    }
}

/// How the volume holding `state_dir` is named in messages: its mount point and the state dir.
pub(crate) fn volume_name(state_dir: &Path) -> String {
    let dir = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_owned());
    let mount = crate::mountinfo::MountTable::read_self()
        .ok()
        .and_then(|t| t.containing(&dir).map(|m| m.mount_point.clone()));
    match mount {
        Some(mount) if mount != dir => format!(
            "the volume at {} ({} {})",
            mount.display(),
            names::STATE_DIR.env,
            state_dir.display()
        ),
        _ => format!(
            "the volume at {} ({})",
            state_dir.display(),
            names::STATE_DIR.env
        ),
    }
}

/// The progress line saying that `need` will not fit in the free space of `state_dir`'s volume,
/// if it will not.
pub(crate) fn will_not_fit(state_dir: &Path, need: &Need) -> Option<String> {
    let space = Space::of(state_dir).ok()?;
    (need.total() > space.free).then(|| {
        format!(
            "The image needs about {} on {} ({} to download, about {} unpacked) and {} is free: it will not fit unless other images are removed (at the first \"no space left\", the images beyond the current one and the {} most recently used are removed and the pull tried again)",
            human(need.total()),
            volume_name(state_dir),
            human(need.download),
            human(need.unpack),
            human(space.free),
            names::KEEP_IMAGES.env,
        )
    })
}

/// The volume is full even after the cleanup.
#[derive(Debug, thiserror::Error)]
#[error(
    "{volume} is full: the image needs about {needed} more and {free} is free after removing the images the cleanup does not keep ({keep_name}={keep_images}). Make room: give the volume more space, lower {keep_name}, remove data inside the workspace (its Docker's, on the same volume: `docker system prune`), or use a smaller image"
)]
pub(crate) struct VolumeFull {
    pub volume: String,
    pub needed: String,
    pub free: String,
    pub keep_name: &'static str,
    pub keep_images: usize,
    pub state_dir: PathBuf,
    #[source]
    pub source: anyhow::Error,
}

impl VolumeFull {
    /// The volume of `state_dir` had no room for `need` (`None`: not known) and failed with
    /// `source`.
    pub(crate) fn new(
        state_dir: &Path,
        need: Option<Need>,
        keep_images: usize,
        source: anyhow::Error,
    ) -> VolumeFull {
        VolumeFull {
            volume: volume_name(state_dir),
            needed: need.map_or_else(
                || "an unknown amount".to_owned(),
                |n| {
                    format!(
                        "{} ({} to download, about {} unpacked)",
                        human(n.total()),
                        human(n.download),
                        human(n.unpack)
                    )
                },
            ),
            free: Space::of(state_dir)
                .map_or_else(|_| "an unknown amount".to_owned(), |s| human(s.free)),
            keep_name: names::KEEP_IMAGES.env,
            keep_images,
            state_dir: state_dir.to_owned(),
            source,
        }
    }
}

/// Above this share of the volume in use at start, [`nearly_full`] speaks.
pub const NEARLY_FULL_PERCENT: u64 = 90;

/// When the volume of `state_dir` is more than `percent` full: a line saying so, how much of
/// it each of `data` (the workspace's data directories on the volume, as `(outer path, path
/// inside)`; those on another file system are left out) uses, and how to reclaim it. Walks
/// those directories, so it runs off the start's path.
pub fn nearly_full(state_dir: &Path, data: &[(&str, &str)], percent: u64) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let space = Space::of(state_dir).ok()?;
    if space.used_percent() <= percent {
        return None;
    }
    let device = std::fs::metadata(state_dir).ok()?.dev();
    let used: Vec<String> = data
        .iter()
        .filter(|(outer, _)| std::fs::metadata(outer).is_ok_and(|m| m.dev() == device))
        .map(|(outer, inner)| {
            format!(
                "{} ({inner} inside the workspace) uses {}",
                outer,
                human(usage(Path::new(outer)))
            )
        })
        .collect();
    let data = match used.is_empty() {
        true => String::new(),
        false => format!("; {}", used.join(", ")),
    };
    Some(format!(
        "{} is {}% full ({} free of {}){data}: `docker system prune` inside the workspace removes the Docker images, containers and build cache no container uses (`docker system df` shows them; `podman system prune` for Podman's), and {} lowers how many earlier images envbox keeps",
        volume_name(state_dir),
        space.used_percent(),
        human(space.free),
        human(space.size),
        names::KEEP_IMAGES.env,
    ))
}

/// The disk space the tree at `dir` uses (allocated blocks; a file with several links counted
/// once; other file systems below it left out). What cannot be read counts as nothing.
pub(crate) fn usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    let device = top.dev();
    let mut seen = std::collections::HashSet::new();
    let mut total = top.blocks() * 512;
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.dev() != device {
                continue;
            }
            if meta.nlink() > 1 && !meta.is_dir() && !seen.insert(meta.ino()) {
                continue;
            }
            total += meta.blocks() * 512;
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("writing x: {source}")]
    struct Wrapper {
        source: io::Error,
    }

    #[test]
    fn a_full_volume_is_told_by_the_error_kind_anywhere_in_the_chain() {
        let enospc = io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(is_full(&enospc));
        assert!(is_full(&Wrapper { source: enospc }));
        let kind = io::Error::new(io::ErrorKind::StorageFull, "an earlier write failed");
        assert!(is_full(&Wrapper { source: kind }));
        let wrapped = io::Error::other(Wrapper {
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        });
        assert!(is_full(&wrapped));
        let anyhow = anyhow::Error::new(Wrapper {
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        })
        .context("preparing");
        assert!(is_full(anyhow.as_ref()));
        // Text alone says nothing.
        let text = io::Error::other("No space left on device (os error 28)");
        assert!(!is_full(&text));
        assert!(!is_full(&io::Error::from_raw_os_error(libc::EIO)));
    }

    #[test]
    fn space_of_a_directory_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let space = Space::of(dir.path()).unwrap();
        assert!(space.size >= space.free && space.size > 0);
        assert!(space.used_percent() <= 100);
    }

    #[test]
    fn usage_counts_blocks_once_per_file_and_nearly_full_names_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("docker");
        std::fs::create_dir_all(data.join("overlay2/l")).unwrap();
        std::fs::write(data.join("overlay2/l/big"), vec![1u8; 3 << 20]).unwrap();
        std::fs::hard_link(data.join("overlay2/l/big"), data.join("big-again")).unwrap();
        let used = usage(&data);
        assert!((3 << 20..4 << 20).contains(&used), "{used}");
        assert_eq!(usage(&dir.path().join("absent")), 0);

        let outer = data.to_str().unwrap();
        assert_eq!(
            nearly_full(dir.path(), &[(outer, "/var/lib/docker")], 100),
            None
        );
        let line = nearly_full(
            dir.path(),
            &[(outer, "/var/lib/docker"), ("/nonexistent", "/x")],
            0,
        )
        .expect("over 0% full");
        assert!(
            line.contains(&format!(
                "{outer} (/var/lib/docker inside the workspace) uses 3."
            )),
            "{line}"
        );
        assert!(!line.contains("/nonexistent"), "{line}");
        assert!(
            line.contains("`docker system prune` inside the workspace"),
            "{line}"
        );
    }
}
