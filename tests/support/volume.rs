//! [`SmallVolume`]: a small ext4 file system on a loop device (root, `mkfs.ext4`), for real
//! "no space left on device" errors.

use std::path::Path;
use std::process::Command;

/// A small ext4 file system of `mb` MiB on a loop device, mounted on a temporary directory;
/// unmounted and removed when dropped.
pub struct SmallVolume {
    mount: tempfile::TempDir,
    _image: tempfile::TempDir,
}

impl SmallVolume {
    pub fn new(mb: u64) -> SmallVolume {
        let image = tempfile::tempdir_in("/var/tmp").unwrap();
        let file = image.path().join("volume.img");
        let ok = |mut c: Command| {
            let out = c.output().unwrap();
            assert!(
                out.status.success(),
                "{c:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let mut truncate = Command::new("truncate");
        truncate.arg("-s").arg(format!("{mb}M")).arg(&file);
        ok(truncate);
        // No blocks reserved for root: what is free is what envbox gets.
        let mut mkfs = Command::new("mkfs.ext4");
        mkfs.args(["-q", "-F", "-m", "0"]).arg(&file);
        ok(mkfs);
        let mount = tempfile::tempdir_in("/var/tmp").unwrap();
        let mut mnt = Command::new("mount");
        mnt.args(["-o", "loop"]).arg(&file).arg(mount.path());
        ok(mnt);
        SmallVolume {
            mount,
            _image: image,
        }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.mount.path()
    }

    /// The state dir on it.
    pub fn state(&self) -> std::path::PathBuf {
        self.mount.path().join("envbox")
    }
}

impl Drop for SmallVolume {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mount.path()).status();
    }
}

/// An overlay mounted at `target` from `lowers` (top first, as overlayfs lists them) and an
/// upper and work dir; detached when dropped.
pub struct OverlayMount {
    target: std::path::PathBuf,
}

impl OverlayMount {
    pub fn new(target: &Path, lowers: &[&Path], upper: &Path, work: &Path) -> OverlayMount {
        let lowers: Vec<String> = lowers.iter().map(|d| d.display().to_string()).collect();
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            upper.display(),
            work.display()
        );
        nix::mount::mount(
            Some("overlay"),
            target,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(options.as_str()),
        )
        .unwrap();
        OverlayMount {
            target: target.to_owned(),
        }
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.target, nix::mount::MntFlags::MNT_DETACH);
    }
}
