//! The completion marker of a published layer directory.
//!
//! Owns: `<layers>/chain/.complete/<chain ID hex>`, a small JSON record written by the process
//! that unpacked the layer, before it renames the layer directory into place: the chain ID, the
//! diff ID and the compressed digest it verified while unpacking, and the layer's size. A layer
//! directory counts as complete only with a marker that parses and names its chain ID, so a
//! directory someone else put there (another tool on a shared node cache, a layout from before
//! markers, a marker cut short by a kill) is never taken as an unpacked, verified layer. It
//! never reads or writes a layer directory itself.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// The marker format this build writes and accepts.
const FORMAT: u32 = 1;

/// What a marker records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Completion {
    /// The directory's chain ID.
    pub chain: Digest,
    /// The layer's uncompressed digest, checked while it was unpacked.
    pub diff_id: Digest,
    /// The layer blob's digest, checked while it was unpacked.
    pub blob: Digest,
    /// Uncompressed bytes of the layer: what the directory holds, near enough for budgets.
    pub bytes: u64,
}

impl Completion {
    pub(crate) fn new(chain: Digest, diff_id: Digest, blob: Digest, bytes: u64) -> Completion {
        Completion {
            chain,
            diff_id,
            blob,
            bytes,
        }
    }
}

/// A marker as written.
#[derive(Serialize, Deserialize)]
struct Record {
    format: u32,
    chain: String,
    diff_id: String,
    blob: String,
    bytes: u64,
}

impl Record {
    fn of(c: &Completion) -> Record {
        Record {
            format: FORMAT,
            chain: c.chain.to_string(),
            diff_id: c.diff_id.to_string(),
            blob: c.blob.to_string(),
            bytes: c.bytes,
        }
    }

    fn completion(&self) -> Option<Completion> {
        (self.format == FORMAT).then_some(())?;
        Some(Completion {
            chain: Digest::parse(&self.chain).ok()?,
            diff_id: Digest::parse(&self.diff_id).ok()?,
            blob: Digest::parse(&self.blob).ok()?,
            bytes: self.bytes,
        })
    }
}

/// The markers of one layer store.
#[derive(Debug, Clone)]
pub(crate) struct Markers {
    dir: PathBuf,
}

impl Markers {
    /// The markers beside the layer directories in `root`.
    pub(crate) fn new(root: &Path) -> Markers {
        Markers {
            dir: root.join(".complete"),
        }
    }

    /// Their directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the marker of `chain` is.
    pub(crate) fn path(&self, chain: &Digest) -> PathBuf {
        self.dir.join(chain.hex())
    }

    /// The marker of `chain`, when there is one that parses, is of this format and names
    /// `chain`; anything else reads as no marker.
    pub(crate) fn read(&self, chain: &Digest) -> Option<Completion> {
        let bytes = fs::read(self.path(chain)).ok()?;
        serde_json::from_slice::<Record>(&bytes)
            .ok()?
            .completion()
            .filter(|c| &c.chain == chain)
    }

    /// Writes the marker (replacing one a killed unpack left). Not synced: the layer store's
    /// unsynced marking covers it with its directory.
    pub(crate) fn write(&self, completion: &Completion) -> io::Result<()> {
        let json = serde_json::to_vec(&Record::of(completion)).map_err(io::Error::other)?;
        fs::write(self.path(&completion.chain), json)
    }

    /// Removes the marker of `chain` (absent is fine).
    pub(crate) fn remove(&self, chain: &Digest) -> io::Result<()> {
        match fs::remove_file(self.path(chain)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Sets the marker's modification time to now: when a workspace last named the layer
    /// (`crate::nodecache`'s leases). Absent is fine.
    pub(crate) fn touch(&self, chain: &Digest) -> io::Result<()> {
        match fs::File::options().write(true).open(self.path(chain)) {
            Ok(file) => file.set_modified(std::time::SystemTime::now()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every marker's chain ID (names that are not a digest's hex are skipped).
    pub(crate) fn list(&self) -> io::Result<Vec<Digest>> {
        let mut chains = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            if let Ok(chain) = Digest::parse(&format!("sha256:{}", name.to_string_lossy())) {
                chains.push(chain);
            }
        }
        chains.sort();
        Ok(chains)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::of(&[n])
    }

    #[test]
    fn a_marker_counts_only_when_it_parses_and_names_its_chain() {
        let dir = tempfile::tempdir().unwrap();
        let markers = Markers::new(dir.path());
        fs::create_dir_all(markers.dir()).unwrap();
        let chain = digest(1);
        assert_eq!(markers.read(&chain), None);

        let done = Completion::new(chain.clone(), digest(2), digest(3), 42);
        markers.write(&done).unwrap();
        assert_eq!(markers.read(&chain), Some(done.clone()));

        // Cut short by a kill.
        let json = fs::read(markers.path(&chain)).unwrap();
        fs::write(markers.path(&chain), &json[..json.len() / 2]).unwrap();
        assert_eq!(markers.read(&chain), None);

        // Another layer's record under this name.
        let other = Completion::new(digest(9), digest(2), digest(3), 42);
        fs::write(
            markers.path(&chain),
            serde_json::to_vec(&Record::of(&other)).unwrap(),
        )
        .unwrap();
        assert_eq!(markers.read(&chain), None);

        // Another format.
        let mut newer = serde_json::to_value(Record::of(&done)).unwrap();
        newer["format"] = 2.into();
        fs::write(markers.path(&chain), newer.to_string()).unwrap();
        assert_eq!(markers.read(&chain), None);

        markers.remove(&chain).unwrap();
        markers.remove(&chain).unwrap();
        assert!(!markers.path(&chain).exists());
    }
}
