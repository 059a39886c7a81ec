//! The slow path beside the warm start: the volume itself on overlayfs, where the kernel
//! refuses an overlay upper directory, so every start flattens a copy of the cached image
//! into the state directory (envbox says so in its log). Timed like the warm start, for this
//! build and `ENVBOX_BENCH_BASELINE`; checks that no run got an overlay rootfs.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::workspace::{envbox_run, EnvboxRun};
use crate::{row, run_ok};

/// An overlayfs mounted at `<work>/ovl/merged` (empty lower), unmounted on drop.
struct OverlayVolume {
    merged: PathBuf,
}

impl OverlayVolume {
    fn new(work: &Path) -> OverlayVolume {
        let base = work.join("ovl");
        let dirs = ["lower", "upper", "work", "merged"].map(|d| base.join(d));
        for dir in &dirs {
            fs::create_dir_all(dir).expect("overlay volume dirs");
        }
        let [lower, upper, workdir, merged] = dirs;
        run_ok(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o"])
                .arg(format!(
                    "lowerdir={},upperdir={},workdir={}",
                    lower.display(),
                    upper.display(),
                    workdir.display()
                ))
                .arg(&merged),
        );
        // The workspace's root (uid 100000 outside) must reach the rootfs under it.
        fs::set_permissions(&merged, fs::Permissions::from_mode(0o755)).expect("chmod volume");
        OverlayVolume { merged }
    }
}

impl Drop for OverlayVolume {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.merged).status();
    }
}

/// Times `runs` starts of each build with the state directory on an overlayfs volume.
pub fn bench(builds: &[String], env: &[(String, String)], work: &Path, marker: &Path, runs: usize) {
    let volume = OverlayVolume::new(work);
    let state = volume.merged.join("state");
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| match k.as_str() {
            "ENVBOX_STATE_DIR" => (k.clone(), state.display().to_string()),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    // Untimed: the cache on this volume filled (a pull), each build warmed up.
    for build in builds {
        envbox_run(build, &env, &state, marker);
    }
    println!("fallback: the volume on overlayfs, a flattened copy of the image each start, {runs} runs each:");
    let mut times: Vec<Vec<EnvboxRun>> = builds.iter().map(|_| Vec::new()).collect();
    for run in 0..runs {
        for turn in 0..builds.len() {
            let b = (run + turn) % builds.len();
            times[b].push(envbox_run(&builds[b], &env, &state, marker));
        }
    }
    for (build, runs) in builds.iter().zip(&times) {
        let name = if build == &builds[0] {
            "this build".to_owned()
        } else {
            build.clone()
        };
        row(
            &format!("envbox docker ({name}), spawn to the marker"),
            &runs.iter().map(|r| r.total).collect::<Vec<_>>(),
        );
        if runs.iter().any(|r| r.overlay) {
            println!(
                "WARNING: an overlay rootfs on an overlayfs volume: the fallback was not timed"
            );
        }
    }
}
