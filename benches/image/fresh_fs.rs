//! The bench's side effects on the host: shell steps, and a fresh journaled ext4 on a loop
//! device for every timed run (benchmarking.md: creating files right after deleting others is
//! 6-7x slower on this disk). Unmounted and deleted on drop.
//!
//! Each tool starts from the same state: the inode tables and journal are initialised by
//! mkfs (no `ext4lazyinit` writing behind the run, as on a volume in use for a while), and
//! `sync` first writes back what earlier steps left dirty (the image build, the push, the
//! previous tool), so no tool pays for another's writeback.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `script` with `sh -e`; panics with its stderr when it fails.
pub fn sh(script: &str) {
    let out = Command::new("sh")
        .args(["-ec", script])
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn timed(f: impl FnOnce()) -> Duration {
    let started = Instant::now();
    f();
    started.elapsed()
}

/// A fresh ext4 filesystem mounted at `<base>/mnt` for one timed run.
pub struct FreshFs {
    pub mnt: PathBuf,
    image: PathBuf,
}

impl FreshFs {
    pub fn new(base: &Path) -> FreshFs {
        let image = base.join("fs.img");
        let mnt = base.join("mnt");
        std::fs::create_dir_all(&mnt).expect("mnt");
        sh(&format!(
            "rm -f {img}; truncate -s 20G {img}
             mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 {img}
             mount -o loop {img} {mnt}; sync",
            img = image.display(),
            mnt = mnt.display()
        ));
        FreshFs { mnt, image }
    }
}

impl Drop for FreshFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = std::fs::remove_file(&self.image);
    }
}
