//! Creating inodes that are born right: owned by the shifted root and with their final mode.
//!
//! Owns: the unpacking thread's filesystem identity while it writes a layer ([`AsShiftedRoot`]:
//! `setfsuid`/`setfsgid` to 100000, so every inode it creates is owned by the layer's `0:0`
//! shifted without an `fchown`, the effective capabilities the kernel drops on that change put
//! back, and all of it undone on drop), and knowing whether a mode asked of `open`/`mkdir`
//! arrives intact ([`exact_at_creation`]: the umask). Both only save syscalls: the writer still
//! `fchown`s an entry owned by someone else or created in a setgid directory (whose group it
//! inherits), and `fchmod`s whenever the creation mode may differ. It must never change the
//! identity of any thread but the caller's (fsuid, fsgid and capabilities are per thread; the
//! guard is neither `Send` nor `Sync`; a thread spawned while it is held would inherit them, so
//! the writer spawns none), never outlive the writing of one layer, and never be held while
//! creating anything outside the layer's staging directory.

use std::marker::PhantomData;
use std::sync::OnceLock;

use caps::{CapSet, Capability, CapsHashSet};

use super::ID_SHIFT;

/// The calling thread creates inodes as `100000:100000` while this lives (when
/// [`active`](Self::active)); dropping it restores the thread's fsuid, fsgid and effective
/// capabilities.
pub(super) struct AsShiftedRoot {
    saved: Option<Saved>,
    /// Per-thread state: the guard stays on the thread that made it.
    _thread: PhantomData<*const ()>,
}

struct Saved {
    fsuid: u32,
    fsgid: u32,
    effective: CapsHashSet,
}

/// `setfsuid`/`setfsgid` with an invalid ID change nothing and return the current one.
const QUERY: u32 = u32::MAX;

impl AsShiftedRoot {
    /// Switches the calling thread; when that is not possible (no `CAP_SETUID`/`CAP_SETGID`,
    /// 100000 not mapped in this user namespace, capabilities unreadable) or would lose access
    /// (without `CAP_DAC_OVERRIDE`, fsuid 100000 could not read the root-owned blob that fsuid
    /// 0 owns) nothing changes and the guard is inactive: the writer then `fchown`s every
    /// inode as before.
    pub(super) fn enter() -> AsShiftedRoot {
        let inactive = AsShiftedRoot {
            saved: None,
            _thread: PhantomData,
        };
        let Ok(effective) = caps::read(None, CapSet::Effective) else {
            return inactive;
        };
        let needed = [
            Capability::CAP_DAC_OVERRIDE,
            Capability::CAP_CHOWN,
            Capability::CAP_FOWNER,
        ];
        if !needed.iter().all(|cap| effective.contains(cap)) {
            return inactive;
        }
        // SAFETY: setfsuid/setfsgid take and return plain integers and change only this
        // thread's credentials.
        let (fsuid, fsgid) = unsafe { (libc::setfsuid(QUERY), libc::setfsgid(QUERY)) };
        let saved = Saved {
            fsuid: fsuid as u32,
            fsgid: fsgid as u32,
            effective,
        };
        // SAFETY: as above.
        let switched = unsafe {
            libc::setfsgid(ID_SHIFT);
            libc::setfsuid(ID_SHIFT);
            libc::setfsuid(QUERY) as u32 == ID_SHIFT && libc::setfsgid(QUERY) as u32 == ID_SHIFT
        };
        // Leaving fsuid 0 cleared the file capabilities (CAP_CHOWN, CAP_DAC_OVERRIDE,
        // CAP_FOWNER, ...) from the effective set; they are still permitted.
        if !switched || caps::set(None, CapSet::Effective, &saved.effective).is_err() {
            restore(&saved);
            return inactive;
        }
        AsShiftedRoot {
            saved: Some(saved),
            _thread: PhantomData,
        }
    }

    /// Whether inodes created now are owned by `100000:100000` (outside setgid directories).
    pub(super) fn active(&self) -> bool {
        self.saved.is_some()
    }
}

impl Drop for AsShiftedRoot {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            restore(saved);
        }
    }
}

fn restore(saved: &Saved) {
    // SAFETY: as in `enter`.
    unsafe {
        libc::setfsuid(saved.fsuid);
        libc::setfsgid(saved.fsgid);
    }
    // Back to fsuid 0 the kernel raised the file capabilities again from the permitted set;
    // the exact set from before is put back. Failing that leaves at most capabilities the
    // thread was permitted anyway.
    if let Err(e) = caps::set(None, CapSet::Effective, &saved.effective) {
        tracing::warn!(error = %e, "cannot restore the unpacking thread's effective capabilities");
    }
}

