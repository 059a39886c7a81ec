//! `envbox prepare` / `envbox pull` from local images: an OCI layout directory, an OCI archive
//! (a tar of a layout) and `docker save` archives (classic, written by skopeo, and current, with
//! an OCI layout inside). The unpacked layers must equal those of the same image pulled from a
//! real registry; an image recorded under its reference must start offline by that reference;
//! bad inputs must fail naming the file. Needs skopeo, tar, and root + busybox for unpacking.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::host::requirements_met;
use support::image::{busybox_image, write_layout, Entry, ImageSpec, Layer, LayoutInfo};
use support::registry::Registry;

const ENVBOX: &str = env!("CARGO_BIN_EXE_envbox");

fn envbox(args: &[&str], state: &Path, env: &[(&str, &str)]) -> Output {
    Command::new(ENVBOX)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .env("ENVBOX_STATE_DIR", state)
        .envs(env.iter().copied())
        .output()
        .expect("run envbox")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(out: &Output) -> (String, String) {
    assert!(out.status.success(), "{}", text(&out.stderr));
    (text(&out.stdout), text(&out.stderr))
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure: {}",
        text(&out.stderr)
    );
    text(&out.stderr)
}

fn sh(script: &str) {
    let out = Command::new("sh").args(["-ec", script]).output().unwrap();
    assert!(out.status.success(), "{script}: {}", text(&out.stderr));
}

/// `tar -cf FILE -C DIR .` (members named `./index.json`, `./blobs/sha256/..`).
fn tar_dir(dir: &Path, file: &Path) {
    sh(&format!(
        "tar -cf {} -C {} .",
        file.display(),
        dir.display()
    ));
}

fn skopeo_docker_archive(layout: &Path, tag: &str, file: &Path, name: &str) {
    sh(&format!(
        "skopeo copy -q oci:{}:{tag} docker-archive:{}:{name}",
        layout.display(),
        file.display()
    ));
}

/// A closed loopback port: a registry there cannot be reached.
fn unreachable_host() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", listener.local_addr().unwrap().port())
}

/// Every entry under `dir`: kind, mode, owner, size and content (or link target).
fn tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let what = if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
            "dir".to_owned()
        } else if meta.file_type().is_symlink() {
            format!("-> {}", std::fs::read_link(&path).unwrap().display())
        } else {
            let bytes = std::fs::read(&path).unwrap();
            format!("file {}", support::server::sha256_digest(&bytes))
        };
        let key = path.strip_prefix(dir).unwrap().to_owned();
        out.insert(
            key,
            format!(
                "{what} {:o} {}:{} {}",
                meta.mode(),
                meta.uid(),
                meta.gid(),
                meta.len()
            ),
        );
    }
    out
}

/// The unpacked layer directories of a state dir, by chain ID hex, with their trees.
fn layers(state: &Path) -> BTreeMap<String, BTreeMap<PathBuf, String>> {
    std::fs::read_dir(state.join("layers/chain"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                tree(&e.path()),
            )
        })
        .collect()
}

fn busybox_layout(dir: &Path, tag: &str) -> LayoutInfo {
    write_layout(dir, tag, &[busybox_image("amd64")])
}

