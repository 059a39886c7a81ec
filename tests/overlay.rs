//! Rootfs assembly at start (root): an overlay of the unpacked layers with a fresh upper dir
//! each start, or a flattened copy. The image comes from a real registry through `prepare`.

mod support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use envbox::cache::BlobStore;
use envbox::image::ImageRef;
use envbox::overlay::{self, Mode, RootfsKind};
use envbox::prepare::{self, PreparedImage};
use envbox::registry::RegistryConfig;
use envbox::unpack::{LayerStore, Limits};
use support::host::requirements_met;
use support::image::{busybox_image, write_layout, Entry, Layer};
use support::registry::Registry;
use support::volume::OverlayMount;

fn prepared(state: &Path) -> PreparedImage {
    prepared_image(state, busybox_image("amd64"))
}

fn prepared_image(state: &Path, image: support::image::ImageSpec) -> PreparedImage {
    let registry = Registry::http();
    let layout = tempfile::tempdir().unwrap();
    write_layout(layout.path(), "t", &[image]);
    registry.push(layout.path(), "t", "team/bb:1");
    let config = RegistryConfig {
        insecure: vec![registry.host.clone()],
        ..RegistryConfig::default()
    };
    let reference = ImageRef::parse(&format!("{}/team/bb:1", registry.host)).unwrap();
    let blobs = BlobStore::open(state).unwrap();
    let layers = LayerStore::open(state).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(prepare::prepare(
            &config,
            &blobs,
            &layers,
            &reference.into(),
            &Limits::default(),
        ))
        .unwrap()
}

fn assemble(state: &Path, image: &PreparedImage, mode: Mode) -> overlay::Rootfs {
    overlay::assemble(
        state,
        &image.sources,
        &image.layer_dirs,
        mode,
        &Limits::default(),
    )
    .unwrap()
}

#[test]
fn an_overlay_with_a_fresh_upper_dir_each_start() {
    if !requirements_met("overlay test", false) {
        return;
    }
    let state = tempfile::tempdir_in("/var/tmp").unwrap();
    let image = prepared(state.path());
    let rootfs = assemble(state.path(), &image, Mode::Auto);
    assert_eq!(rootfs.kind, RootfsKind::Overlay, "{:?}", rootfs.warnings);
    assert!(rootfs.path.join("bin/busybox").is_file());
    let top = fs::metadata(&rootfs.path).unwrap();
    assert_eq!(
        (top.uid(), top.gid(), top.mode() & 0o7777),
        (100_000, 100_000, 0o755),
        "the merged root is the workspace's root, shifted"
    );
    assert!(
        rootfs.path.join("etc/passwd").is_file(),
        "upper layers are visible"
    );

    std::fs::write(rootfs.path.join("etc/written-at-run-time"), "x").unwrap();
    assert!(
        state
            .path()
            .join("container/upper/etc/written-at-run-time")
            .exists(),
        "writes land in the upper dir"
    );
    for layer in &image.layer_dirs {
        assert!(
            !layer.join("etc/written-at-run-time").exists(),
            "a layer directory was changed"
        );
    }

    // A new start over a stale mount (as after a kill -9): fresh upper, same layers.
    let again = assemble(state.path(), &image, Mode::Auto);
    assert!(
        !again.path.join("etc/written-at-run-time").exists(),
        "changes outside mounts do not persist"
    );
    assert!(again.path.join("bin/busybox").is_file());
    overlay::release(&again).unwrap();
    assert!(!again.path.join("bin/busybox").exists(), "released");
    assert!(
        !state.path().join("container/lower/bin").exists()
            && fs::read_dir(state.path().join("container/lower"))
                .unwrap()
                .next()
                .is_none(),
        "the read-only view of the layer store is released too"
    );
}

