//! Self-test of `tests/support`: each piece of the harness proven against the real
//! distribution registry with `skopeo` (no envbox code involved).

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::image::{busybox_image, write_layout, Compression, Entry, Layer, MT_INDEX};
use support::proxy::{BlobStorage, Fault, FaultProxy};
use support::registry::{skopeo, Format, Registry};
use support::token::TokenServer;

fn layout_with_busybox(dir: &Path) -> support::image::LayoutInfo {
    write_layout(dir, "v1", &[busybox_image("amd64")])
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("manifest JSON")
}

#[test]
fn http_registry_push_and_inspect() {
    let layout = tempfile::tempdir().expect("layout dir");
    let info = layout_with_busybox(layout.path());
    let registry = Registry::http();
    let digest = registry.push(layout.path(), "v1", "library/busybox:v1");
    assert_eq!(
        digest, info.manifest_digests[0],
        "--preserve-digests keeps the digest"
    );
    let out = skopeo(&[
        "inspect".into(),
        "--tls-verify=false".into(),
        format!("docker://{}/library/busybox:v1", registry.host),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inspected = json(&out.stdout);
    assert_eq!(inspected["Digest"], digest.as_str());
    assert_eq!(inspected["Layers"].as_array().map(Vec::len), Some(3));
    assert!(registry.blob_path(&info.layer_digests[0][2]).exists());
    assert!(registry.log().contains("GET /v2/"), "access log recorded");
}

#[test]
fn layer_kinds_and_docker_format() {
    let layout = tempfile::tempdir().expect("layout dir");
    let image = busybox_image("amd64")
        .layer(
            Layer::new(vec![
                Entry::dir("/data/sub", 0o755),
                Entry::file("/data/sub/a", 0o600, "a"),
                Entry::hardlink("/data/sub/b", "/data/sub/a"),
                Entry::whiteout("/data/random.bin"),
                Entry::opaque_dir("/home/coder"),
            ])
            .compression(Compression::Zstd),
        )
        .layer(Layer::new(vec![Entry::file("/x", 0o644, "x")]).compression(Compression::None))
        .layer(
            Layer::new(vec![Entry::file("/y", 0o644, vec![7u8; 300_000])])
                .compression(Compression::GzipMultiMember),
        );
    let info = write_layout(layout.path(), "kinds", &[image]);
    // Deterministic: the same spec gives the same digest.
    let again = tempfile::tempdir().expect("layout dir");
    let info2 = write_layout(again.path(), "kinds", &[busybox_image("amd64")]);
    assert_eq!(info.layer_digests[0][..3], info2.layer_digests[0][..3]);

    let registry = Registry::http();
    let digest = registry.push(layout.path(), "kinds", "test/kinds:1");
    let manifest = json(&registry.inspect_raw("test/kinds:1"));
    assert_eq!(digest, info.manifest_digests[0]);
    let types: Vec<&str> = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["mediaType"].as_str().expect("mediaType"))
        .collect();
    assert_eq!(types[3], "application/vnd.oci.image.layer.v1.tar+zstd");
    assert_eq!(types[4], "application/vnd.oci.image.layer.v1.tar");

    // Docker schema 2 (gzip layers only).
    let plain = tempfile::tempdir().expect("layout dir");
    layout_with_busybox(plain.path());
    registry.push_as(plain.path(), "v1", "test/docker:1", Format::Docker);
    let manifest = json(&registry.inspect_raw("test/docker:1"));
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
}

#[test]
fn https_htpasswd_push_and_inspect() {
    let layout = tempfile::tempdir().expect("layout dir");
    layout_with_busybox(layout.path());
    let registry = Registry::https_htpasswd("alice", "s3cret");
    let digest = registry.push(layout.path(), "v1", "private/busybox:v1");
    let cert_dir = registry.cert_dir().expect("cert dir");
    let inspect = |creds: Option<&str>| {
        let mut args = vec![
            "inspect".to_owned(),
            format!("--cert-dir={}", cert_dir.display()),
        ];
        if let Some(creds) = creds {
            args.push(format!("--creds={creds}"));
        }
        args.push(format!("docker://{}/private/busybox:v1", registry.host));
        skopeo(&args)
    };
    let ok = inspect(Some("alice:s3cret"));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(json(&ok.stdout)["Digest"], digest.as_str());
    assert!(!inspect(Some("alice:wrong")).status.success());
    assert!(!inspect(None).status.success());
}

#[test]
fn token_registry_push_and_inspect() {
    let layout = tempfile::tempdir().expect("layout dir");
    layout_with_busybox(layout.path());
    let (registry, token) = Registry::https_token("bob", "hunter2");
    let digest = registry.push(layout.path(), "v1", "team/busybox:v1");

    // skopeo login + inspect with the stored credentials.
    let auth = tempfile::tempdir().expect("auth dir");
    let authfile = auth.path().join("auth.json");
    let cert_dir = registry.cert_dir().expect("cert dir");
    let login = skopeo(&[
        "login".into(),
        format!("--authfile={}", authfile.display()),
        format!("--cert-dir={}", cert_dir.display()),
        "--username=bob".into(),
        "--password=hunter2".into(),
        registry.host.clone(),
    ]);
    assert!(
        login.status.success(),
        "login: {}",
        String::from_utf8_lossy(&login.stderr)
    );
    let inspect = skopeo(&[
        "inspect".into(),
        format!("--authfile={}", authfile.display()),
        format!("--cert-dir={}", cert_dir.display()),
        format!("docker://{}/team/busybox:v1", registry.host),
    ]);
    assert!(
        inspect.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&inspect.stderr),
        registry.log()
    );
    assert_eq!(json(&inspect.stdout)["Digest"], digest.as_str());

    let requests = token.requests();
    assert!(requests
        .iter()
        .any(|r| r.status == 200 && r.user.as_deref() == Some("bob")));
    assert!(requests
        .iter()
        .any(|r| r.scopes.iter().any(|s| s == "repository:team/busybox:pull")));

    // Wrong password: the token server says 401 and skopeo fails.
    let bad = skopeo(&[
        "inspect".into(),
        format!("--cert-dir={}", cert_dir.display()),
        "--creds=bob:nope".into(),
        format!("docker://{}/team/busybox:v1", registry.host),
    ]);
    assert!(!bad.status.success());
    assert!(token.requests().iter().any(|r| r.status == 401));

    // Anonymous: a token without access, then the registry refuses; with anonymous pull on, it works.
    let anonymous = || {
        skopeo(&[
            "inspect".into(),
            "--no-creds".into(),
            format!("--cert-dir={}", cert_dir.display()),
            format!("docker://{}/team/busybox:v1", registry.host),
        ])
    };
    assert!(!anonymous().status.success());
    assert!(token
        .requests()
        .iter()
        .any(|r| !r.has_authorization && r.status == 200));
    token.set_anonymous_pull(true);
    let anon = anonymous();
    assert!(
        anon.status.success(),
        "{}",
        String::from_utf8_lossy(&anon.stderr)
    );

    // Identity token: POST grant_type=refresh_token.
    let curl = Command::new("curl")
        .args([
            "-sf",
            "--cacert",
            registry.ca_cert.as_ref().expect("ca").to_str().expect("utf-8"),
            "-d",
            &format!(
                "grant_type=refresh_token&refresh_token={}&service={}&scope=repository:team/busybox:pull&client_id=envbox",
                token.refresh_token(),
                token.service
            ),
            &token.url,
        ])
        .output();
    if let Ok(out) = curl {
        assert!(out.status.success(), "refresh_token grant failed");
        let body = json(&out.stdout);
        assert!(body["access_token"]
            .as_str()
            .is_some_and(|t| t.split('.').count() == 3));
    }
}

