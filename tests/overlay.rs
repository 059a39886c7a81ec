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
use support::image::{busybox_image, write_layout};
use support::registry::Registry;

fn prepared(state: &Path) -> PreparedImage {
    let registry = Registry::http();
    let layout = tempfile::tempdir().unwrap();
    write_layout(layout.path(), "t", &[busybox_image("amd64")]);
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
