//! The envbox side of the warm start benchmark: one `envbox docker` timed from spawn to the
//! bootstrap's marker, its progress lines' arrival recorded, the rootfs and the state directory
//! checked while it runs, then stopped with SIGTERM (untimed, exit 0 checked).

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{wait_for_file, POLL, TIMEOUT};

/// envbox's progress lines whose arrival is reported (stage boundaries seen from outside).
pub const MILESTONES: &[&str] = &[
    "Starting containerd",
    "Preparing image",
    "is ready (",
    "ready:",
    "Workspace network",
    "Workspace container started",
    "Bootstrap script running",
    "Workspace is up",
];

/// Bytes allocated under `dir` on its own filesystem (mounts below it, such as the overlay's
/// merged root and the read-only view of the layer store, are not entered), each hard-linked
/// file once: what `du -sx` counts.
pub fn disk_usage(dir: &Path) -> u64 {
    // A bind mount of the same filesystem has the same device: skipped by its mount point.
    let mounts: std::collections::HashSet<std::path::PathBuf> =
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(std::path::PathBuf::from))
            .collect();
    fn walk(
        dir: &Path,
        dev: u64,
        seen: &mut std::collections::HashSet<u64>,
        mounts: &std::collections::HashSet<std::path::PathBuf>,
    ) -> u64 {
        let Ok(entries) = fs::read_dir(dir) else {
            return 0;
        };
        let mut total = 0;
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.dev() != dev
                || (meta.nlink() > 1 && !meta.is_dir() && !seen.insert(meta.ino()))
                || mounts.contains(&entry.path())
            {
                continue;
            }
            total += meta.blocks() * 512;
            if meta.is_dir() {
                total += walk(&entry.path(), dev, seen, mounts);
            }
        }
        total
    }
    let Ok(meta) = fs::metadata(dir) else {
        return 0;
    };
    meta.blocks() * 512 + walk(dir, meta.dev(), &mut Default::default(), &mounts)
}

/// PIDs of running `envbox docker` processes (any build).
fn envbox_dockers() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            let mut args = cmdline.split(|b| *b == 0);
            let program = args.next()?;
            (program.ends_with(b"envbox") && args.next() == Some(b"docker")).then_some(pid)
        })
        .collect()
}

/// Waits until no other `envbox docker` runs on this machine: they share the bridge `envbox0`
/// (a start removes a bridge it finds), so two at once break each other and the timings.
fn wait_alone() {
    let end = Instant::now() + Duration::from_secs(600);
    loop {
        let others = envbox_dockers();
        if others.is_empty() {
            return;
        }
        assert!(
            Instant::now() < end,
            "another envbox docker kept running: {others:?}"
        );
        eprintln!(
            "waiting: another envbox docker is running ({others:?}); the bridge envbox0 is shared"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// One timed warm start of `envbox docker`.
pub struct EnvboxRun {
    pub total: Duration,
    /// Arrival of each milestone line, from spawn.
    pub milestones: Vec<Option<Duration>>,
    pub overlay: bool,
    pub state_growth: u64,
    pub upper: u64,
    /// SIGTERM to exit (not part of the start).
    pub stop: Duration,
    /// With `ENVBOX_BENCH_STAGES` (envbox's `ENVBOX_LOG=debug`): each `start: <stage>` debug
    /// line's stage and its arrival, from spawn.
    pub stages: Vec<(String, Duration)>,
}

/// The stage a `debug: start: <stage> (ms=...)` progress line names.
fn stage_of(line: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let output = value["output"].as_str()?;
    let rest = output.strip_prefix("debug: start: ")?;
    Some(rest.split(" (").next().unwrap_or(rest).to_owned())
}

pub fn envbox_run(
    binary: &str,
    env: &[(String, String)],
    state: &Path,
    marker: &Path,
) -> EnvboxRun {
    wait_alone();
    let _ = fs::remove_file(marker);
    let before = disk_usage(state);
    let started = Instant::now();
    let mut child = Command::new(binary)
        .arg("docker")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn envbox docker");
    let lines: Arc<Mutex<Vec<(Duration, String)>>> = Arc::default();
    let reader = {
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push((started.elapsed(), line));
            }
        })
    };
    let log = || {
        let lines = lines.lock().unwrap();
        lines
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    };
    wait_for_file(
        marker,
        "envbox docker",
        || child.try_wait().unwrap().is_none(),
        log,
    );
    let total = started.elapsed();
    // The script runs a little before envbox says the workspace is up; a SIGTERM before that
    // is a stop during the start (exit 1).
    let end = Instant::now() + TIMEOUT;
    while !log().contains(r#""type":"done""#) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "envbox docker exited:\n{}",
            log()
        );
        assert!(Instant::now() < end, "no done line:\n{}", log());
        std::thread::sleep(POLL);
    }

    let merged = state.join("container/merged");
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let overlay = mountinfo.lines().any(|l| {
        l.split(' ').nth(4) == Some(merged.to_str().unwrap()) && l.contains(" - overlay ")
    });
    let state_growth = disk_usage(state).saturating_sub(before);
    let upper = disk_usage(&state.join("container/upper"));

    let stopping = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM envbox");
    let status = child.wait().expect("wait envbox");
    let stop = stopping.elapsed();
    reader.join().expect("stderr reader");
    assert!(
        status.success(),
        "envbox docker after SIGTERM: {status}\n{}",
        log()
    );
    let lines = lines.lock().unwrap();
    let milestones = MILESTONES
        .iter()
        .map(|m| lines.iter().find(|(_, l)| l.contains(m)).map(|(t, _)| *t))
        .collect();
    let stages = lines
        .iter()
        .filter_map(|(t, l)| stage_of(l).map(|s| (s, *t)))
        .collect();
    EnvboxRun {
        total,
        milestones,
        stages,
        overlay,
        state_growth,
        upper,
        stop,
    }
}
