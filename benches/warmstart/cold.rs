//! The cold start beside the warm one: `envbox docker` on an empty volume (the image only in
//! the registry) against the same work in two steps, `envbox prepare` (the image pulled and
//! unpacked into the cache, synced to disk at exit as it does by default) then a warm start
//! on that volume. Also `envbox prepare --no-sync` (as `envbox docker` prepares: it does not
//! wait for the disk). Each contender gets a fresh, empty state directory per run, removed
//! afterwards and the page cache written back (`sync`, untimed); they take turns, as the warm
//! start's do. This build only.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::workspace::envbox_run;
use crate::{ms, row, run_ok};

/// `env` with its state directory replaced by `state`.
fn with_state(env: &[(String, String)], state: &Path) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| match k.as_str() {
            "ENVBOX_STATE_DIR" => (k.clone(), state.display().to_string()),
            _ => (k.clone(), v.clone()),
        })
        .collect()
}

/// `envbox prepare` (with `args`) into `state`, timed.
fn prepare(build: &str, env: &[(String, String)], args: &[&str]) -> Duration {
    let started = Instant::now();
    run_ok(
        Command::new(build)
            .arg("prepare")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k, v))),
    );
    started.elapsed()
}

/// Times `runs` cold starts and prepare + warm starts of `build` (each on a fresh state
/// directory under `work`).
pub fn bench(build: &str, env: &[(String, String)], work: &Path, marker: &Path, runs: usize) {
    if runs == 0 {
        return;
    }
    let mut cold = Vec::new();
    let (mut prepared, mut warm, mut two_step, mut no_sync) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        for turn in 0..3 {
            let state = work.join(format!("cold-state-{run}-{turn}"));
            let env = with_state(env, &state);
            match (run + turn) % 3 {
                0 => cold.push(envbox_run(build, &env, &state, marker).total),
                1 => {
                    let p = prepare(build, &env, &[]);
                    let w = envbox_run(build, &env, &state, marker).total;
                    prepared.push(p);
                    warm.push(w);
                    two_step.push(p + w);
                }
                _ => no_sync.push(prepare(build, &env, &["--no-sync"])),
            }
            fs::remove_dir_all(&state).expect("remove the cold start's state dir");
            // What one contender left dirty is written back before the next (untimed), not
            // during it.
            run_ok(&mut Command::new("sync"));
        }
    }
    println!(
        "cold start: an empty volume each run, the image in a local registry, {runs} runs each:"
    );
    let (c_min, c_median) = row("envbox docker (cold), spawn to the marker", &cold);
    row("  envbox prepare (synced at exit)", &prepared);
    row("  then envbox docker (warm), spawn to the marker", &warm);
    let (t_min, t_median) = row("envbox prepare + warm envbox docker", &two_step);
    row("(envbox prepare --no-sync)", &no_sync);
    println!(
        "ratio cold / (prepare + warm): min {:.2}x, median {:.2}x (goal <= 1.2x; {:.0} ms vs {:.0} ms median)",
        c_min.as_secs_f64() / t_min.as_secs_f64(),
        c_median.as_secs_f64() / t_median.as_secs_f64(),
        ms(c_median),
        ms(t_median)
    );
}