#[test]
fn every_local_source_unpacks_exactly_what_the_registry_path_unpacks() {
    if !requirements_met("local image sources test", false) {
        return;
    }
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let layout = work.path().join("layout");
    let info = busybox_layout(&layout, "t");
    let registry = Registry::http();
    registry.push(&layout, "t", "team/bb:1");
    let reference = format!("{}/team/bb:1", registry.host);
    let from_registry = work.path().join("registry-state");
    ok(&envbox(
        &[
            "prepare",
            "--image",
            &reference,
            "--insecure-registries",
            &registry.host,
        ],
        &from_registry,
        &[],
    ));
    let expected = layers(&from_registry);
    assert_eq!(expected.len(), 3);

    let oci_archive = work.path().join("oci.tar");
    tar_dir(&layout, &oci_archive);
    let docker_archive = work.path().join("docker.tar");
    skopeo_docker_archive(&layout, "t", &docker_archive, "team/bb:1");
    let sources = [
        format!("oci:{}:t", layout.display()),
        format!("oci:{}", layout.display()),
        format!("oci-archive:{}", oci_archive.display()),
        format!("docker-archive:{}", docker_archive.display()),
        format!("docker-archive:{}:team/bb:1", docker_archive.display()),
    ];
    for source in &sources {
        let state = tempfile::tempdir_in(work.path()).unwrap();
        let (stdout, stderr) = ok(&envbox(&["prepare", "--image", source], state.path(), &[]));
        assert!(
            stderr.contains("3 of 3 layer(s) unpacked"),
            "{source}: {stderr}"
        );
        assert_eq!(layers(state.path()), expected, "{source}");
        if source.starts_with("docker-archive") {
            assert!(
                stdout.starts_with("docker.io/team/bb@sha256:"),
                "recorded under its repo tag: {stdout}"
            );
        } else {
            assert_eq!(stdout.trim(), source, "no reference to record it under");
            assert!(stderr.contains("envbox prepare --as REF"), "{stderr}");
            let layer_blob = state
                .path()
                .join("blobs/sha256")
                .join(info.layer_digests[0][0].trim_start_matches("sha256:"));
            assert!(layer_blob.is_file(), "the layout's own blob was imported");
        }
        let again = envbox(&["prepare", "--image", source], state.path(), &[]);
        let (_, stderr) = ok(&again);
        assert!(
            stderr.contains("0 blob(s) imported, 0 of 3 layer(s) unpacked"),
            "{source}: a second prepare copies and unpacks nothing: {stderr}"
        );
    }
}

#[test]
fn an_archive_recorded_under_its_reference_starts_offline_by_that_reference() {
    if !requirements_met("offline start from an archive test", false) {
        return;
    }
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let host = unreachable_host();
    let reference = format!("{host}/team/bb:1");
    let layout = work.path().join("layout");
    busybox_layout(&layout, &reference);
    let archive = work.path().join("bb.tar");
    tar_dir(&layout, &archive);
    let state = work.path().join("state");
    let (stdout, stderr) = ok(&envbox(
        &[
            "prepare",
            "--image",
            &format!("oci-archive:{}", archive.display()),
        ],
        &state,
        &[],
    ));
    assert!(
        stdout.starts_with(&format!("{host}/team/bb@sha256:")),
        "{stdout}"
    );
    assert!(
        stderr.contains(&format!("recorded as {reference}")),
        "{stderr}"
    );

    let insecure = [("ENVBOX_INSECURE_REGISTRIES", host.as_str())];
    let (_, stderr) = ok(&envbox(
        &["prepare", "--image", &reference],
        &state,
        &insecure,
    ));
    assert!(
        stderr.contains("could not reach the registry")
            && stderr.contains("0 blob(s) downloaded, 0 of 3 layer(s) unpacked"),
        "{stderr}"
    );

    let run_dir = work.path().join("run");
    let out = envbox(
        &["docker"],
        &state,
        &[
            ("ENVBOX_INSECURE_REGISTRIES", host.as_str()),
            ("ENVBOX_RUN_DIR", run_dir.to_str().unwrap()),
            ("CODER_INNER_IMAGE", reference.as_str()),
            // A user the image lacks: envbox docker stops right after preparing the image
            // (launching is tested in tests/launch.rs).
            ("CODER_INNER_USERNAME", "not-in-the-image"),
            ("ENVBOX_RUNTIME", "runc"),
        ],
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("could not reach the registry")
            && stderr.contains("ready: 3 layer(s), 0 unpacked now")
            && stderr.contains("not-in-the-image"),
        "envbox docker prepares offline from the recorded image: {stderr}"
    );

    let other = format!("{host}/team/renamed:2");
    let (_, stderr) = ok(&envbox(
        &[
            "prepare",
            "--image",
            &format!("oci:{}", layout.display()),
            "--as",
            &other,
        ],
        &state,
        &[],
    ));
    assert!(stderr.contains(&format!("recorded as {other}")), "{stderr}");
    let (stdout, _) = ok(&envbox(&["cache", "ls"], &state, &[]));
    assert!(
        stdout.contains(&format!("pin  {other} -> sha256:")),
        "{stdout}"
    );
    ok(&envbox(&["prepare", "--image", &other], &state, &insecure));
}

