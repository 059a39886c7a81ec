//! Leases: which layers and blobs of the node cache each running workspace uses.
//!
//! Owns: `<node cache>/leases/<holder>.<id>`, one JSON file per running `envbox docker`,
//! written whole under a temporary name and renamed in, then held with an exclusive `flock`
//! for as long as the workspace runs. The kernel drops the lock when the process dies (kill -9,
//! OOM, a node-level kill of the pod), so a lease is live exactly while its lock is held, seen
//! from any pod of the node. While it lives, a thread renews it every [`RENEW`]: the
//! modification time of the lease, of each named layer's completion marker and of each named
//! blob becomes now, which is when the cleanup (module `clean`) takes them as last used.
//! Dropped (a clean stop), the lease renews once more and is removed.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{io_err, NodeCache, NodeCacheError};
use crate::cache::BlobStore;
use crate::digest::Digest;
use crate::lock::{try_flock, Mode};
use crate::unpack::LayerStore;

/// How often a live lease renews what it names.
pub(crate) const RENEW: Duration = Duration::from_secs(600);

/// What a workspace uses: the chain IDs of its layers and the digests of its blobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Uses {
    pub layers: Vec<Digest>,
    pub blobs: Vec<Digest>,
}

/// A lease as written.
#[derive(Serialize, Deserialize)]
struct Record {
    holder: String,
    layers: Vec<String>,
    blobs: Vec<String>,
}

impl Record {
    fn uses(&self) -> Option<Uses> {
        let parse = |list: &[String]| -> Option<Vec<Digest>> {
            list.iter().map(|d| Digest::parse(d).ok()).collect()
        };
        Some(Uses {
            layers: parse(&self.layers)?,
            blobs: parse(&self.blobs)?,
        })
    }
}

/// A live lease; dropped, it is removed.
#[derive(Debug)]
pub(crate) struct Lease {
    path: PathBuf,
    /// Holds the lock; closed last.
    _file: File,
    stop: Option<mpsc::Sender<()>>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

impl NodeCache {
    /// Takes a lease on `uses` for the workspace `holder` (the pod's name), renewed until
    /// dropped. Take it before the hold on the store that prepared the image goes, so that no
    /// cleanup runs in between.
    pub(crate) fn lease(
        &self,
        holder: &str,
        uses: Uses,
        blobs: &BlobStore,
        layers: &LayerStore,
    ) -> Result<Lease, NodeCacheError> {
        let dir = self.leases();
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let holder: String = holder
            .chars()
            .map(|c| match c.is_ascii_alphanumeric() || c == '-' {
                true => c,
                false => '_',
            })
            .take(63)
            .collect();
        let id = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!("{holder}.{}-{id:x}", std::process::id());
        let path = dir.join(&name);
        let staging = dir.join(format!(".{name}"));
        let record = Record {
            holder: holder.clone(),
            layers: uses.layers.iter().map(Digest::to_string).collect(),
            blobs: uses.blobs.iter().map(Digest::to_string).collect(),
        };
        // Locked before it has content, so no one ever takes it for a dead holder's.
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&staging)
            .map_err(io_err("creating the lease", &staging))?;
        if !try_flock(&file, Mode::Exclusive).map_err(io_err("locking the lease", &staging))? {
            return Err(io_err("locking the lease", &staging)(io::Error::other(
                "held by another process",
            )));
        }
        serde_json::to_vec(&record)
            .map_err(io::Error::other)
            .and_then(|json| (&file).write_all(&json))
            .map_err(io_err("writing the lease", &staging))?;
        fs::rename(&staging, &path).map_err(io_err("publishing the lease", &path))?;
        let renew = Renew {
            lease: path.clone(),
            uses,
            blobs: blobs.clone(),
            layers: layers.clone(),
        };
        renew.now();
        let (stop, stopped) = mpsc::channel::<()>();
        let renewer = std::thread::Builder::new()
            .name("envbox-lease".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(RENEW) {
                    renew.now();
                }
                renew.now();
            })
            .map_err(io_err("starting the renewal of", &path))?;
        Ok(Lease {
            path,
            _file: file,
            stop: Some(stop),
            renewer: Some(renewer),
        })
    }

    /// The live leases and what they name; the files of dead ones are removed. A live lease
    /// that cannot be read is an error: nothing it may name can be told apart.
    pub(crate) fn live_leases(&self) -> Result<Vec<(String, Uses)>, NodeCacheError> {
        let dir = self.leases();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("listing", &dir)(e)),
        };
        let mut live = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("listing", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("opening the lease", &path)(e)),
            };
            if try_flock(&file, Mode::Exclusive).map_err(io_err("checking the lease", &path))? {
                // Its holder is gone (or it is a staging file of one that died): what it
                // named counts from its last renewal (the markers' and blobs' times).
                remove(&path)?;
                continue;
            }
            if name.starts_with('.') {
                continue; // Being written: its holder has not published it yet.
            }
            let uses = fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Record>(&bytes).ok())
                .and_then(|record| record.uses());
            match uses {
                Some(uses) => live.push((name, uses)),
                None => {
                    return Err(NodeCacheError::BadLease {
                        path: self.dir.clone(),
                        lease: name,
                        problem: "not a lease this envbox writes".into(),
                    })
                }
            }
        }
        Ok(live)
    }
}

fn remove(path: &Path) -> Result<(), NodeCacheError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing the lease", path)(e)),
        _ => Ok(()),
    }
}

/// What a renewal touches.
struct Renew {
    lease: PathBuf,
    uses: Uses,
    blobs: BlobStore,
    layers: LayerStore,
}

impl Renew {
    /// Sets the lease's, each named layer marker's and each named blob's modification time to
    /// now. A failure is logged: the lease's lock alone keeps what it names.
    fn now(&self) {
        let mut failed = Vec::new();
        if let Err(e) = touch(&self.lease) {
            failed.push(format!("{}: {e}", self.lease.display()));
        }
        for chain in &self.uses.layers {
            if let Err(e) = self.layers.markers().touch(chain) {
                failed.push(format!("layer {chain}: {e}"));
            }
        }
        for blob in &self.uses.blobs {
            if let Err(e) = touch(&self.blobs.path(blob)) {
                failed.push(format!("blob {blob}: {e}"));
            }
        }
        if !failed.is_empty() {
            tracing::warn!(failed = ?failed, "node cache: cannot renew the times of a lease's layers and blobs");
        }
    }
}

/// Sets `path`'s modification time to now (absent is fine).
fn touch(path: &Path) -> io::Result<()> {
    match File::options().write(true).open(path) {
        Ok(file) => file.set_modified(SystemTime::now()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl Lease {
    /// Where the lease is.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(renewer) = self.renewer.take() {
            let _ = renewer.join();
        }
        if let Err(e) = remove(&self.path) {
            tracing::warn!(error = %e, "node cache: cannot remove this workspace's lease (it is taken as dead once this process exits)");
        }
    }
}
