//! The volume over time, with real envbox processes against a real registry (root): several
//! processes on one volume (each blob fetched once, locks released by a kill -9).

mod support;

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::host::requirements_met;
use support::image::{write_layout, Entry, ImageSpec, Layer, LayoutInfo};
use support::proxy::{Fault, FaultProxy};
use support::registry::Registry;

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

/// An image of `layers` layers, each one file of `kib` KiB of pseudo-random bytes (they do
/// not compress) unique to `seed`.
fn random_image(seed: u64, layers: usize, kib: usize) -> ImageSpec {
    let mut image = ImageSpec::new("amd64");
    for l in 0..layers {
        let bytes = support::image::prng_bytes(seed << 16 | l as u64, kib << 10);
        image = image.layer(Layer::new(vec![Entry::file(
            &format!("/s{seed}-l{l}.bin"),
            0o644,
            bytes,
        )]));
    }
    image
}

/// Pushes `image` as `repo` (e.g. `team/a:1`); its layout's digests.
fn push(registry: &Registry, image: ImageSpec, repo: &str) -> LayoutInfo {
    let layout = tempfile::tempdir().unwrap();
    let info = write_layout(layout.path(), "t", &[image]);
    registry.push(layout.path(), "t", repo);
    info
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
    let info = push(&registry, random_image(1, 3, 2048), "team/two:1");
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
        both.contains(
            "Waiting for another envbox process on this volume: it is downloading layer 1 of 3"
        ),
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
    let info = push(&registry, random_image(2, 1, 1024), "team/kill:1");
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