/// The overlay reaches its lower dirs through a read-only bind mount of the layer store: what
/// the lower links lead to cannot be written (a layer may be shared by every workspace of a
/// node), and a cleanup still sees which layer directories the mounted overlay uses.
#[test]
fn the_lower_dirs_are_reached_through_a_read_only_view_of_the_layer_store() {
    if !requirements_met("overlay test", false) {
        return;
    }
    let state = tempfile::tempdir_in("/var/tmp").unwrap();
    let image = prepared(state.path());
    let rootfs = assemble(state.path(), &image, Mode::Auto);
    assert_eq!(rootfs.kind, RootfsKind::Overlay, "{:?}", rootfs.warnings);
    let links = state.path().join("container/l");
    let mut lowers = Vec::new();
    for entry in fs::read_dir(&links).unwrap() {
        let target = fs::read_link(entry.unwrap().path()).unwrap();
        assert!(
            target.starts_with(state.path().join("container/lower")),
            "{target:?} is not in the read-only view"
        );
        let err = fs::write(target.join("planted"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{target:?}: {err}");
        lowers.push(target);
    }
    assert_eq!(lowers.len(), image.layer_dirs.len());
    let mut in_use = overlay::layers_in_use(state.path()).unwrap();
    in_use.sort();
    let mut expected = image.layer_dirs.clone();
    expected.sort();
    assert_eq!(in_use, expected, "the cleanup's view of what is in use");
    overlay::release(&rootfs).unwrap();
}

#[test]
fn a_flattened_copy_when_asked_or_when_overlayfs_refuses() {
    if !requirements_met("overlay test", false) {
        return;
    }
    let state = tempfile::tempdir_in("/var/tmp").unwrap();
    let image = prepared(state.path());
    let rootfs = assemble(state.path(), &image, Mode::Flatten);
    assert_eq!(rootfs.kind, RootfsKind::Flattened);
    use std::os::unix::fs::MetadataExt;
    let busybox = std::fs::metadata(rootfs.path.join("bin/busybox")).unwrap();
    assert_eq!(busybox.uid(), 100_000);
    assert!(rootfs.path.join("etc/passwd").is_file());
    let again = assemble(state.path(), &image, Mode::Flatten);
    assert!(
        again.path.join("bin/busybox").is_file(),
        "a second start rebuilds the copy"
    );
}

#[test]
fn a_volume_on_overlayfs_gets_no_layer_directories_and_a_flattened_copy() {
    if !requirements_met("overlay test", false) {
        return;
    }
    // The state dir on an overlay mount (as a pod's volume on a node whose disk is overlayfs):
    // overlayfs refuses the whiteout devices a layer directory holds, and cannot be an
    // overlay's upper dir.
    let base = tempfile::tempdir_in("/var/tmp").unwrap();
    for dir in ["lower", "upper", "work", "volume"] {
        fs::create_dir(base.path().join(dir)).unwrap();
    }
    let volume = base.path().join("volume");
    let _mounted = OverlayMount::new(
        &volume,
        &[&base.path().join("lower")],
        &base.path().join("upper"),
        &base.path().join("work"),
    );
    let state = volume.join("state");
    fs::create_dir(&state).unwrap();
    assert!(overlay::on_overlayfs(&state));

    // A layer deletes what the one below it wrote: its whiteout is what overlayfs refuses.
    let image = busybox_image("amd64")
        .layer(Layer::new(vec![Entry::file("/gone", 0o644, "x")]))
        .layer(Layer::new(vec![Entry::whiteout("/gone")]));
    let prepared = prepared_image(&state, image);
    assert!(prepared.layer_dirs.is_empty());
    assert!(
        prepared
            .warnings
            .iter()
            .any(|w| w.contains("is on overlayfs")),
        "{:?}",
        prepared.warnings
    );
    let rootfs = assemble(&state, &prepared, Mode::Auto);
    assert_eq!(rootfs.kind, RootfsKind::Flattened, "{:?}", rootfs.warnings);
    assert!(rootfs
        .warnings
        .iter()
        .any(|w| w.contains("is on overlayfs")));
    assert!(rootfs.path.join("bin/busybox").is_file());
    assert!(!rootfs.path.join("gone").exists(), "the whiteout acted");
    overlay::release(&rootfs).unwrap();
}