/// Whether `open`/`mkdir`/`mknod` asked for `mode` create exactly that mode: no setuid, setgid
/// or sticky bit (set with `fchmod`, after ownership), and no permission bit the process umask
/// takes away. Layer directories carry no default ACL while entries are created in them (see
/// `tree::create_root` and `Tree::set_default_acls`), so the umask is all that applies. `false` whenever the umask cannot be read.
pub(super) fn exact_at_creation(mode: u32) -> bool {
    mode & 0o7000 == 0 && umask().is_some_and(|umask| mode & umask & 0o777 == 0)
}

/// The process umask, read once (`Umask:` of `/proc/self/status`, Linux 4.7+; `umask(2)` cannot
/// read it without changing it for every thread).
fn umask() -> Option<u32> {
    static UMASK: OnceLock<Option<u32>> = OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        parse_umask(&status)
    })
}

fn parse_umask(status: &str) -> Option<u32> {
    let value = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(value.trim(), 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn owner(path: &std::path::Path) -> (u32, u32) {
        let meta = std::fs::symlink_metadata(path).unwrap();
        (meta.uid(), meta.gid())
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn the_umask_line_is_parsed_as_octal() {
        assert_eq!(
            parse_umask("Name:\tx\nUmask:\t0022\nState:\tR\n"),
            Some(0o022)
        );
        assert_eq!(parse_umask("Umask:\t0077"), Some(0o077));
        assert_eq!(parse_umask("Name:\tx\n"), None);
        assert_eq!(parse_umask("Umask:\tzz"), None);
    }

    #[test]
    fn special_bits_and_masked_bits_are_not_exact_at_creation() {
        let umask = umask().expect("this kernel shows the umask");
        assert!(!exact_at_creation(0o4755), "setuid is set after ownership");
        assert!(!exact_at_creation(0o2755));
        assert!(!exact_at_creation(0o1777));
        assert_eq!(exact_at_creation(0o777), umask & 0o777 == 0);
        assert!(exact_at_creation(0o777 & !umask));
        assert!(exact_at_creation(0o600 & !umask));
    }

    #[test]
    fn inodes_created_inside_are_owned_by_the_shifted_root_and_the_thread_is_restored() {
        assert!(is_root(), "this test needs root (setfsuid, file ownership)");
        let dir = tempfile::tempdir().unwrap();
        let before = caps::read(None, CapSet::Effective).unwrap();
        {
            let guard = AsShiftedRoot::enter();
            assert!(guard.active());
            // Creating in a root-owned 0700 directory needs the capabilities put back.
            let private = dir.path().join("private");
            std::fs::create_dir(&private).unwrap();
            std::fs::write(private.join("file"), b"x").unwrap();
            std::os::unix::fs::symlink("file", private.join("link")).unwrap();
            for name in ["private", "private/file", "private/link"] {
                assert_eq!(owner(&dir.path().join(name)), (100_000, 100_000), "{name}");
            }
            // Other owners are still set with fchown.
            std::os::unix::fs::chown(private.join("file"), Some(101_000), Some(101_000)).unwrap();
            assert_eq!(owner(&private.join("file")), (101_000, 101_000));
        }
        assert_eq!(caps::read(None, CapSet::Effective).unwrap(), before);
        // SAFETY: queries only.
        assert_eq!(unsafe { libc::setfsuid(QUERY) }, 0);
        std::fs::write(dir.path().join("after"), b"x").unwrap();
        assert_eq!(owner(&dir.path().join("after")), (0, 0));
    }

    #[test]
    fn without_the_file_capabilities_nothing_changes() {
        assert!(is_root(), "this test needs root (capabilities)");
        std::thread::scope(|s| {
            // A thread of its own: its effective set is changed and not given back.
            s.spawn(|| {
                caps::drop(None, CapSet::Effective, Capability::CAP_DAC_OVERRIDE).unwrap();
                let guard = AsShiftedRoot::enter();
                assert!(!guard.active());
                // SAFETY: a query only.
                assert_eq!(unsafe { libc::setfsuid(QUERY) }, 0);
            })
            .join()
            .unwrap();
        });
    }

    #[test]
    fn other_threads_keep_their_identity() {
        assert!(is_root(), "this test needs root (setfsuid, file ownership)");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("from-another-thread");
        let path = path.as_path();
        let (entered, go) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            // Started before the guard: threads inherit the credentials of their creator.
            let other = s.spawn(move || {
                go.recv().unwrap();
                std::fs::write(path, b"x").unwrap();
            });
            let guard = AsShiftedRoot::enter();
            assert!(guard.active());
            entered.send(()).unwrap();
            other.join().unwrap();
        });
        assert_eq!(owner(path), (0, 0));
    }
}
