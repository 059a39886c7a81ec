use std::path::Path;

use super::docker::{self, SavedImage};
use super::files::Files;
use super::layout;
use super::*;
use crate::image::manifest::{self, Descriptor, Manifest};

fn local(text: &str) -> LocalImage {
    match ImageSource::parse(text).unwrap() {
        ImageSource::Local(local) => local,
        other => panic!("{text} parsed as {other:?}"),
    }
}

#[test]
fn transports_parse_like_skopeo_and_plain_text_is_a_registry() {
    let l = local("oci:/srv/layout");
    assert_eq!(
        (l.format, l.path.as_path(), l.name),
        (Format::OciLayout, Path::new("/srv/layout"), None)
    );
    let l = local("docker-archive:/x/bb.tar:team/bb:1");
    assert_eq!(l.format, Format::DockerArchive);
    assert_eq!(l.path, Path::new("/x/bb.tar"));
    assert_eq!(
        l.name.as_deref(),
        Some("team/bb:1"),
        "the path ends at the first ':'"
    );
    let l = local("oci-archive:rel.tar:registry.example.com:5000/a/b:2");
    assert_eq!(l.path, Path::new("rel.tar"));
    assert_eq!(l.name.as_deref(), Some("registry.example.com:5000/a/b:2"));
    assert_eq!(
        ImageSource::parse("oci-archive:/x.tar:v1")
            .unwrap()
            .to_string(),
        "oci-archive:/x.tar:v1"
    );
    for registry in ["ubuntu", "docker://ubuntu", "localhost:5000/oci:1", "oci"] {
        assert!(
            matches!(ImageSource::parse(registry), Ok(ImageSource::Registry(_))),
            "{registry}"
        );
    }
    assert_eq!(
        ImageSource::parse("docker://ubuntu").unwrap().to_string(),
        "docker.io/library/ubuntu:latest"
    );
}

/// Found by the `reference` fuzz target: a registry host named like a transport lost its
/// `docker://` when shown, and the text read back as a local archive.
#[test]
fn a_registry_host_named_like_a_transport_is_shown_with_docker_prefix() {
    for text in ["docker://oci-archive:5000/x/y:1", "docker://oci:5000/x"] {
        let source = ImageSource::parse(text).unwrap();
        assert!(matches!(source, ImageSource::Registry(_)), "{text}");
        let shown = source.to_string();
        assert!(shown.starts_with("docker://"), "{shown}");
        assert_eq!(ImageSource::parse(&shown).unwrap(), source, "{shown}");
    }
}

#[test]
fn bad_source_text_says_what_was_expected() {
    for (text, says) in [
        ("oci:", "the path is empty"),
        ("oci-archive::t", "the path is empty"),
        ("docker-archive:/x.tar:", "the name after ':' is empty"),
    ] {
        let err = ImageSource::parse(text).unwrap_err().to_string();
        assert!(err.contains(says) && err.contains(":PATH[:NAME]"), "{err}");
    }
}

#[test]
fn pin_as_takes_a_tag_for_local_images_only() {
    let tag = ImageRef::parse("registry.example.com/team/dev:1").unwrap();
    let source = ImageSource::parse("oci:/l").unwrap();
    let pinned = source.pinned_as(Some(tag.clone())).unwrap();
    assert!(matches!(pinned, ImageSource::Local(LocalImage { pin_as: Some(r), .. }) if r == tag));
    let registry = ImageSource::parse("ubuntu").unwrap();
    assert!(matches!(
        registry.pinned_as(Some(tag)),
        Err(SourceError::PinAs { .. })
    ));
    let by_digest = ImageRef::parse(&format!("a/b@sha256:{}", "1".repeat(64))).unwrap();
    let err = ImageSource::parse("oci:/l")
        .unwrap()
        .pinned_as(Some(by_digest))
        .unwrap_err();
    assert!(err.to_string().contains("give a tag"), "{err}");
}

#[test]
fn only_full_references_are_pinned() {
    let names = [
        "latest",
        "registry.example.com/team/dev:1",
        "docker.io/library/busybox:latest",
        "busybox:latest",
        "x@sha256:0000",
    ]
    .map(str::to_owned);
    let pinned: Vec<String> = references(&names).iter().map(|r| r.to_string()).collect();
    assert_eq!(
        pinned,
        [
            "registry.example.com/team/dev:1",
            "docker.io/library/busybox:latest"
        ],
        "a bare tag is no reference; busybox:latest is the same image as docker.io/library/busybox:latest"
    );
    assert!(names_match("busybox", "docker.io/library/busybox:latest"));
    assert!(names_match("v1", "v1"));
    assert!(!names_match("v1", "v2"));
}

