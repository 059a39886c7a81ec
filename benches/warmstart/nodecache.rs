//! The node cache beside the warm start (issue 23), in one run, each through a counting proxy
//! in front of the registry: a warm start of one workspace (its volume and the node cache warm),
//! a new workspace (empty volume) with the node cache warm, and a cold start (empty volume,
//! empty node cache). Goal: the new workspace within 1.5x the warm start with no blob
//! downloaded. Then a new workspace of an image sharing all but its top layer with the cached
//! one: only the config and that layer are downloaded.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::proxy::FaultProxy;
use crate::support::registry::Registry;
use crate::workspace::envbox_run;
use crate::{row, run_ok};

/// `env` with the state dir `state`, the node cache `node` and the image `image`.
fn with(
    env: &[(String, String)],
    state: &Path,
    node: &Path,
    proxy: &FaultProxy,
    image: &str,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "ENVBOX_STATE_DIR" | "CODER_INNER_IMAGE" | "ENVBOX_INSECURE_REGISTRIES"
            )
        })
        .cloned()
        .collect();
    env.extend(
        [
            ("ENVBOX_STATE_DIR", state.display().to_string()),
            ("ENVBOX_NODE_CACHE", node.display().to_string()),
            ("CODER_INNER_IMAGE", image.to_owned()),
            ("ENVBOX_INSECURE_REGISTRIES", proxy.host.clone()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    env
}

/// A fresh directory `name` under `work` (an earlier one removed).
fn fresh(work: &Path, name: &str) -> PathBuf {
    let dir = work.join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("bench dir");
    dir
}

/// Pushes `reference`'s image with one more small layer as `bench/warm:2`: unpacked, a file
/// added, committed by `umoci repack` (Debian's umoci 0.4.7 `insert` writes a layer whose tar
/// stream stops inside the entry's padding, which GNU tar refuses too).
fn push_derived(work: &Path, registry: &Registry, reference: &str) -> String {
    let layout = fresh(work, "derived-layout");
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .arg(format!("oci:{}:warm", layout.display())),
    );
    let bundle = work.join("derived-bundle");
    let _ = fs::remove_dir_all(&bundle);
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:warm", layout.display()))
            .arg(&bundle),
    );
    fs::write(
        bundle.join("rootfs/etc/envbox-bench-added"),
        "a layer the cached image does not have\n",
    )
    .expect("extra");
    run_ok(
        Command::new("umoci")
            .args(["repack", "--image"])
            .arg(format!("{}:derived", layout.display()))
            .arg(&bundle),
    );
    fs::remove_dir_all(&bundle).expect("remove bundle");
    registry.push(&layout, "derived", "bench/warm:2");
    fs::remove_dir_all(&layout).expect("remove layout");
    format!("{}/bench/warm:2", registry.host)
}

/// Times the three starts, `runs` each, order rotated; then the derived image once.
pub fn bench(
    binary: &str,
    env: &[(String, String)],
    work: &Path,
    marker: &Path,
    registry: &Registry,
    reference: &str,
    runs: usize,
) {
    let proxy = FaultProxy::start(registry);
    let image = reference.replacen(&registry.host, &proxy.host, 1);
    let node = fresh(work, "node-cache");
    let warm_state = fresh(work, "nc-warm-state");
    // Untimed: the node cache and one workspace's volume filled.
    envbox_run(
        binary,
        &with(env, &warm_state, &node, &proxy, &image),
        &warm_state,
        marker,
    );
    println!(
        "node cache (ENVBOX_NODE_CACHE), {runs} runs each, order rotated, spawn to the marker:"
    );
    let (mut warm, mut new, mut cold) = (Vec::new(), Vec::new(), Vec::new());
    let mut new_gets = Vec::new();
    for run in 0..runs {
        for turn in 0..3 {
            match (run + turn) % 3 {
                0 => {
                    let env = with(env, &warm_state, &node, &proxy, &image);
                    warm.push(envbox_run(binary, &env, &warm_state, marker).total);
                }
                1 => {
                    let state = fresh(work, "nc-new-state");
                    proxy.clear_requests();
                    let env = with(env, &state, &node, &proxy, &image);
                    new.push(envbox_run(binary, &env, &state, marker).total);
                    new_gets.push(proxy.blob_gets());
                }
                _ => {
                    let state = fresh(work, "nc-cold-state");
                    let empty = fresh(work, "nc-cold-node");
                    let env = with(env, &state, &empty, &proxy, &image);
                    cold.push(envbox_run(binary, &env, &state, marker).total);
                }
            }
        }
    }
    let (_, warm_median) = row("warm start (this workspace's volume warm)", &warm);
    let (_, new_median) = row("new workspace (empty volume, node cache warm)", &new);
    row("cold start (empty volume, empty node cache)", &cold);
    println!(
        "  new workspace / warm start: median {:.2}x (goal <= 1.5x); blob GETs of the new workspaces: {:?} (goal: all 0)",
        new_median.as_secs_f64() / warm_median.as_secs_f64(),
        new_gets
    );

    let derived = push_derived(work, registry, reference);
    let derived = derived.replacen(&registry.host, &proxy.host, 1);
    let state = fresh(work, "nc-derived-state");
    proxy.clear_requests();
    let env = with(env, &state, &node, &proxy, &derived);
    let started = envbox_run(binary, &env, &state, marker).total;
    let got: Vec<String> = proxy
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/"))
        .map(|r| {
            r.path
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .chars()
                .take(19)
                .collect()
        })
        .collect();
    println!(
        "  new workspace of the image plus one layer: {:.1} ms; blobs downloaded: {} ({:?}; goal: its config and the added layer only)",
        started.as_secs_f64() * 1000.0,
        got.len(),
        got
    );
}
