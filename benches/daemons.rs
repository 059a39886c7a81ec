//! `make bench` (third part): containerd's time to ready through `supervise::Daemons::start`
//! (config written, spawn, `Version` answering, plugin check), with containerd's defaults
//! (CRI on), with only CRI disabled, and with envbox's trimmed plugin list. Each variant runs
//! on a fresh metadata root (first start of a workspace) and again on the same root (restart),
//! the variants interleaved, several runs: min and median (benchmarking.md: two shared cores).
//! Needs root and `containerd`.

use std::path::Path;
use std::time::{Duration, Instant};

use envbox::config::Runtime;
use envbox::supervise::{
    CgroupSetup, ContainerdOptions, DaemonConfig, Daemons, SysboxOptions, DISABLED_PLUGINS,
};

const RUNS: usize = 7;

fn config(state: &Path, run: &Path, disabled: &[&str]) -> DaemonConfig {
    DaemonConfig {
        runtime: Runtime::Runc,
        state_dir: state.into(),
        run_dir: run.into(),
        cgroups: CgroupSetup::Skip,
        containerd: ContainerdOptions {
            disabled_plugins: disabled.iter().map(|p| (*p).to_owned()).collect(),
            ..ContainerdOptions::default()
        },
        sysbox: SysboxOptions::default(),
        stop_grace: Duration::from_secs(10),
    }
}

async fn time_start(config: &DaemonConfig) -> Duration {
    let started = Instant::now();
    let daemons = Daemons::start(config).await.expect("containerd starts");
    let elapsed = started.elapsed();
    let problems = daemons.stop().await;
    assert!(problems.is_empty(), "{problems:?}");
    elapsed
}

fn summary(times: &mut [Duration]) -> String {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "min {:6.1} ms  median {:6.1} ms  max {:6.1} ms",
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1])
    )
}

#[tokio::main]
async fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: the daemons benchmark needs root");
        return;
    }
    let variants: [(&str, &[&str]); 3] = [
        ("defaults (CRI on)", &[]),
        ("CRI off", &["io.containerd.grpc.v1.cri"]),
        ("envbox trimmed", DISABLED_PLUGINS),
    ];
    let mut fresh = vec![Vec::new(); variants.len()];
    let mut restart = vec![Vec::new(); variants.len()];
    for _ in 0..RUNS {
        for (i, (_, disabled)) in variants.iter().enumerate() {
            let dir = tempfile::tempdir().expect("tempdir");
            let config = config(&dir.path().join("state"), &dir.path().join("run"), disabled);
            fresh[i].push(time_start(&config).await);
            restart[i].push(time_start(&config).await);
        }
    }
    println!("\ncontainerd start to ready through Daemons::start, {RUNS} runs each:");
    for (i, (name, _)) in variants.iter().enumerate() {
        println!("  {name:18} fresh root:   {}", summary(&mut fresh[i]));
        println!("  {name:18} same root:    {}", summary(&mut restart[i]));
    }
}