#[test]
fn a_current_docker_save_archive_is_read_through_its_oci_layout() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let info = write_layout(&layout, "1", &[small_image("current")]);
    // What Docker 25+ writes: containerd's name annotation, and a manifest.json beside.
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    index["manifests"][0]["annotations"]["io.containerd.image.name"] =
        "docker.io/team/current:1".into();
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    let manifest = serde_json::json!([{
        "Config": blob(&info.config_digests[0]),
        "RepoTags": ["team/current:1"],
        "Layers": info.layer_digests[0].iter().map(|d| blob(d)).collect::<Vec<_>>(),
    }]);
    std::fs::write(layout.join("manifest.json"), manifest.to_string()).unwrap();
    let archive = work.path().join("saved.tar");
    tar_dir(&layout, &archive);

    let state = work.path().join("state");
    let source = format!("docker-archive:{}:team/current:1", archive.display());
    let (stdout, _) = ok(&envbox(&["pull", &source], &state, &[]));
    assert_eq!(
        stdout.trim(),
        format!("docker.io/team/current@{}", info.manifest_digests[0]),
        "the layout's own manifest, not one built from manifest.json"
    );
    let gzip_layer = state.join(blob(&info.layer_digests[0][0]));
    assert!(
        gzip_layer.is_file(),
        "the compressed layout blob was imported"
    );
    let (stdout, _) = ok(&envbox(&["cache", "ls"], &state, &[]));
    assert!(
        stdout.contains(&format!(
            "pin  docker.io/team/current:1 -> {}",
            info.manifest_digests[0]
        )),
        "{stdout}"
    );
}

fn small_image(marker: &str) -> ImageSpec {
    ImageSpec::new("amd64").layer(Layer::new(vec![Entry::file(
        &format!("/{marker}"),
        0o644,
        marker.as_bytes().to_vec(),
    )]))
}

/// A tar whose member names are written raw, so it can hold names `tar` would refuse.
fn raw_tar(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in members {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

#[test]
fn bad_local_sources_fail_naming_the_file() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let pull = |source: &str| failed(&envbox(&["pull", source], &state, &[]));

    let missing = work.path().join("missing.tar");
    let err = pull(&format!("oci-archive:{}", missing.display()));
    assert!(
        err.contains(&format!("opening {}", missing.display())) && err.contains("No such file"),
        "{err}"
    );

    let layout = work.path().join("layout");
    write_layout(&layout, "a", &[small_image("a")]);
    let escaping = work.path().join("escaping.tar");
    let index = std::fs::read(layout.join("index.json")).unwrap();
    std::fs::write(
        &escaping,
        raw_tar(&[("index.json", &index), ("../../etc/cron.d/evil", b"x")]),
    )
    .unwrap();
    let err = pull(&format!("oci-archive:{}", escaping.display()));
    assert!(
        err.contains(&escaping.display().to_string())
            && err.contains("\"../../etc/cron.d/evil\" has a '..' component"),
        "{err}"
    );
    assert!(!work.path().join("etc").exists() && !Path::new("/etc/cron.d/evil").exists());

    write_layout(&layout, "b", &[small_image("b")]);
    let err = pull(&format!("oci:{}", layout.display()));
    assert!(
        err.contains(&format!("{} holds several images", layout.display()))
            && err.contains("NAME one of: a, b"),
        "{err}"
    );
    let err = pull(&format!("oci:{}:c", layout.display()));
    assert!(
        err.contains("no image named \"c\"; it holds: a, b"),
        "{err}"
    );

    let tampered = work.path().join("tampered");
    let info = write_layout(&tampered, "t", &[small_image("t")]);
    let layer = tampered.join(format!(
        "blobs/sha256/{}",
        info.layer_digests[0][0].trim_start_matches("sha256:")
    ));
    let mut bytes = std::fs::read(&layer).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&layer, bytes).unwrap();
    let err = pull(&format!("oci:{}", tampered.display()));
    assert!(
        err.contains(&format!(
            "importing layer 1 of 1 (blobs/sha256/{}",
            info.layer_digests[0][0].trim_start_matches("sha256:")
        )) && err.contains(&tampered.display().to_string())
            && err.contains("content has digest"),
        "{err}"
    );
    let staging = std::fs::read_dir(state.join("staging")).unwrap().count();
    assert_eq!(staging, 0, "nothing half-written is left");
    assert!(!state
        .join(format!(
            "blobs/sha256/{}",
            info.layer_digests[0][0].trim_start_matches("sha256:")
        ))
        .exists());

    let gz = work.path().join("layout.tar.gz");
    sh(&format!(
        "tar -czf {} -C {} .",
        gz.display(),
        layout.display()
    ));
    let err = pull(&format!("oci-archive:{}:a", gz.display()));
    assert!(
        err.contains("gzip-compressed: decompress it first"),
        "{err}"
    );

    let err = pull(&format!("docker-archive:{}", layout.display()));
    assert!(err.contains("is not a tar archive file"), "{err}");
}

