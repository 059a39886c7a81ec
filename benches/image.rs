//! `make bench` (second half): cold pull+unpack of multi-layer images from a loopback registry,
//! envbox beside the other ways to get the same tree, in the same run:
//! - `envbox prepare --no-sync` (pull, verify, unpack every layer shifted by +100000), as
//!   `envbox docker` gets an image ready: the layers reach the disk in the background once the
//!   workspace runs (crash-safe meanwhile), and none of the other tools waits for the disk
//!   either; the ratios are to this one;
//! - `envbox prepare`: the same, then one `syncfs` so that the volume is durable at exit;
//! - `skopeo copy` + `umoci raw unpack` + the +100000 chown pass that umoci needs for the shift
//!   (`chown -R --from=0:0`: every entry of these images is 0:0);
//! - containerd: `ctr image pull` through a private containerd (own root, state and socket on
//!   the fresh filesystem) into its overlayfs snapshotter (fetch + unpack, no shift);
//! - the raw limit: `curl | gzip -dc | tar -x` of the layers, all in parallel;
//!
//! plus a repeat `envbox prepare` of the cached image. Two images: few large files
//! (`big_image`, 400 MB in 6 layers) and a distribution-like tree (`many_files_image`, 40k
//! files, ~550 MB in 5 layers). Ratios are the tool's time over envbox's (min over min,
//! median over median), and the goals are checked against the medians.
//!
//! benchmarking.md: every timed unpack writes into a freshly made journaled ext4 on a loop
//! device; tools run side by side in the same run, several runs, min and median. Needs root
//! (mount), skopeo, umoci, containerd + ctr, curl, gzip, tar. `ENVBOX_BENCH_RUNS` (5; medians
//! of 3 moved the umoci ratio by ~10% from bench to bench), `ENVBOX_BENCH_MB` (400),
//! `ENVBOX_BENCH_LAYERS` (6), `ENVBOX_BENCH_FILES` (40000) and `ENVBOX_BENCH_IMAGES`
//! (`big,files`) change the runs and images; `ENVBOX_BENCH_TOOLS`
//! (`envbox,umoci,containerd,raw`) which tools run (envbox always does: ratios are to it);
//! `ENVBOX_BENCH_BASELINE=/path/to/envbox` times another envbox build beside this one, each
//! run on its own fresh filesystem (a before/after comparison in one run).
//! `ENVBOX_BENCH_LINK=1gbit` (unset: none) puts a `tc tbf` rate limit on `lo` for the timed
//! runs, for every tool alike: a registry across a network, where the downloads, not the CPU,
//! are the limit (the unpack of a layer then overlaps its download: see `crate::prepare`).

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "image/containerd.rs"]
mod containerd;
#[path = "image/fresh_fs.rs"]
mod fresh_fs;

use std::process::Command;
use std::time::Duration;

use containerd::Containerd;
use fresh_fs::{sh, timed, FreshFs};
use support::image::{big_image, many_files_image, write_layout, ImageSpec};
use support::registry::Registry;

const ENVBOX: &str = env!("CARGO_BIN_EXE_envbox");

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// min and median.
fn stats(times: &[Duration]) -> (f64, f64) {
    let mut times = times.to_vec();
    times.sort();
    (times[0].as_secs_f64(), times[times.len() / 2].as_secs_f64())
}

/// Times of one image, per tool.
#[derive(Default)]
struct Times {
    envbox: Vec<Duration>,
    durable: Vec<Duration>,
    repeat: Vec<Duration>,
    umoci: Vec<Duration>,
    containerd: Vec<Duration>,
    raw: Vec<Duration>,
    baseline: Vec<Duration>,
}

/// Which contenders run beside envbox.
struct Tools {
    umoci: bool,
    containerd: bool,
    raw: bool,
    /// Another envbox build (`ENVBOX_BENCH_BASELINE`).
    baseline: Option<String>,
}

