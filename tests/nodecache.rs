//! The node cache (`ENVBOX_NODE_CACHE`) with real workspaces (root): two `envbox docker`
//! processes, each with its own volume, run dir and network namespace (as two pods of a node
//! have), one node cache directory, a real registry behind a counting proxy, the real
//! containerd, runc and CNI plugins. Each pod's network namespace reaches the registry through
//! a relay on its own loopback (a pod reaches a registry on the network the same way).
//!
//! The two workspaces share one cgroup path here (a pod has its own cgroup on a node): runc
//! warns about it and runs both.

mod support;

use std::fs;
use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use envbox::digest::Digest;
use support::host::launch_requirements_met;
use support::image::{busybox_image, ImageSpec, LayoutInfo};
use support::proxy::{Fault, FaultProxy};
use support::registry::Registry;
use support::workspace::{enter_netns, Envbox};

const ENVBOX: &str = env!("CARGO_BIN_EXE_envbox");
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
const SCRIPT: &str = "echo ready > /home/coder/ready; exec sleep 3600";

fn hex(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

/// The busybox test image plus `layers` layers of pseudo-random bytes (see
/// `ImageSpec::random_layers`).
fn data_image(seed: u64, layers: usize, kib: usize) -> ImageSpec {
    busybox_image("amd64").random_layers(seed, layers, kib)
}

/// A network namespace of its own, removed on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(name: &str) -> Netns {
        let name = format!("envbox-nc-{name}-{}", std::process::id());
        if Path::new("/run/netns").join(&name).exists() {
            ip(&["netns", "del", &name]);
        }
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Relays `port` on this namespace's loopback to `port` on the test's loopback.
    fn relay(&self, port: u16) {
        let outer = fs::File::open("/proc/thread-self/ns/net").unwrap();
        let inner = fs::File::open(self.path()).unwrap();
        let (ready, bound) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // SAFETY: setns(2) of this thread only, to fds it owns.
            assert_eq!(
                unsafe { libc::setns(inner.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
            assert_eq!(
                unsafe { libc::setns(outer.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            ready.send(()).unwrap();
            for conn in listener.incoming() {
                let Ok(client) = conn else { return };
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", port)) else {
                    continue;
                };
                pipe(client.try_clone().unwrap(), upstream.try_clone().unwrap());
                pipe(upstream, client);
            }
        });
        bound.recv().unwrap();
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", text(&out.stderr));
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One pod of the node: its volume, run dir, home mount and network namespace.
struct Pod {
    _work: tempfile::TempDir,
    root: PathBuf,
    netns: Netns,
    env: Vec<(String, String)>,
}

impl Pod {
    fn new(name: &str, node: &Path, proxy: &FaultProxy, image: &str) -> Pod {
        let work = tempfile::Builder::new()
            .prefix(&format!("envbox-launch-node-{name}-"))
            .tempdir_in("/var/tmp")
            .unwrap();
        let root = work.path().to_owned();
        for dir in ["state", "run", "home"] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        let netns = Netns::new(name);
        netns.relay(proxy.host.rsplit(':').next().unwrap().parse().unwrap());
        let path = |p: &str| root.join(p).display().to_string();
        let env = [
            ("CODER_INNER_IMAGE", image.to_owned()),
            ("ENVBOX_INSECURE_REGISTRIES", proxy.host.clone()),
            ("CODER_INNER_USERNAME", "coder".to_owned()),
            ("CODER_BOOTSTRAP_SCRIPT", SCRIPT.to_owned()),
            ("CODER_AGENT_TOKEN", "token-of-the-node-test".to_owned()),
            ("CODER_MOUNTS", format!("{}:/home/coder", path("home"))),
            ("ENVBOX_RUNTIME", "runc".to_owned()),
            ("ENVBOX_STATE_DIR", path("state")),
            ("ENVBOX_RUN_DIR", path("run")),
            ("ENVBOX_STOP_TIMEOUT", "20s".to_owned()),
            ("ENVBOX_NODE_CACHE", node.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Pod {
            _work: work,
            root,
            netns,
            env,
        }
    }

    fn start(&self) -> Envbox {
        Envbox::start_in_netns(&self.env, &self.netns.path())
    }

    fn ready(&self) -> PathBuf {
        self.root.join("home/ready")
    }

    /// `envbox ARGS` in this pod's network namespace with its settings and `extra`.
    fn run(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut command = Command::new(ENVBOX);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra.iter().copied());
        enter_netns(&mut command, &self.netns.path());
        command.output().unwrap()
    }
}

fn wait_for_file(path: &Path, envbox: &mut Envbox, timeout: Duration) {
    let end = Instant::now() + timeout;
    while !path.exists() {
        if let Some(status) = envbox.child.try_wait().unwrap() {
            panic!(
                "envbox exited ({status}) before {path:?}:\n{}",
                envbox.log()
            );
        }
        assert!(Instant::now() < end, "no {path:?}:\n{}", envbox.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `M` of envbox's "Image ... ready: N layer(s), M unpacked now".
fn unpacked_now(log: &str) -> usize {
    let line = log
        .lines()
        .find(|l| l.contains(" unpacked now"))
        .unwrap_or_else(|| panic!("no ready line:\n{log}"));
    let at = line.find(" unpacked now").unwrap();
    line[..at].rsplit(' ').next().unwrap().parse().unwrap()
}

/// The names in `dir` not starting with a dot, sorted (none when it is absent).
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The chain IDs (hex) of an image's layers, bottom first (`envbox::unpack::chain_ids`).
fn chain_hexes(info: &LayoutInfo) -> Vec<String> {
    let diff_ids: Vec<Digest> = info.diff_ids[0]
        .iter()
        .map(|d| Digest::parse(d).unwrap())
        .collect();
    envbox::unpack::chain_ids(&diff_ids)
        .iter()
        .map(|c| c.hex().to_owned())
        .collect()
}

/// Every layer directory of the node cache has a completion marker naming it; no marker is
/// without its directory.
fn assert_consistent(node: &Path) {
    let chain = node.join("layers/chain");
    let dirs = names(&chain);
    let markers = names(&chain.join(".complete"));
    assert_eq!(dirs, markers, "every layer directory and its marker");
    for dir in &dirs {
        let record: serde_json::Value =
            serde_json::from_slice(&fs::read(chain.join(".complete").join(dir)).unwrap()).unwrap();
        assert_eq!(record["chain"], format!("sha256:{dir}"));
    }
}

#[test]
fn two_workspaces_of_one_node_download_and_unpack_each_layer_once() {
    if !launch_requirements_met("node cache test") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let registry = Registry::http();
    let info = registry.push_image(data_image(1, 3, 4096), "team/ws:1");
    let proxy = FaultProxy::start(&registry);
    // The first data layer is held a while, so that both pods are preparing at once.
    let first_data = &info.layer_digests[0][info.layer_digests[0].len() - 3];
    proxy.inject(Fault::Hold {
        path_contains: hex(first_data).to_owned(),
        until: "/nonexistent/never".into(),
        at_most: Duration::from_secs(2),
    });
    let node = tempfile::tempdir_in("/var/tmp").unwrap();
    let image = format!("{}/team/ws:1", proxy.host);
    let (a, b) = (
        Pod::new("a", node.path(), &proxy, &image),
        Pod::new("b", node.path(), &proxy, &image),
    );
    let (mut wa, mut wb) = (a.start(), b.start());
    wait_for_file(&a.ready(), &mut wa, Duration::from_secs(180));
    wait_for_file(&b.ready(), &mut wb, Duration::from_secs(180));

    let layers = info.layer_digests[0].len();
    assert_eq!(
        proxy.blob_gets(),
        layers + 1,
        "one GET per blob (config and {layers} layers) for both pods: {:?}",
        proxy.requests()
    );
    let (log_a, log_b) = (wa.log(), wb.log());
    assert_eq!(
        unpacked_now(&log_a) + unpacked_now(&log_b),
        layers,
        "each layer unpacked by one of them:\n--- a:\n{log_a}\n--- b:\n{log_b}"
    );
    assert!(log_a.contains("Using the node cache"), "{log_a}");
    let chains = chain_hexes(&info);
    assert_eq!(names(&node.path().join("layers/chain")), {
        let mut sorted = chains.clone();
        sorted.sort();
        sorted
    });
    assert_consistent(node.path());
    for pod in [&a, &b] {
        assert!(
            names(&pod.root.join("state/layers/chain")).is_empty(),
            "no layer on the pod's volume"
        );
        assert!(names(&pod.root.join("state/blobs/sha256")).is_empty());
        assert_eq!(
            names(&pod.root.join("state/refs")).len(),
            1,
            "the pin stays on the volume"
        );
    }
    assert_eq!(
        names(&node.path().join("leases")).len(),
        2,
        "one lease per workspace"
    );

    // Another image in the node cache that no workspace runs: the cleanup (TTL 0, no budget)
    // removes it and keeps every layer a live lease names.
    let other = registry.push_image(data_image(2, 1, 64), "team/other:1");
    let other_ref = format!("{}/team/other:1", proxy.host);
    let prepared = a.run(&["prepare"], &[("CODER_INNER_IMAGE", &other_ref)]);
    assert!(prepared.status.success(), "{}", text(&prepared.stderr));
    let other_top = chain_hexes(&other).pop().unwrap();
    assert!(node.path().join("layers/chain").join(&other_top).is_dir());
    let strict = [
        ("ENVBOX_NODE_CACHE_TTL", "0"),
        ("ENVBOX_NODE_CACHE_SIZE", "0"),
    ];
    let pruned = a.run(&["cache", "prune"], &strict);
    assert!(pruned.status.success(), "{}", text(&pruned.stderr));
    let said = text(&pruned.stdout);
    assert!(said.contains("(2 running;"), "{said}");
    let left = names(&node.path().join("layers/chain"));
    assert!(!left.contains(&other_top), "{said}");
    for chain in &chains {
        assert!(
            left.contains(chain),
            "{chain} of the running image was removed: {said}"
        );
    }
    assert_consistent(node.path());

    // A's envbox is killed (its workspace runs on, orphaned): its lease is dead, so only
    // b's keeps the layers now; the cleanup drops the dead lease.
    wa.signal(nix::sys::signal::Signal::SIGKILL);
    wa.wait_exit(Duration::from_secs(10));
    assert_eq!(names(&node.path().join("leases")).len(), 2);
    let pruned = a.run(&["cache", "prune"], &strict);
    assert!(pruned.status.success(), "{}", text(&pruned.stderr));
    assert!(
        text(&pruned.stdout).contains("(1 running;"),
        "{}",
        text(&pruned.stdout)
    );
    assert_eq!(
        names(&node.path().join("leases")).len(),
        1,
        "the dead lease is gone"
    );
    assert_eq!(names(&node.path().join("layers/chain")).len(), chains.len());

    // B stops cleanly: its lease goes with it.
    wb.stop_cleanly(Duration::from_secs(90));
    assert!(names(&node.path().join("leases")).is_empty());

    // A starts again from the node cache alone (clearing what its kill left), then stops.
    fs::remove_file(a.ready()).unwrap();
    proxy.clear_requests();
    let mut wa = a.start();
    wait_for_file(&a.ready(), &mut wa, Duration::from_secs(180));
    assert_eq!(proxy.blob_gets(), 0, "{:?}", proxy.requests());
    assert_eq!(unpacked_now(&wa.log()), 0, "{}", wa.log());
    wa.stop_cleanly(Duration::from_secs(90));

    // Nothing names the layers any more.
    let pruned = a.run(&["cache", "prune"], &strict);
    assert!(pruned.status.success(), "{}", text(&pruned.stderr));
    assert!(names(&node.path().join("leases")).is_empty());
    assert!(names(&node.path().join("layers/chain")).is_empty());
    assert!(names(&node.path().join("blobs/sha256")).is_empty());
}

#[test]
fn a_workspace_killed_mid_unpack_leaves_the_other_to_start_and_the_cache_consistent() {
    if !launch_requirements_met("node cache test") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let registry = Registry::http();
    let info = registry.push_image(data_image(3, 2, 8192), "team/kill:1");
    let proxy = FaultProxy::start(&registry);
    let signals = tempfile::tempdir().unwrap();
    let release = signals.path().join("release");
    let stalled = &info.layer_digests[0][info.layer_digests[0].len() - 1];
    proxy.inject(Fault::StallMidBody {
        path_contains: hex(stalled).to_owned(),
        after_bytes: 2 << 20,
        until: release.clone(),
        at_most: Duration::from_secs(120),
    });
    let node = tempfile::tempdir_in("/var/tmp").unwrap();
    let image = format!("{}/team/kill:1", proxy.host);
    let (a, b) = (
        Pod::new("ka", node.path(), &proxy, &image),
        Pod::new("kb", node.path(), &proxy, &image),
    );
    let mut wa = a.start();
    // A is mid-unpack of the stalled layer: its staging directory is there.
    let staging = node.path().join("layers/chain/.staging");
    let end = Instant::now() + Duration::from_secs(120);
    while fs::read_dir(&staging).map_or(0, |d| d.count()) == 0 {
        assert!(
            Instant::now() < end,
            "a never started unpacking:\n{}",
            wa.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut wb = b.start();
    wb.wait_for(
        "Waiting for another envbox process",
        Duration::from_secs(120),
    );
    wa.signal(nix::sys::signal::Signal::SIGKILL);
    wa.wait_exit(Duration::from_secs(10));
    fs::File::create(&release).unwrap().flush().unwrap();

    wait_for_file(&b.ready(), &mut wb, Duration::from_secs(180));
    assert_consistent(node.path());
    let chains = chain_hexes(&info);
    for chain in &chains {
        let marker = node.path().join("layers/chain/.complete").join(chain);
        assert!(marker.is_file(), "{chain}: {}", wb.log());
    }
    // What a's kill left in staging is never taken as a layer, and goes at the next open.
    let again = b.run(&["prepare"], &[]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(
        text(&again.stderr).contains("0 of"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(fs::read_dir(&staging).unwrap().count(), 0);
    assert_eq!(
        fs::read_dir(node.path().join("staging")).unwrap().count(),
        0
    );
    assert_consistent(node.path());

    wb.stop_cleanly(Duration::from_secs(90));
}

/// A volume filled before the node cache was turned on: its cleanup with the node cache keeps
/// the pins and removes the volume's blobs and layers (the node cache holds what is used).
#[test]
fn a_volume_from_before_the_node_cache_keeps_its_pins_and_drops_its_blobs_and_layers() {
    if !support::host::requirements_met("node cache cleanup of a volume", false) {
        return;
    }
    let registry = Registry::http();
    registry.push_image(data_image(4, 1, 64), "team/before:1");
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let (state, node) = (work.path().join("state"), work.path().join("node"));
    fs::create_dir_all(&node).unwrap();
    let image = format!("{}/team/before:1", registry.host);
    let run = |args: &[&str], extra: &[(&str, &str)]| {
        let out = Command::new(ENVBOX)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("ENVBOX_STATE_DIR", &state)
            .env("ENVBOX_INSECURE_REGISTRIES", &registry.host)
            .env("CODER_INNER_IMAGE", &image)
            .envs(extra.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    run(&["prepare"], &[]);
    assert_eq!(
        names(&state.join("layers/chain")).len(),
        4,
        "busybox (3) and one data layer"
    );
    let node_env = [("ENVBOX_NODE_CACHE", node.to_str().unwrap())];
    let said = run(&["cache", "prune"], &node_env);
    assert!(
        said.contains("from the volume, what it held from before the node cache"),
        "{said}"
    );
    assert!(names(&state.join("layers/chain")).is_empty(), "{said}");
    assert!(names(&state.join("blobs/sha256")).is_empty(), "{said}");
    assert_eq!(names(&state.join("refs")).len(), 1, "the pin stays");
    // The next prepare fills the node cache.
    run(&["prepare"], &node_env);
    assert_eq!(names(&node.join("layers/chain")).len(), 4);
    assert!(names(&state.join("layers/chain")).is_empty());
}
