//! Helpers shared by the unit tests of several modules (test builds only).
//!
//! Owns: [`LoopExt4`], a fresh ext4 on a loop device whose own counter tells what reached the
//! device, for the tests of what is synced when (the blob store, `unpack::flatten`). It needs
//! root, `mkfs.ext4` and a loop device; it never touches a filesystem it did not make.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// `kib` KiB of bytes that no filesystem or device compresses away.
pub(crate) fn incompressible(kib: usize) -> Vec<u8> {
    (0..kib * 1024)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0])
        .collect()
}

/// A small ext4 on a loop device, whose own counter says what reached the device.
pub(crate) struct LoopExt4 {
    _tmp: tempfile::TempDir,
    pub(crate) mnt: PathBuf,
}

impl LoopExt4 {
    pub(crate) fn new() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("envbox-durability")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let (img, mnt) = (tmp.path().join("fs.img"), tmp.path().join("mnt"));
        fs::create_dir(&mnt).expect("mnt");
        let sh = |script: String| {
            let out = std::process::Command::new("sh")
                .args(["-ec", &script])
                .output()
                .expect("sh");
            assert!(
                out.status.success(),
                "{script}: {} (needs mkfs.ext4 and loop devices)",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        sh(format!(
            "truncate -s 64M {img}; mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 {img}
             mount -o loop {img} {mnt}",
            img = img.display(),
            mnt = mnt.display()
        ));
        LoopExt4 { _tmp: tmp, mnt }
    }

    /// KiB written to the device since the mount (`/sys/fs/ext4/<dev>/session_write_kbytes`).
    pub(crate) fn written_kib(&self) -> u64 {
        let dev = fs::metadata(&self.mnt).expect("stat mnt").dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        let block = fs::read_link(format!("/sys/dev/block/{major}:{minor}")).expect("sysfs dev");
        let name = block.file_name().expect("device name").to_string_lossy();
        let path = format!("/sys/fs/ext4/{name}/session_write_kbytes");
        let text = fs::read_to_string(&path).expect("session_write_kbytes");
        text.trim().parse().expect("a number of KiB")
    }

    /// Runs `f` and returns it with the KiB it made reach the device meanwhile.
    pub(crate) fn written_during<T>(&self, f: impl FnOnce() -> T) -> (T, u64) {
        let before = self.written_kib();
        let out = f();
        (out, self.written_kib() - before)
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
    }
}