#[test]
fn plain_http_token_server() {
    let token = TokenServer::plain_http("u", "p");
    let ca = support::tls::TestCa::new();
    let registry = Registry::https_with_token_server(&ca, &token);
    assert!(token.url.starts_with("http://"));
    assert!(registry.url().starts_with("https://"));
}

#[test]
fn two_platform_index() {
    let layout = tempfile::tempdir().expect("layout dir");
    let info = write_layout(
        layout.path(),
        "multi",
        &[busybox_image("amd64"), busybox_image("arm64")],
    );
    let registry = Registry::http();
    let digest = registry.push(layout.path(), "multi", "library/busybox:multi");
    assert_eq!(Some(digest), info.index_digest);
    let index = json(&registry.inspect_raw("library/busybox:multi"));
    assert_eq!(index["mediaType"], MT_INDEX);
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 2);
    assert_eq!(manifests[1]["platform"]["variant"], "v8");
}

fn copy_via(host: &str, reference: &str, dest: &Path) -> std::process::Output {
    skopeo(&[
        "copy".into(),
        "--insecure-policy".into(),
        "--src-tls-verify=false".into(),
        "--retry-times=0".into(),
        format!("docker://{host}/{reference}"),
        format!("dir:{}", dest.display()),
    ])
}

#[test]
fn proxy_records_and_injects_faults() {
    let layout = tempfile::tempdir().expect("layout dir");
    let info = layout_with_busybox(layout.path());
    let registry = Registry::http();
    registry.push(layout.path(), "v1", "library/busybox:v1");
    let proxy = FaultProxy::start(&registry);

    let out = tempfile::tempdir().expect("out dir");
    let ok = copy_via(&proxy.host, "library/busybox:v1", &out.path().join("a"));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(proxy.blob_gets() >= 3, "requests: {:?}", proxy.requests());

    // 503 once on the manifest: the first request fails, the next passes.
    proxy.clear_requests();
    proxy.inject(Fault::Status {
        path_contains: "/manifests/".into(),
        status: 503,
        times: 1,
    });
    let failed = copy_via(&proxy.host, "library/busybox:v1", &out.path().join("b"));
    assert!(!failed.status.success());
    assert_eq!(
        proxy
            .requests()
            .iter()
            .find(|r| r.fault.is_some())
            .map(|r| r.status),
        Some(503)
    );
    let passed = copy_via(&proxy.host, "library/busybox:v1", &out.path().join("c"));
    assert!(
        passed.status.success(),
        "{}",
        String::from_utf8_lossy(&passed.stderr)
    );

    // Drop the big layer mid-body once.
    proxy.clear_requests();
    let big = &info.layer_digests[0][2];
    proxy.inject(Fault::DropMidBody {
        path_contains: big.clone(),
        after_bytes: 100_000,
        times: 1,
    });
    let _ = copy_via(&proxy.host, "library/busybox:v1", &out.path().join("d"));
    let dropped: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.fault == Some("drop"))
        .collect();
    assert_eq!(dropped.len(), 1, "{:?}", proxy.requests());
    assert!(dropped[0].path.ends_with(big.as_str()));

    // 429, corrupt body, no range, replaced manifest: recorded as applied.
    proxy.clear_requests();
    proxy.inject(Fault::TooManyRequests {
        path_contains: "/manifests/".into(),
        retry_after_secs: 1,
        times: 1,
    });
    let limited = copy_via(&proxy.host, "library/busybox:v1", &out.path().join("e"));
    // skopeo honours Retry-After and tries again.
    assert!(
        limited.status.success(),
        "{}",
        String::from_utf8_lossy(&limited.stderr)
    );
    let manifests: Vec<u16> = proxy
        .requests()
        .iter()
        .filter(|r| r.path.contains("/manifests/"))
        .map(|r| r.status)
        .collect();
    assert_eq!(manifests[..2], [429, 200], "{:?}", proxy.requests());

    proxy.inject(Fault::CorruptBody {
        path_contains: big.clone(),
    });
    let corrupt = copy_via(&proxy.host, "library/busybox:v1", &out.path().join("f"));
    assert!(
        !corrupt.status.success(),
        "corrupted blob must fail digest verification"
    );
    proxy.clear_faults();

    proxy.inject(Fault::NoRangeSupport);
    let range = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-r", "0-9"])
        .arg(format!("{}/v2/library/busybox/blobs/{big}", proxy.url()))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&range.stdout), "200");
    proxy.clear_faults();

    let schema1 = br#"{"schemaVersion":1,"name":"library/busybox","tag":"v1","fsLayers":[]}"#;
    proxy.inject(Fault::ReplaceManifest {
        path_contains: "busybox".into(),
        content_type: "application/vnd.docker.distribution.manifest.v1+prettyjws".into(),
        body: schema1.to_vec(),
    });
    let raw = skopeo(&[
        "inspect".into(),
        "--raw".into(),
        "--tls-verify=false".into(),
        format!("docker://{}/library/busybox:v1", proxy.host),
    ]);
    assert_eq!(raw.stdout, schema1.to_vec());
}

