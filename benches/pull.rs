//! `make bench`: pull throughput from a loopback registry, envbox beside `skopeo copy` of the
//! same image in the same run (benchmarking.md: compare side by side, several runs, min and
//! median). Not a test: it asserts nothing and prints a table.
//!
//! The image is built by the test harness (several layers of incompressible data, gzip), pushed
//! to Debian's distribution registry on 127.0.0.1, then pulled RUNS times by each tool into a
//! fresh directory. The registry's files are in the page cache after the push: these are warm
//! loopback figures. envbox verifies every digest and size while writing; skopeo copy to `dir:`
//! verifies digests too.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use envbox::cache::BlobStore;
use envbox::image::ImageRef;
use envbox::registry::{self, RegistryConfig};
use support::image::{big_image, write_layout};
use support::registry::Registry;

const RUNS: usize = 5;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn stats(mut times: Vec<Duration>) -> (Duration, Duration) {
    times.sort();
    (times[0], times[times.len() / 2])
}

fn row(tool: &str, bytes: u64, times: Vec<Duration>) {
    let (min, median) = stats(times);
    let mbps = |d: Duration| bytes as f64 / 1e6 / d.as_secs_f64();
    println!(
        "{tool:<28} min {:>6.2} s ({:>6.0} MB/s)   median {:>6.2} s ({:>6.0} MB/s)",
        min.as_secs_f64(),
        mbps(min),
        median.as_secs_f64(),
        mbps(median)
    );
}

fn main() {
    let total_mb = env_u64("ENVBOX_BENCH_MB", 400);
    let layers = env_u64("ENVBOX_BENCH_LAYERS", 6) as usize;
    let layout = tempfile::tempdir().expect("layout dir");
    let info = write_layout(layout.path(), "bench", &[big_image(total_mb, layers)]);
    let registry = Registry::http();
    registry.push(layout.path(), "bench", "bench/big:1");
    let reference = format!("{}/bench/big:1", registry.host);
    let bytes = info.total_layer_bytes;
    println!(
        "pull benchmark: {} MB in {layers} gzip layers from a loopback registry (warm), {RUNS} runs each, fresh target dir per run",
        bytes / 1_000_000
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let config = RegistryConfig {
        insecure: vec![registry.host.clone()],
        ..RegistryConfig::default()
    };
    let parsed = ImageRef::parse(&reference).expect("reference");
    let mut envbox_times = Vec::new();
    let mut skopeo_times = Vec::new();
    for _ in 0..RUNS {
        let state = tempfile::tempdir_in("/var/tmp").expect("state dir");
        let store = BlobStore::open(state.path()).expect("store");
        let started = Instant::now();
        runtime
            .block_on(registry::pull(&config, &store, &parsed))
            .expect("envbox pull");
        envbox_times.push(started.elapsed());

        let target = tempfile::tempdir_in("/var/tmp").expect("skopeo dir");
        let started = Instant::now();
        let out = std::process::Command::new("skopeo")
            .args([
                "copy",
                "--src-tls-verify=false",
                &format!("docker://{reference}"),
                &format!("dir:{}", target.path().display()),
            ])
            .output()
            .expect("skopeo");
        assert!(
            out.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        skopeo_times.push(started.elapsed());
    }
    row("envbox pull (verified)", bytes, envbox_times);
    row("skopeo copy -> dir:", bytes, skopeo_times);
}