impl Tools {
    fn from_env() -> Tools {
        let list = std::env::var("ENVBOX_BENCH_TOOLS")
            .unwrap_or_else(|_| "envbox,umoci,containerd,raw".into());
        let names: Vec<&str> = list.split(',').map(str::trim).collect();
        for name in &names {
            assert!(
                ["envbox", "umoci", "containerd", "raw"].contains(name),
                "ENVBOX_BENCH_TOOLS: unknown tool {name:?} (envbox, umoci, containerd, raw)"
            );
        }
        Tools {
            umoci: names.contains(&"umoci"),
            containerd: names.contains(&"containerd"),
            raw: names.contains(&"raw"),
            baseline: std::env::var("ENVBOX_BENCH_BASELINE").ok(),
        }
    }
}

/// How `envbox prepare` runs: as `envbox docker` unpacks (`--no-sync`), or durable at exit.
#[derive(Clone, Copy)]
enum Sync {
    Deferred,
    AtExit,
}

fn prepare(
    envbox: &str,
    reference: &str,
    registry_host: &str,
    state: &std::path::Path,
    sync: Sync,
) {
    let mut command = Command::new(envbox);
    command.args([
        "prepare",
        "--image",
        reference,
        "--insecure-registries",
        registry_host,
        "--state-dir",
    ]);
    command.arg(state);
    if let Sync::Deferred = sync {
        command.arg("--no-sync");
    }
    let out = command.output().expect("envbox prepare");
    assert!(
        out.status.success(),
        "envbox prepare: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One image: built, pushed, then `runs` cold runs of every tool, each on a fresh filesystem.
fn bench_image(name: &str, image: ImageSpec, runs: usize, tools: &Tools) {
    let work = tempfile::tempdir_in("/var/tmp").expect("work dir");
    let layout = work.path().join("layout");
    let info = write_layout(&layout, "bench", &[image]);
    let registry = Registry::http();
    registry.push(&layout, "bench", &format!("bench/{name}:1"));
    std::fs::remove_dir_all(&layout).expect("remove the layout");
    let reference = format!("{}/bench/{name}:1", registry.host);
    let blobs: Vec<String> = info.layer_digests[0]
        .iter()
        .map(|d| format!("http://{}/v2/bench/{name}/blobs/{d}", registry.host))
        .collect();

    let _link = std::env::var("ENVBOX_BENCH_LINK").ok().map(|rate| {
        println!("link: lo limited to {rate} (tc tbf)");
        LinkLimit::new(&rate)
    });
    let mut t = Times::default();
    for _ in 0..runs {
        let fs = FreshFs::new(work.path());
        let state = fs.mnt.join("state");
        let host = &registry.host;
        t.envbox.push(timed(|| {
            prepare(ENVBOX, &reference, host, &state, Sync::Deferred)
        }));
        // The repeat is of a cached image already on disk (a sync in between, untimed).
        prepare(ENVBOX, &reference, host, &state, Sync::AtExit);
        t.repeat.push(timed(|| {
            prepare(ENVBOX, &reference, host, &state, Sync::AtExit)
        }));
        drop(fs);

        let fs = FreshFs::new(work.path());
        let state = fs.mnt.join("state");
        t.durable.push(timed(|| {
            prepare(ENVBOX, &reference, host, &state, Sync::AtExit)
        }));
        drop(fs);

        if let Some(other) = &tools.baseline {
            let fs = FreshFs::new(work.path());
            let state = fs.mnt.join("state");
            t.baseline.push(timed(|| {
                prepare(other, &reference, host, &state, Sync::Deferred)
            }));
            drop(fs);
        }

        if tools.umoci {
            let fs = FreshFs::new(work.path());
            let m = fs.mnt.display();
            t.umoci.push(timed(|| {
                sh(&format!(
                    "skopeo copy -q --src-tls-verify=false docker://{reference} oci:{m}/oci:t
                 umoci raw unpack --image {m}/oci:t {m}/rootfs
                 chown -R --from=0:0 100000:100000 {m}/rootfs"
                ))
            }));
            drop(fs);
        }

        if tools.containerd {
            let fs = FreshFs::new(work.path());
            let containerd = Containerd::start(&fs.mnt.join("containerd"));
            t.containerd.push(timed(|| containerd.pull(&reference)));
            drop(containerd);
            drop(fs);
        }

        if tools.raw {
            let fs = FreshFs::new(work.path());
            let m = fs.mnt.display().to_string();
            t.raw.push(timed(|| {
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
    }
    report(name, &info, runs, &t);
}

fn report(name: &str, info: &support::image::LayoutInfo, runs: usize, t: &Times) {
    println!(
        "\nimage {name}: {} MB compressed in {} gzip layers; loopback registry, fresh ext4 per run, {runs} runs",
        info.total_layer_bytes / 1_000_000,
        info.layer_digests[0].len(),
    );
    let (e_min, e_med) = stats(&t.envbox);
    let row = |tool: &str, times: &[Duration]| {
        if times.is_empty() {
            return None;
        }
        let (min, med) = stats(times);
        println!(
            "  {tool:<48} min {min:>7.2} s   median {med:>7.2} s   x envbox {:>5.2} / {:>5.2}",
            min / e_min,
            med / e_med
        );
        Some(med / e_med)
    };
    row("envbox prepare --no-sync, cold (as `docker`)", &t.envbox);
    row("envbox prepare, cold, durable at exit", &t.durable);
    row("baseline envbox build (ENVBOX_BENCH_BASELINE)", &t.baseline);
    let umoci = row("skopeo copy + umoci raw unpack + chown", &t.umoci);
    let ctr = row("containerd: ctr image pull (fetch + unpack)", &t.containerd);
    let raw = row("raw limit: curl | gzip -dc | tar -x, parallel", &t.raw);
    let (r_min, r_med) = stats(&t.repeat);
    println!(
        "  {:<48} min {:>7.0} ms  median {:>7.0} ms",
        "envbox prepare, repeat (cached)",
        r_min * 1e3,
        r_med * 1e3
    );
    let verdict = |ratio: Option<f64>, ok: fn(f64) -> bool| match ratio {
        None => "not run",
        Some(r) if ok(r) => "met",
        Some(_) => "MISSED",
    };
    println!(
        "  goals (medians): >=5x skopeo+umoci+chown {}; >=3x containerd {}; within 1.3x of the raw limit {}; repeat < 100 ms {}",
        verdict(umoci, |r| r >= 5.0),
        verdict(ctr, |r| r >= 3.0),
        verdict(raw, |r| r >= 1.0 / 1.3),
        verdict(Some(r_med), |r| r < 0.1),
    );
}

/// A rate limit on the loopback link while it lives (`tc qdisc ... tbf`), removed on drop.
struct LinkLimit;

impl LinkLimit {
    fn new(rate: &str) -> LinkLimit {
        assert!(
            rate.bytes().all(|b| b.is_ascii_alphanumeric()),
            "ENVBOX_BENCH_LINK: a rate such as 1gbit or 500mbit, not {rate:?}"
        );
        sh(&format!(
            "tc qdisc replace dev lo root tbf rate {rate} burst 256kb latency 50ms"
        ));
        LinkLimit
    }
}

impl Drop for LinkLimit {
    fn drop(&mut self) {
        let _ = Command::new("tc")
            .args(["qdisc", "del", "dev", "lo", "root"])
            .status();
    }
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the image benchmark needs root (it mounts fresh ext4 filesystems)");
        return;
    }
    let runs = env_usize("ENVBOX_BENCH_RUNS", 5).max(1);
    let tools = Tools::from_env();
    let images = std::env::var("ENVBOX_BENCH_IMAGES").unwrap_or_else(|_| "big,files".into());
    for name in images.split(',') {
        match name {
            "big" => {
                let mb = env_usize("ENVBOX_BENCH_MB", 400) as u64;
                let layers = env_usize("ENVBOX_BENCH_LAYERS", 6);
                bench_image("big", big_image(mb, layers), runs, &tools);
            }
            "files" => {
                let files = env_usize("ENVBOX_BENCH_FILES", 40_000);
                bench_image("files", many_files_image(files), runs, &tools);
            }
            other => panic!("ENVBOX_BENCH_IMAGES: unknown image {other:?} (big, files)"),
        }
    }
}