fn entry(digest: char, names: &[(&str, &str)], arch: Option<&str>) -> Descriptor {
    let mut value = serde_json::json!({
        "mediaType": manifest::OCI_MANIFEST,
        "digest": format!("sha256:{}", digest.to_string().repeat(64)),
        "size": 10,
    });
    if !names.is_empty() {
        value["annotations"] = names
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
            .collect();
    }
    if let Some(arch) = arch {
        value["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
    }
    serde_json::from_value(value).unwrap()
}

fn amd64() -> Platform {
    Platform {
        os: "linux".into(),
        architecture: "amd64".into(),
        variant: None,
    }
}

#[test]
fn a_layout_entry_is_chosen_by_name_digest_or_platform() {
    let files = Files::Dir("/srv/l".into());
    let entries = [
        entry('a', &[(layout::REF_NAME, "v1")], None),
        entry(
            'b',
            &[
                (layout::IMAGE_NAME, "docker.io/library/busybox:latest"),
                (layout::REF_NAME, "latest"),
            ],
            None,
        ),
    ];
    let pick = |wanted| {
        layout::select(&entries, wanted, &amd64(), &files, "oci").map(|e| e.digest.clone())
    };
    assert_eq!(pick(Some("v1")).unwrap(), entries[0].digest);
    assert_eq!(
        pick(Some("busybox")).unwrap(),
        entries[1].digest,
        "normalised containerd name"
    );
    assert_eq!(pick(Some(&entries[1].digest)).unwrap(), entries[1].digest);
    let err = pick(None).unwrap_err().to_string();
    assert!(
        err.contains("/srv/l holds several images")
            && err.contains("oci:/srv/l:NAME")
            && err.contains("v1, docker.io/library/busybox:latest"),
        "{err}"
    );
    let err = pick(Some("v2")).unwrap_err().to_string();
    assert!(
        err.contains("no image named \"v2\"") && err.contains("v1"),
        "{err}"
    );

    let per_platform = [
        entry('c', &[], Some("arm64")),
        entry('d', &[], Some("amd64")),
    ];
    let chosen = layout::select(&per_platform, None, &amd64(), &files, "oci").unwrap();
    assert_eq!(chosen.digest, per_platform[1].digest);
}

#[test]
fn a_docker_save_image_is_chosen_by_repo_tag_or_position() {
    let files = Files::Dir("/x.tar".into());
    let saved = |tags: &[&str]| SavedImage {
        config: "c.json".into(),
        repo_tags: Some(tags.iter().map(|t| t.to_string()).collect()),
        layers: vec![],
    };
    let images = [saved(&["team/a:1", "team/a:latest"]), saved(&[])];
    let pick = |w| docker::select(&images, w, &files).map(|i| i.tags().len());
    assert_eq!(pick(Some("docker.io/team/a:1")).unwrap(), 2);
    assert_eq!(pick(Some("@1")).unwrap(), 0);
    let err = pick(None).unwrap_err().to_string();
    assert!(
        err.contains("docker-archive:/x.tar:NAME") && err.contains("team/a:1, team/a:latest, @1"),
        "{err}"
    );
    assert!(pick(Some("team/b:1")).is_err());
}

#[test]
fn the_manifest_built_for_a_docker_save_image_is_an_ordinary_image() {
    let config = Digest::of(b"{}");
    let layers = [(Digest::of(b"l1"), 2048), (Digest::of(b"l2"), 1024)];
    let bytes = docker::manifest_for(&config, 2, &layers);
    let Manifest::Image(image) = manifest::parse(&bytes, None, "t").unwrap() else {
        panic!("not an image manifest");
    };
    assert_eq!(image.config.digest, config.to_string());
    assert_eq!(image.layers.len(), 2);
    assert_eq!(image.layers[1].size, 1024);
    assert_eq!(
        manifest::layer_compression(&image.layers[0].media_type),
        Some(manifest::Compression::None)
    );
    assert_eq!(
        bytes,
        docker::manifest_for(&config, 2, &layers),
        "deterministic"
    );
}

#[test]
fn layout_documents_over_4_mib_are_refused_before_they_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(&dir.path().join("state")).unwrap();
    let layout_dir = dir.path().join("layout");
    std::fs::create_dir(&layout_dir).unwrap();
    let files = Files::Dir(layout_dir.clone());
    let import = || {
        layout::import_image(
            &files,
            "oci",
            "oci:layout",
            None,
            &amd64(),
            &store,
            &LayerFeed::default(),
        )
    };
    let too_large = |err: SourceError| match err {
        SourceError::Image(crate::image::ImageError::TooLarge { size, limit, .. }) => {
            assert_eq!(limit, 4 << 20);
            size
        }
        other => panic!("{other}"),
    };
    // The manifest index.json points to says it is 16 MiB: refused, its blob never opened.
    let mut big = entry('a', &[], None);
    big.size = 16 << 20;
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": manifest::OCI_INDEX,
        "manifests": [{"mediaType": big.media_type, "digest": big.digest, "size": big.size}]});
    std::fs::write(layout_dir.join("index.json"), index.to_string()).unwrap();
    let err = import().unwrap_err();
    assert!(err.to_string().contains("16777216 bytes"), "{err}");
    assert_eq!(too_large(err), Some(16 << 20));
    // An index.json of 5 MiB.
    let padded = serde_json::json!({"schemaVersion": 2, "manifests": [],
        "annotations": {"padding": "x".repeat(5 << 20)}});
    std::fs::write(layout_dir.join("index.json"), padded.to_string()).unwrap();
    let err = import().unwrap_err();
    assert!(err.to_string().contains("index.json"), "{err}");
    assert!(too_large(err).is_some_and(|size| size > 5 << 20));
}