#[test]
fn blob_redirects_to_storage_without_credentials() {
    let layout = tempfile::tempdir().expect("layout dir");
    layout_with_busybox(layout.path());
    let registry = Registry::http();
    registry.push(layout.path(), "v1", "library/busybox:v1");
    let proxy = FaultProxy::start(&registry);
    let storage = BlobStorage::start(&registry);
    assert!(storage.url.starts_with("http://localhost:"));
    proxy.inject(Fault::RedirectBlobs {
        to: storage.url.clone(),
    });
    let out = tempfile::tempdir().expect("out dir");
    let copied = copy_via(&proxy.host, "library/busybox:v1", &out.path().join("a"));
    assert!(
        copied.status.success(),
        "{}",
        String::from_utf8_lossy(&copied.stderr)
    );
    let served = storage.requests();
    assert!(
        served.iter().filter(|r| r.status == 200).count() >= 3,
        "{served:?}"
    );
    assert!(served.iter().all(|r| !r.has_authorization));
    assert!(proxy.requests().iter().any(|r| r.status == 307));
}

#[tokio::test]
async fn usable_from_tokio_tests() {
    let registry = Registry::http();
    let proxy = FaultProxy::start(&registry);
    let (token_registry, token) = Registry::https_token("u", "p");
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{}/v2/", proxy.url()))
        .output()
        .await
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    assert_eq!(proxy.requests().len(), 1);
    // Dropping servers inside an async context must not panic.
    drop(proxy);
    drop(token);
    drop(token_registry);
}

/// Benchmark-sized image: `cargo test --release --test harness -- --ignored big_image`.
#[test]
#[ignore]
fn big_image_push() {
    let layout = tempfile::tempdir().expect("layout dir");
    let started = std::time::Instant::now();
    let info = write_layout(layout.path(), "big", &[support::image::big_image(300, 6)]);
    eprintln!(
        "big_image(300, 6): {} layer bytes in {:?}",
        info.total_layer_bytes,
        started.elapsed()
    );
    let registry = Registry::http();
    let started = std::time::Instant::now();
    registry.push(layout.path(), "big", "bench/big:1");
    eprintln!("pushed in {:?}", started.elapsed());
}
