//! The volume over time, with real envbox processes against a real registry (root): several
//! processes on one volume (each blob fetched once, locks released by a kill -9).

mod support;

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::host::requirements_met;
use support::image::{Entry, ImageSpec, Layer, LayoutInfo};
use support::proxy::{Fault, FaultProxy};
use support::registry::Registry;
use support::volume::{OverlayMount, SmallVolume};

const ENVBOX: &str = env!("CARGO_BIN_EXE_envbox");

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `envbox ARGS` with only `env` (and PATH) set.
fn envbox(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(ENVBOX);
    command
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .envs(env.iter().copied());
    command
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    envbox(args, env).output().expect("run envbox")
}

/// An image of `layers` layers of pseudo-random bytes unique to `seed` (see
/// `ImageSpec::random_layers`).
fn random_image(seed: u64, layers: usize, kib: usize) -> ImageSpec {
    ImageSpec::new("amd64").random_layers(seed, layers, kib)
}

fn hex(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

/// Whether some process holds the volume lock file `name` (a non-blocking flock fails).
fn lock_held(state: &Path, name: &str) -> bool {
    let Ok(file) = std::fs::File::open(state.join("locks").join(name)) else {
        return false;
    };
    // SAFETY: flock on a descriptor owned by `file` for the call.
    let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    !taken
}

#[test]
fn two_processes_preparing_one_image_fetch_each_blob_once() {
    if !requirements_met("two envbox processes on one volume", false) {
        return;
    }
    let registry = Registry::http();
    let info = registry.push_image(random_image(1, 3, 2048), "team/two:1");
    let proxy = FaultProxy::start(&registry);
    // The first layer's transfer is held a while: whoever fetches it holds its lock that long,
    // and the other process waits on it.
    proxy.inject(Fault::Hold {
        path_contains: hex(&info.layer_digests[0][0]).to_owned(),
        until: "/nonexistent/never".into(),
        at_most: Duration::from_secs(2),
    });
    let state = tempfile::tempdir_in("/var/tmp").unwrap();
    let reference = format!("{}/team/two:1", proxy.host);
    let env = [
        ("ENVBOX_STATE_DIR", state.path().to_str().unwrap()),
        ("ENVBOX_INSECURE_REGISTRIES", proxy.host.as_str()),
        ("CODER_INNER_IMAGE", reference.as_str()),
    ];
    let spawn = || {
        envbox(&["prepare"], &env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let (a_err, b_err) = (text(&a.stderr), text(&b.stderr));
    assert!(a.status.success(), "{a_err}");
    assert!(b.status.success(), "{b_err}");
    // The config and 3 layers: one GET each (the held one is recorded as held once).
    assert_eq!(
        proxy.blob_gets(),
        4,
        "{:?}\n--- a:\n{a_err}\n--- b:\n{b_err}",
        proxy.requests()
    );
    let both = format!("{a_err}{b_err}");
    assert!(
        both.contains(&format!(
            "Waiting for another envbox process using {}: it is downloading layer 1 of 3",
            state.path().display()
        )),
        "the waiting process says what it waits for:\n{both}"
    );
    // Each layer was unpacked by one of them.
    let unpacked = |err: &str| -> usize {
        let at = err.find(" of 3 layer(s) unpacked").expect("prepared line");
        err[..at].rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(unpacked(&a_err) + unpacked(&b_err), 3, "{both}");
}

#[test]
fn a_kill_9_releases_the_locks_its_process_held() {
    if !requirements_met("kill -9 of a lock holder", false) {
        return;
    }
    let registry = Registry::http();
    let info = registry.push_image(random_image(2, 1, 1024), "team/kill:1");
    let proxy = FaultProxy::start(&registry);
    let layer = hex(&info.layer_digests[0][0]).to_owned();
    proxy.inject(Fault::Hold {
        path_contains: layer.clone(),
        until: "/nonexistent/never".into(),
        at_most: Duration::from_secs(60),
    });
    let state = tempfile::tempdir_in("/var/tmp").unwrap();
    let reference = format!("{}/team/kill:1", proxy.host);
    let env = [
        ("ENVBOX_STATE_DIR", state.path().to_str().unwrap()),
        ("ENVBOX_INSECURE_REGISTRIES", proxy.host.as_str()),
        ("CODER_INNER_IMAGE", reference.as_str()),
    ];
    let mut child = envbox(&["prepare"], &env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock = format!("blob-{layer}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lock_held(state.path(), &lock) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(lock_held(state.path(), &lock), "the layer's lock was taken");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    assert!(
        !lock_held(state.path(), &lock),
        "the kernel released the lock of the killed process"
    );
    proxy.clear_faults();
    let started = Instant::now();
    let out = run(&["prepare"], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("Waiting for another envbox process"),
        "nobody holds the lock any more: {}",
        text(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(state.path().join("blobs/sha256").join(&layer).is_file());
}

/// The names of the layer directories in the store.
fn layer_dirs(state: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(state.join("layers/chain"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// The references `envbox cache ls` lists as pinned.
fn pinned(env: &[(&str, &str)]) -> Vec<String> {
    let out = run(&["cache", "ls"], env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut pins: Vec<String> = text(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("pin  "))
        .map(|l| l.split(" -> ").next().unwrap().to_owned())
        .collect();
    pins.sort();
    pins
}

/// The layer directory names of an image (its chain IDs).
fn dirs_of(info: &LayoutInfo) -> Vec<String> {
    let diff_ids: Vec<envbox::digest::Digest> = info.diff_ids[0]
        .iter()
        .map(|d| envbox::digest::Digest::parse(d).unwrap())
        .collect();
    envbox::unpack::chain_ids(&diff_ids)
        .iter()
        .map(|c| c.hex().to_owned())
        .collect()
}

#[test]
fn cleanup_keeps_the_current_image_and_the_most_recently_used_before_it() {
    if !requirements_met("cache cleanup rule", false) {
        return;
    }
    let registry = Registry::http();
    let names = ["a", "b", "c", "d"];
    let infos: Vec<LayoutInfo> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            registry.push_image(random_image(10 + i as u64, 2, 64), &format!("team/{n}:1"))
        })
        .collect();
    let host = registry.host.clone();
    let reference = |n: &str| format!("{host}/team/{n}:1");
    let state = tempfile::tempdir_in("/var/tmp").unwrap();
    let env = [
        ("ENVBOX_STATE_DIR", state.path().to_str().unwrap()),
        ("ENVBOX_INSECURE_REGISTRIES", host.as_str()),
    ];
    // Used in the order a, b, c, d; then a again: a is the most recently used.
    for n in ["a", "b", "c", "d", "a"] {
        let out = run(&["prepare", "--image", &reference(n)], &env);
        assert!(out.status.success(), "{}", text(&out.stderr));
        // Last use is the pin's modification time: apart by more than a kernel tick.
        std::thread::sleep(Duration::from_millis(30));
    }
    // Current: c; kept besides it: the 2 most recently used others, a and d.
    let out = run(
        &[
            "cache",
            "prune",
            "--image",
            &reference("c"),
            "--keep-images",
            "2",
        ],
        &env,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains("and 2 unpacked layer(s); kept 3 image(s)"),
        "{said}"
    );
    let mut expected: Vec<String> = [&infos[0], &infos[2], &infos[3]]
        .into_iter()
        .flat_map(dirs_of)
        .collect();
    expected.sort();
    assert_eq!(layer_dirs(state.path()), expected, "{said}");
    let mut pins: Vec<String> = ["a", "c", "d"].iter().map(|n| reference(n)).collect();
    pins.sort();
    assert_eq!(pinned(&env), pins);
    // b's blobs are gone, the others' are all there.
    let blob = |d: &str| state.path().join("blobs/sha256").join(hex(d));
    assert!(!blob(&infos[1].layer_digests[0][0]).exists());
    assert!(!blob(&infos[1].config_digests[0]).exists());
    for info in [&infos[0], &infos[2], &infos[3]] {
        assert!(blob(&info.config_digests[0]).is_file());
        assert!(blob(&info.manifest_digests[0]).is_file());
        for layer in &info.layer_digests[0] {
            assert!(blob(layer).is_file());
        }
    }

    // Without --image the most recently used (a) is current; the default keeps 1 more (d,
    // used after c).
    let out = run(&["cache", "prune"], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut expected: Vec<String> = [&infos[0], &infos[3]]
        .into_iter()
        .flat_map(dirs_of)
        .collect();
    expected.sort();
    assert_eq!(layer_dirs(state.path()), expected, "{}", text(&out.stdout));
    let mut pins: Vec<String> = ["a", "d"].iter().map(|n| reference(n)).collect();
    pins.sort();
    assert_eq!(pinned(&env), pins);
    // What was kept starts without the network.
    drop(registry);
    let out = run(&["prepare", "--image", &reference("d")], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("0 of 2 layer(s) unpacked"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_bad_keep_images_is_refused_naming_the_variable() {
    let state = tempfile::tempdir().unwrap();
    let out = run(
        &["cache", "prune"],
        &[
            ("ENVBOX_STATE_DIR", state.path().to_str().unwrap()),
            ("ENVBOX_KEEP_IMAGES", "-1"),
        ],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("invalid ENVBOX_KEEP_IMAGES (--keep-images) \"-1\": expected a whole number"),
        "{err}"
    );
}

#[test]
fn cleanup_never_removes_the_layers_a_mounted_overlay_uses() {
    if !requirements_met("cache cleanup beside a mounted overlay", false) {
        return;
    }
    let registry = Registry::http();
    let a = registry.push_image(random_image(20, 2, 64), "team/a:1");
    let b = registry.push_image(random_image(21, 1, 64), "team/b:1");
    let state = tempfile::tempdir_in("/var/tmp").unwrap();
    let env = [
        ("ENVBOX_STATE_DIR", state.path().to_str().unwrap()),
        ("ENVBOX_INSECURE_REGISTRIES", registry.host.as_str()),
    ];
    for n in ["a", "b"] {
        let out = run(
            &[
                "prepare",
                "--image",
                &format!("{}/team/{n}:1", registry.host),
            ],
            &env,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    // a's rootfs as envbox docker mounts it (its envbox gone: only the mount tells).
    let container = state.path().join("container");
    for dir in ["l", "upper", "work", "merged"] {
        std::fs::create_dir_all(container.join(dir)).unwrap();
    }
    let dirs = dirs_of(&a);
    let mut lowers = Vec::new();
    for (i, dir) in dirs.iter().rev().enumerate() {
        let link = container.join("l").join(i.to_string());
        std::os::unix::fs::symlink(state.path().join("layers/chain").join(dir), &link).unwrap();
        lowers.push(link);
    }
    let merged = container.join("merged");
    let lowers: Vec<&Path> = lowers.iter().map(|l| l.as_path()).collect();
    let _mounted = OverlayMount::new(
        &merged,
        &lowers,
        &container.join("upper"),
        &container.join("work"),
    );
    let out = run(&["cache", "prune", "--keep-images", "0"], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut expected: Vec<String> = dirs.iter().cloned().chain(dirs_of(&b)).collect();
    expected.sort();
    assert_eq!(layer_dirs(state.path()), expected, "{}", text(&out.stdout));
    assert!(merged.join("s20-l1.bin").is_file());
}

fn small_volume_requirements(what: &str) -> bool {
    requirements_met(what, false)
        && support::host::root_and_tools_met(what, &[("mkfs.ext4", "e2fsprogs")])
}

/// Nothing half-written: no staging file or directory, and no layer directory of `info`'s.
fn assert_nothing_half_written(state: &Path, info: &LayoutInfo) {
    for dir in ["staging", "layers/chain/.staging"] {
        let left: Vec<_> = std::fs::read_dir(state.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "{dir}: {left:?}");
    }
    for dir in dirs_of(info) {
        assert!(!state.join("layers/chain").join(dir).exists());
    }
}

#[test]
fn a_volume_too_small_for_a_download_fails_naming_need_free_and_what_to_do() {
    if !small_volume_requirements("no space left during a pull") {
        return;
    }
    let volume = SmallVolume::new(24);
    let registry = Registry::http();
    // 40 MiB that do not compress.
    let info = registry.push_image(random_image(30, 1, 40 << 10), "team/big:1");
    let state = volume.state();
    let reference = format!("{}/team/big:1", registry.host);
    let env = [
        ("ENVBOX_STATE_DIR", state.to_str().unwrap()),
        ("ENVBOX_INSECURE_REGISTRIES", registry.host.as_str()),
        ("CODER_INNER_IMAGE", reference.as_str()),
    ];
    let out = run(&["prepare"], &env);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("it will not fit unless other images are removed"),
        "the check before the pull:\n{err}"
    );
    assert!(
        err.contains("is full (") && err.contains("then trying again"),
        "{err}"
    );
    let volume_name = format!("the volume at {}", volume.path().display());
    assert!(
        err.contains(&format!(
            "error: {volume_name} (ENVBOX_STATE_DIR {}) is full: the image needs about",
            state.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("to download, about") && err.contains("is free after removing"),
        "{err}"
    );
    assert!(
        err.contains("Make room: give the volume more space, lower ENVBOX_KEEP_IMAGES"),
        "{err}"
    );
    assert!(err.contains("No space left on device"), "the cause: {err}");
    assert_nothing_half_written(&state, &info);
    assert!(!state
        .join("blobs/sha256")
        .join(hex(&info.layer_digests[0][0]))
        .exists());
}

#[test]
fn a_volume_too_small_to_unpack_fails_and_keeps_no_partial_layer() {
    if !small_volume_requirements("no space left during an unpack") {
        return;
    }
    let volume = SmallVolume::new(24);
    let registry = Registry::http();
    // 64 MiB of zeros: a tiny blob, a large file.
    let image = ImageSpec::new("amd64").layer(Layer::new(vec![Entry::file(
        "/zeros.bin",
        0o644,
        vec![0u8; 64 << 20],
    )]));
    let info = registry.push_image(image, "team/zeros:1");
    let state = volume.state();
    let reference = format!("{}/team/zeros:1", registry.host);
    let env = [
        ("ENVBOX_STATE_DIR", state.to_str().unwrap()),
        ("ENVBOX_INSECURE_REGISTRIES", registry.host.as_str()),
        ("CODER_INNER_IMAGE", reference.as_str()),
    ];
    let out = run(&["prepare"], &env);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("is full: the image needs about"), "{err}");
    assert!(
        err.contains("writing \"zeros.bin\""),
        "the cause names the file: {err}"
    );
    assert_nothing_half_written(&state, &info);
    // The blob itself was verified and stays.
    assert!(state
        .join("blobs/sha256")
        .join(hex(&info.layer_digests[0][0]))
        .is_file());
}

#[test]
fn a_full_volume_removes_the_images_the_rule_does_not_keep_and_tries_again() {
    if !small_volume_requirements("no space left, cleaned up, tried again") {
        return;
    }
    let volume = SmallVolume::new(40);
    let registry = Registry::http();
    let a = registry.push_image(random_image(40, 1, 12 << 10), "team/a:1");
    let b = registry.push_image(random_image(41, 1, 12 << 10), "team/b:1");
    let state = volume.state();
    let env = [
        ("ENVBOX_STATE_DIR", state.to_str().unwrap()),
        ("ENVBOX_INSECURE_REGISTRIES", registry.host.as_str()),
    ];
    let image = |n: &str| format!("{}/team/{n}:1", registry.host);
    let out = run(&["prepare", "--image", &image("a")], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Kept by the default rule (the one image used before b), a leaves no room for b.
    let out = run(&["prepare", "--image", &image("b")], &env);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("ENVBOX_KEEP_IMAGES=1"), "{err}");
    assert_eq!(layer_dirs(&state), dirs_of(&a), "{err}");
    // With none kept besides the current image, a goes and b fits.
    let out = run(
        &["prepare", "--image", &image("b"), "--keep-images", "0"],
        &env,
    );
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("is full (") && err.contains("Removed 3 blob(s)"),
        "{err}"
    );
    assert_eq!(layer_dirs(&state), dirs_of(&b), "{err}");
}

#[test]
fn a_nearly_full_volume_names_what_inner_docker_uses_and_how_to_reclaim_it() {
    if !small_volume_requirements("nearly full volume warning") {
        return;
    }
    let volume = SmallVolume::new(24);
    let state = volume.state();
    std::fs::create_dir_all(&state).unwrap();
    let docker = volume.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let outer = docker.to_str().unwrap();
    let data = [(outer, "/var/lib/docker")];
    let threshold = envbox::room::NEARLY_FULL_PERCENT;
    assert_eq!(envbox::room::nearly_full(&state, &data, threshold), None);
    std::fs::write(docker.join("layer.tar"), vec![7u8; 20 << 20]).unwrap();
    let line = envbox::room::nearly_full(&state, &data, threshold).expect("over 90% full");
    assert!(line.contains("% full ("), "{line}");
    assert!(
        line.contains(&format!(
            "{outer} (/var/lib/docker inside the workspace) uses 21.0 MB"
        )),
        "{line}"
    );
    assert!(
        line.contains("`docker system prune` inside the workspace"),
        "{line}"
    );
}
