//! Entries published before their contents are on disk, and what a machine restart makes of
//! them.
//!
//! Owns: a `.unsynced/` directory beside a store's entries (`blobs/.unsynced/` for the blob
//! store, `layers/.unsynced/` for the layer store), one empty marker `<hex>.<boot id>` per
//! entry (a blob file or a layer directory named by a digest's hex) published without waiting
//! for its data to reach the disk. The marker is created and made durable (an fsync of
//! `.unsynced/`) before the entry is renamed into place, so an entry that a power loss may
//! have left torn always has a marker that names an earlier boot. Within one boot the page
//! cache holds every byte written, so the entry is sound whatever the disk holds; after a
//! restart (or on another machine: the boot ID is the kernel's,
//! `/proc/sys/kernel/random/boot_id`) the store removes every entry with an earlier boot's
//! marker (a layer is unpacked again from its blob, a blob fetched again).
//! [`Unsynced::sync`] is the other way out: one `syncfs`, then the markers of the entries it
//! covered are removed. This module never removes an entry itself, and never syncs anything
//! but the filesystem of the store it was given.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The kernel's ID of this boot, or `None` when it cannot be read (no `/proc`): then every
/// entry is synced before it is published, and every marker found is taken as a restart's.
pub(crate) fn current_boot() -> Option<String> {
    let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    valid_boot(id).then(|| id.to_owned())
}