/// An OCI layout whose index.json points to an index of the two-platform index.
#[tokio::test]
async fn a_layout_with_nested_indexes_resolves_to_this_platform() {
    use envbox::cache::BlobStore;
    use envbox::digest::Digest;
    use envbox::image::Platform;
    use envbox::registry::{LayerFeed, RegistryConfig};
    use envbox::source::{self, ImageSource};

    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let info = write_layout(
        &layout,
        "t",
        &[busybox_image("amd64"), busybox_image("arm64")],
    );
    let blob = |digest: &str| layout.join("blobs/sha256").join(&digest["sha256:".len()..]);
    let inner_digest = info.index_digest.clone().unwrap();
    let inner = std::fs::read(blob(&inner_digest)).unwrap();
    let index_type = "application/vnd.oci.image.index.v1+json";
    let outer = serde_json::to_vec(
        &serde_json::json!({"schemaVersion": 2, "mediaType": index_type,
        "manifests": [{"mediaType": index_type, "digest": inner_digest, "size": inner.len()}]}),
    )
    .unwrap();
    let outer_digest = Digest::of(&outer).to_string();
    std::fs::write(blob(&outer_digest), &outer).unwrap();
    let index_json = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": index_type,
        "digest": outer_digest, "size": outer.len(),
        "annotations": {"org.opencontainers.image.ref.name": "t"}}]});
    std::fs::write(layout.join("index.json"), index_json.to_string()).unwrap();

    let source = ImageSource::parse(&format!("oci:{}", layout.display())).unwrap();
    let fetch = |architecture: &str, variant: Option<&str>| {
        let config = RegistryConfig {
            platform: Platform {
                os: "linux".into(),
                architecture: architecture.into(),
                variant: variant.map(Into::into),
            },
            ..RegistryConfig::default()
        };
        let state = tempfile::tempdir().unwrap();
        let source = source.clone();
        async move {
            let store = BlobStore::open(state.path()).unwrap();
            source::fetch(&source, &config, &store, &LayerFeed::default())
                .await
                .map(|fetched| fetched.image.manifest_digest.to_string())
        }
    };
    assert_eq!(
        fetch("amd64", None).await.unwrap(),
        info.manifest_digests[0]
    );
    assert_eq!(
        fetch("arm64", Some("v8")).await.unwrap(),
        info.manifest_digests[1]
    );
    let err = fetch("s390x", None).await.unwrap_err().to_string();
    assert!(
        err.contains("it offers: linux/amd64, linux/arm64") && !err.contains("unknown"),
        "{err}"
    );
}
