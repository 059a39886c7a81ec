//! `make bench` (second half): cold pull+unpack of a multi-layer image, envbox beside
//! `skopeo copy` + `umoci raw unpack` + the +100000 chown pass that umoci needs for the shift,
//! and beside the raw limit (`curl | gzip -dc | tar -x` of the same layers, all in parallel);
//! plus the time of a repeat `envbox prepare` of the cached image.
//!
//! benchmarking.md: every timed unpack writes into a freshly made journaled ext4 on a loop
//! device (creating files right after deleting others is 6-7x slower on this disk); tools run
//! side by side in the same run, several runs, min and median. Needs root (mount), skopeo,
//! umoci, gzip, tar. containerd's `ctr image pull` is not measured yet.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::image::{big_image, write_layout};
use support::registry::Registry;

const ENVBOX: &str = env!("CARGO_BIN_EXE_envbox");
const RUNS: usize = 3;

fn sh(script: &str) {
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

/// A fresh ext4 filesystem mounted at `<base>/mnt` for one timed run.
struct FreshFs {
    mnt: PathBuf,
    image: PathBuf,
}

impl FreshFs {
    fn new(base: &Path) -> FreshFs {
        let image = base.join("fs.img");
        let mnt = base.join("mnt");
        std::fs::create_dir_all(&mnt).expect("mnt");
        sh(&format!(
            "rm -f {img}; truncate -s 20G {img}; mkfs.ext4 -q {img}; mount -o loop {img} {mnt}",
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

fn timed(f: impl FnOnce()) -> Duration {
    let started = Instant::now();
    f();
    started.elapsed()
}

fn row(tool: &str, mut times: Vec<Duration>) {
    times.sort();
    println!(
        "{tool:<44} min {:>7.2} s   median {:>7.2} s",
        times[0].as_secs_f64(),
        times[times.len() / 2].as_secs_f64()
    );
}

/// Cold `envbox prepare` with another build of envbox (`ENVBOX_BENCH_BASELINE=/path/to/envbox`),
/// to compare two builds side by side in the same run.
fn baseline_prepare(binary: &str, reference: &str, host: &str, state: &Path) {
    let out = Command::new(binary)
        .args([
            "prepare",
            "--image",
            reference,
            "--insecure-registries",
            host,
        ])
        .arg("--state-dir")
        .arg(state)
        .output()
        .expect("baseline envbox prepare");
    assert!(
        out.status.success(),
        "baseline envbox prepare: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the image benchmark needs root (it mounts fresh ext4 filesystems)");
        return;
    }
    let total_mb = std::env::var("ENVBOX_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let layers = std::env::var("ENVBOX_BENCH_LAYERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let work = tempfile::tempdir_in("/var/tmp").expect("work dir");
    let layout = work.path().join("layout");
    let info = write_layout(&layout, "bench", &[big_image(total_mb, layers)]);
    let registry = Registry::http();
    registry.push(&layout, "bench", "bench/big:1");
    let reference = format!("{}/bench/big:1", registry.host);
    println!(
        "image benchmark: {} MB compressed in {layers} gzip layers, loopback registry, fresh ext4 per run, {RUNS} runs",
        info.total_layer_bytes / 1_000_000
    );

    let (mut envbox_cold, mut envbox_repeat, mut umoci, mut raw) = (vec![], vec![], vec![], vec![]);
    let baseline = std::env::var("ENVBOX_BENCH_BASELINE").ok();
    let mut baseline_cold = vec![];
    let run_baseline = |baseline_cold: &mut Vec<Duration>| {
        if let Some(binary) = &baseline {
            let fs = FreshFs::new(work.path());
            let state = fs.mnt.join("state");
            baseline_cold.push(timed(|| {
                baseline_prepare(binary, &reference, &registry.host, &state)
            }));
        }
    };
    for run in 0..RUNS {
        // Whichever build goes first reads the registry's blobs colder: alternate.
        if run % 2 == 0 {
            run_baseline(&mut baseline_cold);
        }
        let fs = FreshFs::new(work.path());
        let state = fs.mnt.join("state");
        let prepare = || {
            let out = Command::new(ENVBOX)
                .args([
                    "prepare",
                    "--image",
                    &reference,
                    "--insecure-registries",
                    &registry.host,
                    "--state-dir",
                    state.to_str().unwrap(),
                ])
                .output()
                .expect("envbox prepare");
            assert!(
                out.status.success(),
                "envbox prepare: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        envbox_cold.push(timed(prepare));
        envbox_repeat.push(timed(prepare));
        drop(fs);
        if run % 2 == 1 {
            run_baseline(&mut baseline_cold);
        }

        let fs = FreshFs::new(work.path());
        let m = fs.mnt.display();
        umoci.push(timed(|| {
            sh(&format!(
                "skopeo copy -q --src-tls-verify=false docker://{reference} oci:{m}/oci:t
                 umoci raw unpack --image {m}/oci:t {m}/rootfs
                 chown -R --from=0:0 100000:100000 {m}/rootfs"
            ))
        }));
        drop(fs);

        let fs = FreshFs::new(work.path());
        let m = fs.mnt.display().to_string();
        let blobs: Vec<String> = info.layer_digests[0]
            .iter()
            .map(|d| format!("http://{}/v2/bench/big/blobs/{d}", registry.host))
            .collect();
        raw.push(timed(|| {
            let script: String = blobs
                .iter()
                .enumerate()
                .map(|(i, url)| {
                    format!(
                        "mkdir -p {m}/l{i} && curl -sfL {url} | gzip -dc | tar -x -C {m}/l{i} &\n"
                    )
                })
                .collect::<String>()
                + "wait";
            sh(&script);
        }));
        drop(fs);
    }
    row("envbox prepare, cold (pull + unpack, shifted)", envbox_cold);
    if let Some(binary) = &baseline {
        println!("baseline: {binary}");
        row("baseline envbox prepare, cold", baseline_cold);
    }
    row("skopeo copy + umoci raw unpack + chown", umoci);
    row("raw limit: curl | gzip -dc | tar -x, parallel", raw);
    row("envbox prepare, repeat (cached)", envbox_repeat);
}