/// A boot ID as the kernel prints it: a UUID (hex digits and dashes), nothing else.
fn valid_boot(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// An entry's name: a digest's 64 lowercase hex digits.
fn valid_entry(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The markers of one store, for one boot.
#[derive(Debug, Clone)]
pub(crate) struct Unsynced {
    dir: PathBuf,
    boot: Option<String>,
}

/// A marker found in `.unsynced/`.
struct Marker {
    path: PathBuf,
    /// The entry's name (a digest's hex).
    entry: String,
    boot: String,
}

impl Unsynced {
    /// The markers in `<parent>/.unsynced` (created if needed) for the boot `boot`.
    pub(crate) fn open(parent: &Path, boot: Option<String>) -> io::Result<Unsynced> {
        let dir = parent.join(".unsynced");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)?;
        Ok(Unsynced { dir, boot })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn markers(&self) -> io::Result<Vec<Marker>> {
        let mut markers = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let parsed = name
                .split_once('.')
                .filter(|(name, boot)| valid_entry(name) && valid_boot(boot));
            let Some((name, boot)) = parsed else {
                // Not a marker this module wrote: it names no entry, so it protects nothing.
                tracing::warn!(path = %entry.path().display(), "removing a file that is not an unsynced-entry marker");
                self.forget(&entry.path())?;
                continue;
            };
            markers.push(Marker {
                path: entry.path(),
                entry: name.to_owned(),
                boot: boot.to_owned(),
            });
        }
        Ok(markers)
    }

    /// The entry names whose markers name another boot than this one (every marker when the
    /// boot is unknown), each with its marker's path: entries that may be torn on disk. The
    /// caller removes each entry, then calls [`Self::forget`].
    pub(crate) fn of_earlier_boots(&self) -> io::Result<Vec<(String, PathBuf)>> {
        Ok(self
            .markers()?
            .into_iter()
            .filter(|m| self.boot.as_deref() != Some(m.boot.as_str()))
            .map(|m| (m.entry, m.path))
            .collect())
    }

    /// Removes a marker (absent is fine).
    pub(crate) fn forget(&self, marker: &Path) -> io::Result<()> {
        match fs::remove_file(marker) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes every marker of the entry `name` (the entry was removed).
    pub(crate) fn forget_entry(&self, name: &str) -> io::Result<()> {
        for marker in self.markers()?.into_iter().filter(|m| m.entry == name) {
            self.forget(&marker.path)?;
        }
        Ok(())
    }

    /// Records, durably, that the entry `name` is about to be published unsynced. `false` when
    /// the boot is unknown: the caller must then sync before it publishes.
    pub(crate) fn mark(&self, name: &str) -> io::Result<bool> {
        let Some(boot) = &self.boot else {
            return Ok(false);
        };
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(self.dir.join(format!("{name}.{boot}")))?;
        File::open(&self.dir)?.sync_all()?;
        Ok(true)
    }

    /// Makes every entry of `entries` (the directory holding them) published unsynced in this
    /// boot durable: one `syncfs` of its filesystem, then their markers removed. A marker whose
    /// entry is not there (a write still running, or one that failed) is kept. Returns how
    /// many entries it covered; 0 without a sync when there were none.
    pub(crate) fn sync(&self, entries: &Path) -> io::Result<usize> {
        let Some(boot) = &self.boot else {
            return Ok(0);
        };
        let covered: Vec<Marker> = self
            .markers()?
            .into_iter()
            .filter(|m| &m.boot == boot && fs::symlink_metadata(entries.join(&m.entry)).is_ok())
            .collect();
        if covered.is_empty() {
            return Ok(0);
        }
        nix::unistd::syncfs(File::open(entries)?).map_err(io::Error::from)?;
        for marker in &covered {
            self.forget(&marker.path)?;
        }
        File::open(&self.dir)?.sync_all()?;
        Ok(covered.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_ids_are_uuids_and_nothing_that_could_name_a_path() {
        assert!(valid_boot("6c8f1a0e-58f8-4c3a-9d0b-2f1e7a9c4b21"));
        for bad in ["", "../x", "a/b", "a.b", "zz", &"a".repeat(65)] {
            assert!(!valid_boot(bad), "{bad:?}");
        }
        // This machine has one, and it is stable within the boot.
        let boot = current_boot().expect("boot id");
        assert_eq!(current_boot(), Some(boot));
    }

    const AA: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const BB: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn markers_of_this_boot_are_kept_until_a_sync_covers_their_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let this = Unsynced::open(root, Some("b1".into())).unwrap();
        assert!(this.mark(AA).unwrap());
        assert!(this.mark(BB).unwrap());
        fs::create_dir(root.join(AA)).unwrap();
        // Nothing from an earlier boot.
        assert!(this.of_earlier_boots().unwrap().is_empty());
        // The sync covers aa (published), not bb (its write is still running).
        assert_eq!(this.sync(root).unwrap(), 1);
        assert!(!this.dir().join(format!("{AA}.b1")).exists());
        assert!(this.dir().join(format!("{BB}.b1")).exists());
        assert_eq!(this.sync(root).unwrap(), 0);

        // The next boot takes bb as possibly torn.
        let next = Unsynced::open(root, Some("b2".into())).unwrap();
        // Junk in the directory is removed, never taken for an entry (".staging" would name
        // the layer store's staging directory, "" the store itself).
        for junk in [".staging.b1", "aa.b1", "x", &format!("{AA}.")] {
            fs::write(next.dir().join(junk), b"").unwrap();
        }
        let earlier = next.of_earlier_boots().unwrap();
        assert_eq!(earlier.len(), 1);
        assert_eq!(earlier[0].0, BB);
        next.forget(&earlier[0].1).unwrap();
        assert!(next.of_earlier_boots().unwrap().is_empty());
        assert_eq!(fs::read_dir(next.dir()).unwrap().count(), 0);
    }

    #[test]
    fn without_a_boot_id_nothing_is_marked_and_every_marker_is_an_earlier_boots() {
        let tmp = tempfile::tempdir().unwrap();
        let with = Unsynced::open(tmp.path(), Some("b1".into())).unwrap();
        with.mark(AA).unwrap();
        let without = Unsynced::open(tmp.path(), None).unwrap();
        assert!(!without.mark(BB).unwrap());
        assert_eq!(without.sync(tmp.path()).unwrap(), 0);
        let earlier = without.of_earlier_boots().unwrap();
        assert_eq!(earlier.len(), 1);
        assert_eq!(earlier[0].0, AA);
        without.forget_entry(AA).unwrap();
        assert!(without.of_earlier_boots().unwrap().is_empty());
    }
}
