//! `envbox prepare` against a real registry: the cache fills so a later start needs no network,
//! and `--output` writes a bundle that plain `runc run` starts (root, runc, busybox needed).

mod support;

use std::process::{Command, Output};

use support::host::{requirements_met, RuncContainer};
use support::image::{busybox_image, write_layout};
use support::proxy::{Fault, FaultProxy};
use support::registry::Registry;

const ENVBOX: &str = env!("CARGO_BIN_EXE_envbox");

fn envbox(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(ENVBOX)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .envs(env.iter().copied())
        .output()
        .expect("run envbox")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn push_busybox(registry: &Registry) -> String {
    let layout = tempfile::tempdir().unwrap();
    write_layout(layout.path(), "t", &[busybox_image("amd64")]);
    registry.push(layout.path(), "t", "team/bb:1");
    format!("{}/team/bb:1", registry.host)
}

/// A registry holding busybox (`team/bb:1`) and a fresh state directory, and the environment
/// that points envbox at both.
struct Volume {
    registry: std::cell::RefCell<Option<Registry>>,
    host: String,
    reference: String,
    state: tempfile::TempDir,
}

impl Volume {
    fn with_busybox() -> Volume {
        let registry = Registry::http();
        let reference = push_busybox(&registry);
        Volume {
            host: registry.host.clone(),
            registry: std::cell::RefCell::new(Some(registry)),
            reference,
            state: tempfile::tempdir_in("/var/tmp").unwrap(),
        }
    }

    fn env(&self) -> [(&'static str, &str); 3] {
        [
            ("ENVBOX_STATE_DIR", self.state().to_str().unwrap()),
            ("ENVBOX_INSECURE_REGISTRIES", &self.host),
            ("CODER_INNER_IMAGE", &self.reference),
        ]
    }

    fn state(&self) -> &std::path::Path {
        self.state.path()
    }

    /// The registry goes away: from now on the network has nothing to offer.
    fn offline(&self) {
        self.registry.borrow_mut().take();
    }
}

#[test]
fn prepare_fills_the_cache_and_a_later_run_needs_no_network() {
    if !requirements_met("prepare test", false) {
        return;
    }
    let volume = Volume::with_busybox();
    let env = volume.env();
    let first = envbox(&["prepare"], &env);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(
        text(&first.stderr).contains("3 of 3 layer(s) unpacked"),
        "{}",
        text(&first.stderr)
    );
    let layers: Vec<_> = std::fs::read_dir(volume.state().join("layers/chain"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(layers.len(), 3);

    volume.offline();
    let offline = envbox(&["prepare"], &env);
    let err = text(&offline.stderr);
    assert!(offline.status.success(), "{err}");
    assert!(
        err.contains("could not reach the registry") && err.contains("0 of 3 layer(s) unpacked"),
        "{err}"
    );
    assert!(err.contains("0 blob(s) downloaded"), "{err}");
}

/// The unsynced markers `envbox prepare --no-sync` leaves in a store (`layers/chain` or
/// `blobs`).
fn markers(state: &std::path::Path, store: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(state.join(store).join(".unsynced"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// What a machine restart before the writeback looks like to a store: its markers name
/// another boot.
fn restart(state: &std::path::Path, store: &str) {
    let dir = state.join(store).join(".unsynced");
    for name in markers(state, store) {
        let (entry, _) = name.split_once('.').unwrap();
        let earlier = format!("{entry}.00000000-0000-0000-0000-000000000000");
        std::fs::rename(dir.join(&name), dir.join(earlier)).unwrap();
    }
}

fn this_boot() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    boot.trim().to_owned()
}

#[test]
fn layers_left_unsynced_are_redone_after_a_restart_and_prepare_leaves_none_unsynced() {
    if !requirements_met("prepare --no-sync test", false) {
        return;
    }
    let volume = Volume::with_busybox();
    let env = volume.env();
    // --no-sync: every layer and every streamed blob (the config and the 3 layers) published
    // with a marker naming this boot (the manifest is fsync'd as it is stored, never marked).
    let quick = envbox(&["prepare", "--no-sync"], &env);
    assert!(quick.status.success(), "{}", text(&quick.stderr));
    let marked = markers(volume.state(), "layers/chain");
    assert_eq!(marked.len(), 3, "{marked:?}");
    let blobs = markers(volume.state(), "blobs");
    assert_eq!(blobs.len(), 4, "{blobs:?}");
    assert!(
        marked
            .iter()
            .chain(&blobs)
            .all(|m| m.ends_with(&this_boot())),
        "{marked:?} {blobs:?}"
    );
    // A pull syncs the blobs before it exits (cached ones too): no blob is left marked.
    let pull = envbox(&["pull"], &env);
    assert!(pull.status.success(), "{}", text(&pull.stderr));
    assert_eq!(markers(volume.state(), "blobs"), Vec::<String>::new());

    // A machine restart before the layers' writeback, and a layer's file lost its data. The
    // next prepare unpacks those layers again (from the cached blobs: the registry is gone)
    // and leaves everything synced, no marker.
    volume.offline();
    restart(volume.state(), "layers/chain");
    let torn = volume
        .state()
        .join("layers/chain")
        .join(marked[0].split_once('.').unwrap().0);
    let file = walk_files(&torn)
        .into_iter()
        .next()
        .expect("a file in the layer");
    let before = std::fs::read(&file).unwrap();
    std::fs::write(&file, b"").unwrap();
    let after = envbox(&["prepare"], &env);
    let err = text(&after.stderr);
    assert!(after.status.success(), "{err}");
    assert!(err.contains("3 of 3 layer(s) unpacked"), "{err}");
    assert!(err.contains("0 blob(s) downloaded"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), before);
    assert_eq!(
        markers(volume.state(), "layers/chain"),
        Vec::<String>::new()
    );
}

#[test]
fn blobs_left_unsynced_are_fetched_again_after_a_restart() {
    if !requirements_met("prepare --no-sync test", false) {
        return;
    }
    let volume = Volume::with_busybox();
    let env = volume.env();
    let quick = envbox(&["prepare", "--no-sync"], &env);
    assert!(quick.status.success(), "{}", text(&quick.stderr));
    let blobs = markers(volume.state(), "blobs");
    assert_eq!(blobs.len(), 4, "{blobs:?}");

    // A machine restart before any writeback: the marked blobs and layers may be torn, so
    // the next prepare fetches the config and layer blobs again (not the fsync'd manifest)
    // and unpacks every layer again; then nothing is left marked.
    restart(volume.state(), "blobs");
    restart(volume.state(), "layers/chain");
    let after = envbox(&["prepare"], &env);
    let err = text(&after.stderr);
    assert!(after.status.success(), "{err}");
    assert!(err.contains("3 of 3 layer(s) unpacked"), "{err}");
    assert!(err.contains("4 blob(s) downloaded"), "{err}");
    assert_eq!(markers(volume.state(), "blobs"), Vec::<String>::new());
    assert_eq!(
        markers(volume.state(), "layers/chain"),
        Vec::<String>::new()
    );
    for name in blobs {
        let (hex, _) = name.split_once('.').unwrap();
        assert!(volume.state().join("blobs/sha256").join(hex).is_file());
    }
}

/// Regular files under `dir`, depth first.
fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            files.extend(walk_files(&entry.path()));
        } else if kind.is_file() && entry.metadata().unwrap().len() > 0 {
            files.push(entry.path());
        }
    }
    files
}

#[test]
fn prepare_output_is_a_bundle_runc_runs() {
    if !requirements_met("prepare --output test", true) {
        return;
    }
    let registry = Registry::http();
    let reference = push_busybox(&registry);
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let state = work.path().join("state");
    let bundle = work.path().join("bundle");
    let run_dir = work.path().join("run");
    let out = envbox(
        &[
            "prepare",
            "--output",
            bundle.to_str().unwrap(),
            "--username",
            "coder",
            "--hostname",
            "bundle-test",
        ],
        &[
            ("ENVBOX_STATE_DIR", state.to_str().unwrap()),
            ("ENVBOX_RUN_DIR", run_dir.to_str().unwrap()),
            ("ENVBOX_INSECURE_REGISTRIES", registry.host.as_str()),
            ("CODER_INNER_IMAGE", reference.as_str()),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    use std::os::unix::fs::MetadataExt;
    let busybox = std::fs::symlink_metadata(bundle.join("rootfs/bin/busybox")).unwrap();
    assert_eq!(
        (busybox.uid(), busybox.gid()),
        (100_000, 100_000),
        "unpacked shifted"
    );
    let config = std::fs::metadata(bundle.join("config.json")).unwrap();
    assert_eq!(
        config.mode() & 0o777,
        0o600,
        "the spec may hold the agent token"
    );

    let container = RuncContainer::start(
        &bundle,
        &format!("envbox-bundle-{}", std::process::id()),
        &work.path().join("log"),
    );
    container.assert_envbox_id_maps();
    assert_eq!(container.stdout("hostname"), "bundle-test");
    assert_eq!(
        container.stdout("stat -c %u /bin/busybox"),
        "0",
        "the image's root owns its files inside"
    );
    assert!(container.stdout("cat /etc/passwd").contains("coder:x:1000"));
    assert_eq!(
        container.stdout("stat -c %u:%g /home/coder"),
        "0:0",
        "the test image creates it as root"
    );
}

/// An image without `/etc/passwd` runs as root as runc and Docker run it: uid 0, gid 0, home
/// `/root`.
#[test]
fn a_bundle_as_root_needs_no_passwd_file() {
    if !requirements_met("prepare --output as root test", false) {
        return;
    }
    use support::image::{Entry, ImageSpec, Layer};
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let layout = work.path().join("layout");
    write_layout(
        &layout,
        "t",
        &[ImageSpec::new("amd64").layer(Layer::new(vec![
            Entry::dir("/bin", 0o755),
            Entry::file("/bin/hello", 0o755, "#!/bin/sh\n"),
        ]))],
    );
    let bundle = work.path().join("bundle");
    let image = format!("oci:{}:t", layout.display());
    let out = envbox(
        &[
            "prepare",
            "--output",
            bundle.to_str().unwrap(),
            "--username",
            "root",
        ],
        &[
            (
                "ENVBOX_STATE_DIR",
                work.path().join("state").to_str().unwrap(),
            ),
            ("ENVBOX_RUN_DIR", work.path().join("run").to_str().unwrap()),
            ("CODER_INNER_IMAGE", image.as_str()),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["process"]["user"]["uid"], 0);
    assert_eq!(config["process"]["user"]["gid"], 0);
}

#[test]
fn docker_fails_clearly_without_sysbox_or_without_the_user_and_leaves_nothing_mounted() {
    if !requirements_met("docker entrypoint test", false) {
        return;
    }
    let registry = Registry::http();
    let reference = push_busybox(&registry);
    let state = tempfile::tempdir_in("/var/tmp").unwrap();
    let run_dir = state.path().join("run");
    let env = |user: &'static str, runtime: &'static str| {
        vec![
            (
                "ENVBOX_STATE_DIR",
                state.path().to_str().unwrap().to_owned(),
            ),
            ("ENVBOX_RUN_DIR", run_dir.to_str().unwrap().to_owned()),
            ("ENVBOX_INSECURE_REGISTRIES", registry.host.clone()),
            ("ENVBOX_RUNTIME", runtime.to_owned()),
            ("CODER_INNER_IMAGE", reference.clone()),
            ("CODER_INNER_USERNAME", user.to_owned()),
        ]
    };
    let run = |user, runtime| {
        let vars = env(user, runtime);
        let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        envbox(&["docker"], &pairs)
    };
    // The default runtime is sysbox-runc, which this machine lacks: its daemons cannot start.
    let out = run("coder", "sysbox-runc");
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("\"type\":\"error\"")
            && err.contains("sysbox-mgr")
            && err.contains("ENVBOX_RUNTIME=runc"),
        "{err}"
    );

    let out = run("alice", "runc");
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("alice") && err.contains("not found in the image"),
        "{err}"
    );
    assert_eq!(
        err.matches("not found in the image").count(),
        1,
        "the cause is said once: {err}"
    );
    assert!(
        !state.path().join("container/merged/bin").exists(),
        "the rootfs was released"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(state.path().to_str().unwrap()), "{mounts}");
}

#[test]
fn cache_prune_removes_the_blobs_and_layers_of_other_images() {
    if !requirements_met("cache prune test", false) {
        return;
    }
    let registry = Registry::http();
    let a = push_busybox(&registry);
    let layout = tempfile::tempdir().unwrap();
    let other = support::image::ImageSpec::new("amd64").layer(support::image::Layer::new(vec![
        support::image::Entry::file("only-in-b", 0o644, b"b".to_vec()),
    ]));
    let info = write_layout(layout.path(), "t", &[other]);
    registry.push(layout.path(), "t", "team/b:1");
    let b = format!("{}/team/b:1", registry.host);
    let state = tempfile::tempdir_in("/var/tmp").unwrap();
    let env = [
        ("ENVBOX_STATE_DIR", state.path().to_str().unwrap()),
        ("ENVBOX_INSECURE_REGISTRIES", registry.host.as_str()),
    ];
    for image in [&a, &b] {
        let out = envbox(&["prepare", "--image", image], &env);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let b_layer_dir = layer_dir(state.path(), &info.diff_ids[0], 0);
    assert!(b_layer_dir.is_dir());
    // A layer directory of the earlier layout (keyed by diff ID, unpacked without its lower
    // layers): no image uses it, prune removes it.
    let legacy = state.path().join("layers").join(hex(&info.diff_ids[0][0]));
    std::fs::create_dir_all(legacy.join("etc")).unwrap();
    // b was used after a: with one earlier image kept (the default), b would stay.
    let out = envbox(
        &["cache", "prune", "--image", &a, "--keep-images", "0"],
        &env,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!legacy.exists(), "the earlier layout's layer was pruned");
    assert!(
        text(&out.stdout).contains("2 unpacked layer(s)"),
        "{}",
        text(&out.stdout)
    );
    assert!(!b_layer_dir.exists(), "b's unpacked layer was pruned");
    let again = envbox(&["prepare", "--image", &a], &env);
    assert!(
        text(&again.stderr).contains("0 of 3 layer(s) unpacked"),
        "a's layers were kept: {}",
        text(&again.stderr)
    );
}

#[test]
fn a_kill_9_mid_unpack_leaves_nothing_a_later_start_takes_as_complete() {
    if !requirements_met("kill -9 test", false) {
        return;
    }
    let registry = Registry::http();
    let layout = tempfile::tempdir().unwrap();
    let info = write_layout(layout.path(), "t", &[support::image::big_image(120, 2)]);
    registry.push(layout.path(), "t", "team/big:1");
    let reference = format!("{}/team/big:1", registry.host);
    let state = tempfile::tempdir_in("/var/tmp").unwrap();
    let staging = state.path().join("layers/chain/.staging");
    let mut child = Command::new(ENVBOX)
        .args([
            "prepare",
            "--image",
            &reference,
            "--insecure-registries",
            &registry.host,
        ])
        .args(["--state-dir", state.path().to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let unpacking = || {
        std::fs::read_dir(&staging)
            .map(|d| d.count() > 0)
            .unwrap_or(false)
    };
    while !unpacking() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(unpacking(), "never saw a layer being unpacked");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    assert!(unpacking(), "the killed unpack left its staging directory");
    let complete: Vec<_> = (0..info.diff_ids[0].len())
        .filter(|i| layer_dir(state.path(), &info.diff_ids[0], *i).exists())
        .collect();
    assert!(
        complete.len() < info.diff_ids[0].len(),
        "the kill came before every layer was complete"
    );

    let out = envbox(
        &[
            "prepare",
            "--image",
            &reference,
            "--insecure-registries",
            &registry.host,
            "--state-dir",
            state.path().to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!unpacking(), "the stale staging directory was swept");
    for i in 0..info.diff_ids[0].len() {
        assert!(layer_dir(state.path(), &info.diff_ids[0], i).is_dir());
    }
}

/// Two or more small layers, each one file.
fn small_layers(count: usize) -> support::image::ImageSpec {
    let mut image = support::image::ImageSpec::new("amd64");
    for i in 0..count {
        image = image.layer(support::image::Layer::new(vec![
            support::image::Entry::file(&format!("/layer{i}"), 0o644, vec![i as u8; 4096]),
        ]));
    }
    image
}

/// Where the layer store keeps layer `index` of an image with these diff IDs: keyed by the
/// layer's chain ID.
fn layer_dir(state: &std::path::Path, diff_ids: &[String], index: usize) -> std::path::PathBuf {
    let diff_ids: Vec<envbox::digest::Digest> = diff_ids
        .iter()
        .map(|d| envbox::digest::Digest::parse(d).unwrap())
        .collect();
    let chain = &envbox::unpack::chain_ids(&diff_ids)[index];
    state.join("layers/chain").join(chain.hex())
}

fn hex(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

/// `envbox::prepare::prepare` of `reference` through `proxy`, `downloads` blobs at a time.
fn prepare_via(
    proxy: &FaultProxy,
    reference: &str,
    state: &std::path::Path,
    downloads: usize,
) -> Result<envbox::prepare::PreparedImage, envbox::prepare::PrepareError> {
    let config = envbox::registry::RegistryConfig {
        insecure: vec![proxy.host.clone()],
        max_concurrent_downloads: downloads,
        ..envbox::registry::RegistryConfig::default()
    };
    let source = envbox::image::ImageRef::parse(&format!("{}/{reference}", proxy.host))
        .unwrap()
        .into();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(envbox::prepare::prepare(
            &config,
            &envbox::cache::BlobStore::open(state).unwrap(),
            &envbox::unpack::LayerStore::open(state).unwrap(),
            &source,
            &envbox::unpack::Limits::default(),
        ))
}

fn blob_get_fault(proxy: &FaultProxy, digest: &str) -> Vec<Option<&'static str>> {
    proxy
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(digest))
        .map(|r| r.fault)
        .collect()
}

#[test]
fn a_layer_is_unpacked_while_later_blobs_are_still_downloading() {
    if !requirements_met("download/unpack overlap test", false) {
        return;
    }
    let registry = Registry::http();
    let layout = tempfile::tempdir().unwrap();
    let info = write_layout(layout.path(), "t", &[small_layers(2)]);
    registry.push(layout.path(), "t", "team/two:1");
    let proxy = FaultProxy::start(&registry);
    let state = tempfile::tempdir_in("/var/tmp").unwrap();
    let first_layer_dir = layer_dir(state.path(), &info.diff_ids[0], 0);
    let second = info.layer_digests[0][1].clone();
    proxy.inject(Fault::Hold {
        path_contains: second.clone(),
        until: first_layer_dir.clone(),
        at_most: std::time::Duration::from_secs(30),
    });
    let prepared = prepare_via(&proxy, "team/two:1", state.path(), 4).unwrap();
    assert_eq!(prepared.layers_unpacked, 2);
    assert_eq!(
        blob_get_fault(&proxy, &second),
        [Some("held")],
        "layer 2 was held until layer 1 was unpacked, so layer 1 was unpacked while layer 2 was still downloading"
    );
    assert!(first_layer_dir.join("layer0").is_file());
}

#[test]
fn a_layer_is_unpacked_while_its_own_blob_downloads_and_published_only_once_verified() {
    if !requirements_met("unpack-while-downloading test", false) {
        return;
    }
    // One layer of 48 incompressible 64 KiB files (3 MiB compressed), whose body stalls after
    // 1.5 MiB until the test has seen the unpack at work.
    let files = (0..48)
        .map(|i| {
            let data = support::image::prng_bytes(i, 64 << 10);
            support::image::Entry::file(&format!("/f{i:02}"), 0o644, data)
        })
        .collect();
    let image = support::image::ImageSpec::new("amd64").layer(support::image::Layer::new(files));
    let registry = Registry::http();
    let layout = tempfile::tempdir().unwrap();
    let info = write_layout(layout.path(), "t", &[image]);
    registry.push(layout.path(), "t", "team/one:1");
    let proxy = FaultProxy::start(&registry);
    let state = tempfile::tempdir_in("/var/tmp").unwrap();
    let release = state.path().join("release");
    proxy.inject(Fault::StallMidBody {
        path_contains: info.layer_digests[0][0].clone(),
        after_bytes: 3 << 19,
        until: release.clone(),
        at_most: std::time::Duration::from_secs(30),
    });
    let diff = hex(&info.diff_ids[0][0]).to_owned();
    let layer_dir = layer_dir(state.path(), &info.diff_ids[0], 0);
    let staging = state.path().join("layers/chain/.staging");
    let prepared = std::thread::scope(|scope| {
        let preparing = scope.spawn(|| prepare_via(&proxy, "team/one:1", state.path(), 4));
        // While the rest of the blob is held back, its first files appear in the layer's
        // staging directory, and the layer is not published.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let first_file = || {
            let entries = std::fs::read_dir(&staging).ok()?;
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(&diff))
                .map(|e| e.path().join("f00"))
                .find(|f| f.is_file())
        };
        let seen = loop {
            if let Some(file) = first_file() {
                break Some(file);
            }
            if std::time::Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let published_early = layer_dir.exists();
        std::fs::write(&release, b"").unwrap();
        let prepared = preparing.join().unwrap();
        assert!(
            seen.is_some(),
            "no file of the layer was written while its blob was still downloading"
        );
        assert!(
            !published_early,
            "the layer was published before its blob was verified"
        );
        prepared
    });
    let prepared = prepared.unwrap();
    assert_eq!(prepared.layers_unpacked, 1);
    assert_eq!(
        blob_get_fault(&proxy, &info.layer_digests[0][0]),
        [Some("stalled")]
    );
    assert_eq!(
        std::fs::read(layer_dir.join("f47")).unwrap(),
        support::image::prng_bytes(47, 64 << 10)
    );
}

#[test]
fn a_blob_that_fails_its_digest_after_an_unpack_as_it_downloaded_publishes_nothing() {
    if !requirements_met("unpack-while-downloading failure test", false) {
        return;
    }
    let registry = Registry::http();
    let layout = tempfile::tempdir().unwrap();
    let info = write_layout(layout.path(), "t", &[small_layers(2)]);
    registry.push(layout.path(), "t", "team/two:1");
    let proxy = FaultProxy::start(&registry);
    // Every byte of the second layer inverted at chunk starts: the tar may still parse, but the
    // blob never verifies.
    proxy.inject(Fault::CorruptBody {
        path_contains: info.layer_digests[0][1].clone(),
    });
    let state = tempfile::tempdir_in("/var/tmp").unwrap();
    let err = prepare_via(&proxy, "team/two:1", state.path(), 4).unwrap_err();
    assert!(
        err.to_string().contains(hex(&info.layer_digests[0][1])),
        "{err}"
    );
    let second = layer_dir(state.path(), &info.diff_ids[0], 1);
    assert!(
        !second.exists(),
        "a layer of an unverified blob was published"
    );
    let staging: Vec<_> = std::fs::read_dir(state.path().join("layers/chain/.staging"))
        .unwrap()
        .collect();
    assert!(staging.is_empty(), "staging left: {staging:?}");
}

/// Rewrites the image of `layout` (tag `t`, one image) so that its config names a wrong diff ID
/// for the first layer.
fn break_first_diff_id(layout: &std::path::Path, info: &support::image::LayoutInfo) {
    let blob = |d: &str| layout.join("blobs/sha256").join(hex(d));
    let write = |bytes: Vec<u8>| {
        let digest = support::server::sha256_digest(&bytes);
        std::fs::write(blob(&digest), &bytes).unwrap();
        (digest, bytes.len())
    };
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(&info.config_digests[0])).unwrap()).unwrap();
    config["rootfs"]["diff_ids"][0] = support::server::sha256_digest(b"not the layer").into();
    let (config_digest, config_size) = write(serde_json::to_vec(&config).unwrap());
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(&info.manifest_digests[0])).unwrap()).unwrap();
    manifest["config"]["digest"] = config_digest.into();
    manifest["config"]["size"] = config_size.into();
    let (manifest_digest, manifest_size) = write(serde_json::to_vec(&manifest).unwrap());
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    index["manifests"][0]["digest"] = manifest_digest.into();
    index["manifests"][0]["size"] = manifest_size.into();
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

#[test]
fn an_unpack_failure_stops_new_downloads_lets_those_in_flight_finish_and_is_the_error() {
    if !requirements_met("unpack failure during download test", false) {
        return;
    }
    let registry = Registry::http();
    let layout = tempfile::tempdir().unwrap();
    let info = write_layout(layout.path(), "t", &[small_layers(3)]);
    break_first_diff_id(layout.path(), &info);
    registry.push(layout.path(), "t", "team/bad:1");
    let proxy = FaultProxy::start(&registry);
    let [first, second, third] = [0, 1, 2].map(|i| info.layer_digests[0][i].clone());
    // Layer 2 is in flight (held) while layer 1, downloaded before it, fails to unpack.
    proxy.inject(Fault::Hold {
        path_contains: second.clone(),
        until: "/nonexistent/never".into(),
        at_most: std::time::Duration::from_secs(3),
    });
    let state = tempfile::tempdir_in("/var/tmp").unwrap();
    let err = prepare_via(&proxy, "team/bad:1", state.path(), 1).unwrap_err();
    assert!(
        matches!(
            &err,
            envbox::prepare::PrepareError::Unpack(
                envbox::unpack::UnpackError::DiffIdMismatch { .. }
            )
        ),
        "the unpack failure wins: {err}"
    );
    assert_eq!(blob_get_fault(&proxy, &first), [None]);
    assert_eq!(blob_get_fault(&proxy, &second), [Some("hold-timeout")]);
    assert!(
        blob_get_fault(&proxy, &third).is_empty(),
        "no download starts after the failure"
    );
    let store = envbox::cache::BlobStore::open(state.path()).unwrap();
    let second = envbox::digest::Digest::parse(&second).unwrap();
    assert!(
        store.size_of(&second).is_some(),
        "the transfer in flight finished and its blob is stored whole"
    );
    for dir in ["staging", "layers/chain/.staging"] {
        assert_eq!(
            std::fs::read_dir(state.path().join(dir)).unwrap().count(),
            0,
            "{dir}: nothing left half-written"
        );
    }
    assert!(
        !layer_dir(state.path(), &info.diff_ids[0], 0).exists(),
        "no layer directory for the layer that failed"
    );
}
