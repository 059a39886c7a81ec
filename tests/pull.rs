//! Pulls against a real registry (Debian's distribution registry) over HTTP, HTTPS with
//! htpasswd and HTTPS with token auth, with a fault-injecting proxy in front where a test needs
//! to break things or count requests. Needs `docker-registry`, `skopeo` and `busybox-static`.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use envbox::cache::{BlobStore, CacheError};
use envbox::config::Secret;
use envbox::digest::Digest;
use envbox::image::{ImageError, ImageRef, Platform, PulledImage};
use envbox::registry::{self, Credentials, RegistryConfig, RegistryError};
use support::image::{
    busybox_image, write_layout, Compression, Entry, ImageSpec, Layer, LayoutInfo,
};
use support::proxy::{BlobStorage, Fault, FaultProxy};
use support::registry::{Format, Registry};
use support::tls::TestCa;
use support::token::TokenServer;

/// Fast retries so failure tests stay quick.
fn config() -> RegistryConfig {
    RegistryConfig {
        platform: Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        },
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(5),
        ..RegistryConfig::default()
    }
}

fn insecure(hosts: &[&str]) -> RegistryConfig {
    RegistryConfig {
        insecure: hosts.iter().map(|h| h.to_string()).collect(),
        ..config()
    }
}

fn creds(host: &str, user: &str, password: &str) -> Credentials {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let doc = serde_json::json!({"auths": {host: {"auth": auth}}}).to_string();
    Credentials::parse(&Secret::new(doc), "test").unwrap()
}

/// Pushes a busybox image; returns the layout info.
fn push_busybox(registry: &Registry, repo_tag: &str) -> LayoutInfo {
    push_images(registry, repo_tag, &[busybox_image("amd64")])
}

fn push_images(registry: &Registry, repo_tag: &str, images: &[ImageSpec]) -> LayoutInfo {
    let layout = tempfile::tempdir().unwrap();
    let info = write_layout(layout.path(), "t", images);
    let pushed = registry.push(layout.path(), "t", repo_tag);
    assert_eq!(pushed, info.top_digest());
    info
}

async fn pull(
    config: &RegistryConfig,
    store: &BlobStore,
    reference: &str,
) -> Result<PulledImage, RegistryError> {
    registry::pull(config, store, &ImageRef::parse(reference).unwrap()).await
}

fn new_store() -> (tempfile::TempDir, BlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    (dir, store)
}

fn staging_is_empty(state: &Path) -> bool {
    std::fs::read_dir(state.join("staging"))
        .map(|d| d.count() == 0)
        .unwrap_or(true)
}

#[tokio::test]
async fn http_pull_is_verified_cached_and_never_fetched_twice() {
    let registry = Registry::http();
    let info = push_busybox(&registry, "team/busybox:1");
    let proxy = FaultProxy::start(&registry);
    let (dir, store) = new_store();
    let cfg = insecure(&[&proxy.host]);
    let image = pull(&cfg, &store, &format!("{}/team/busybox:1", proxy.host))
        .await
        .unwrap();
    assert_eq!(image.digest.to_string(), info.top_digest());
    assert_eq!(image.layers.len(), 3);
    for (layer, expected) in image.layers.iter().zip(&info.layer_digests[0]) {
        assert_eq!(&layer.digest.to_string(), expected);
        let bytes = std::fs::read(store.path(&layer.digest)).unwrap();
        assert_eq!(
            Digest::of(&bytes),
            layer.digest,
            "stored blob content matches its digest"
        );
    }
    assert_eq!(image.blobs_downloaded, 4, "config + 3 layers");
    assert_eq!(proxy.blob_gets(), 4);
    assert!(staging_is_empty(dir.path()));

    proxy.clear_requests();
    let again = pull(&cfg, &store, &format!("{}/team/busybox:1", proxy.host))
        .await
        .unwrap();
    assert_eq!(again.blobs_downloaded, 0);
    assert_eq!(proxy.blob_gets(), 0, "a second pull makes no blob requests");

    proxy.clear_requests();
    let by_digest = format!("{}/team/busybox@{}", proxy.host, info.top_digest());
    pull(&cfg, &store, &by_digest).await.unwrap();
    assert!(
        proxy.requests().is_empty(),
        "a digest-pinned pull of a cached image needs no network: {:?}",
        proxy.requests()
    );
}

#[tokio::test]
async fn https_with_htpasswd_and_an_extra_ca() {
    let registry = Registry::https_htpasswd("alice", "s3cret");
    push_busybox(&registry, "private/app:1");
    let reference = format!("{}/private/app:1", registry.host);
    let ca = std::fs::read_to_string(registry.ca_cert.as_ref().unwrap()).unwrap();
    let (_dir, store) = new_store();

    let mut cfg = config();
    cfg.credentials = creds(&registry.host, "alice", "s3cret");
    let started = Instant::now();
    let err = pull(&cfg, &store, &reference).await.unwrap_err();
    assert!(matches!(err, RegistryError::Certificate { .. }), "{err}");
    assert!(err.to_string().contains("CODER_EXTRA_CERTS_PATH"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "certificate errors are not retried"
    );

    cfg.extra_roots = vec![ca.clone()];
    let image = pull(&cfg, &store, &reference).await.unwrap();
    assert_eq!(image.layers.len(), 3);

    let mut wrong = config();
    wrong.extra_roots = vec![ca.clone()];
    wrong.credentials = creds(&registry.host, "alice", "wrong");
    let (_d2, fresh) = new_store();
    let err = pull(&wrong, &fresh, &reference).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("CODER_IMAGE_PULL_SECRET"), "{err}");

    let mut none = config();
    none.extra_roots = vec![ca];
    let err = pull(&none, &fresh, &reference).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::CredentialsRequired { .. }),
        "{err}"
    );
    assert!(!err.to_string().contains("s3cret"));
}

#[tokio::test]
async fn token_auth_basic_credentials_identity_tokens_and_token_errors() {
    let (registry, tokens) = Registry::https_token("bob", "hunter2");
    push_busybox(&registry, "team/app:1");
    let reference = format!("{}/team/app:1", registry.host);
    let ca = std::fs::read_to_string(registry.ca_cert.as_ref().unwrap()).unwrap();

    let mut cfg = config();
    cfg.extra_roots = vec![ca.clone()];
    cfg.credentials = creds(&registry.host, "bob", "hunter2");
    let (_d, store) = new_store();
    tokens.clear_requests();
    pull(&cfg, &store, &reference).await.unwrap();
    assert!(tokens
        .requests()
        .iter()
        .any(|r| r.user.as_deref() == Some("bob")));
    for request in tokens.requests() {
        assert_eq!(request.scopes, ["repository:team/app:pull"], "{request:?}");
        assert!(request.service.is_some(), "{request:?}");
    }

    // No credentials: an anonymous token, which pulls where the token service allows it.
    tokens.set_anonymous_pull(true);
    let anonymous = RegistryConfig {
        extra_roots: vec![ca.clone()],
        ..config()
    };
    let (_d0, store0) = new_store();
    tokens.clear_requests();
    pull(&anonymous, &store0, &reference).await.unwrap();
    assert!(
        !tokens.requests().is_empty() && tokens.requests().iter().all(|r| !r.has_authorization),
        "an anonymous token was asked for without credentials"
    );
    tokens.set_anonymous_pull(false);

    // An identity token (docker's OAuth2 refresh token) instead of a password.
    let doc = serde_json::json!({"auths": {registry.host.clone(): {"identitytoken": tokens.refresh_token()}}}).to_string();
    cfg.credentials = Credentials::parse(&Secret::new(doc), "test").unwrap();
    let (_d2, store2) = new_store();
    tokens.clear_requests();
    pull(&cfg, &store2, &reference).await.unwrap();
    assert!(
        tokens
            .requests()
            .iter()
            .any(|r| r.grant_type.as_deref() == Some("refresh_token")),
        "{:?}",
        tokens.requests().len()
    );

    // Wrong password: the token service's refusal surfaces as a token error.
    cfg.credentials = creds(&registry.host, "bob", "wrong");
    let (_d3, store3) = new_store();
    let err = pull(&cfg, &store3, &reference).await.unwrap_err();
    assert!(matches!(err, RegistryError::Token { .. }), "{err}");
    assert!(
        err.to_string().contains("invalid username or password"),
        "the token service's own words: {err}"
    );
    assert!(
        err.to_string().contains("token") || err.to_string().contains("credentials"),
        "{err}"
    );
    assert!(
        !err.to_string().contains("wrong"),
        "no password in errors: {err}"
    );
}

#[tokio::test]
async fn credentials_never_go_to_a_plain_http_token_realm_on_another_host() {
    let ca = TestCa::new();
    let tokens = TokenServer::plain_http("bob", "hunter2");
    let registry = Registry::https_with_token_server(&ca, &tokens);
    let mut cfg = config();
    cfg.extra_roots = vec![ca.cert_pem.clone()];
    cfg.credentials = creds(&registry.host, "bob", "hunter2");
    let (_d, store) = new_store();
    tokens.clear_requests();
    let err = pull(&cfg, &store, &format!("{}/team/app:1", registry.host))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::InsecureTokenRealm { .. }),
        "{err}"
    );
    assert!(
        tokens.requests().iter().all(|r| !r.has_authorization),
        "no credentials were sent"
    );
}

#[tokio::test]
async fn credentials_for_another_host_are_not_sent_and_redirects_drop_them() {
    let registry = Registry::http();
    push_busybox(&registry, "team/app:1");
    let proxy = FaultProxy::start(&registry);
    let (_d, store) = new_store();

    let mut cfg = insecure(&[&proxy.host]);
    cfg.credentials = creds("other.example.com", "u", "p");
    pull(&cfg, &store, &format!("{}/team/app:1", proxy.host))
        .await
        .unwrap();
    assert!(
        proxy.requests().iter().all(|r| !r.has_authorization),
        "credentials of another host were sent"
    );

    // Credentials for the proxy's host, blobs redirected to storage on another host.
    let storage = BlobStorage::start(&registry);
    proxy.inject(Fault::RedirectBlobs {
        to: storage.url.clone(),
    });
    cfg.credentials = creds(&proxy.host, "u", "p");
    let (_d2, store2) = new_store();
    pull(&cfg, &store2, &format!("{}/team/app:1", proxy.host))
        .await
        .unwrap();
    assert!(
        proxy.requests().iter().any(|r| r.has_authorization),
        "the registry got its credentials"
    );
    let served = storage.requests();
    assert!(!served.is_empty(), "blobs came from the storage host");
    assert!(
        served.iter().all(|r| !r.has_authorization),
        "credentials followed a redirect to another host"
    );
}

#[tokio::test]
async fn an_index_resolves_to_this_platform_or_lists_what_it_offers() {
    let registry = Registry::http();
    let info = push_images(
        &registry,
        "multi/app:1",
        &[busybox_image("amd64"), busybox_image("arm64")],
    );
    let reference = format!("{}/multi/app:1", registry.host);
    let (_d, store) = new_store();
    let cfg = insecure(&[&registry.host]);
    let image = pull(&cfg, &store, &reference).await.unwrap();
    assert_eq!(image.digest.to_string(), info.index_digest.clone().unwrap());
    assert_eq!(image.manifest_digest.to_string(), info.manifest_digests[0]);

    let mut arm = cfg.clone();
    arm.platform = Platform {
        os: "linux".into(),
        architecture: "arm64".into(),
        variant: Some("v8".into()),
    };
    let image = pull(&arm, &store, &reference).await.unwrap();
    assert_eq!(image.manifest_digest.to_string(), info.manifest_digests[1]);

    let mut s390 = cfg.clone();
    s390.platform = Platform {
        os: "linux".into(),
        architecture: "s390x".into(),
        variant: None,
    };
    let err = pull(&s390, &store, &reference).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("linux/s390x")
            && text.contains("linux/amd64")
            && text.contains("linux/arm64/v8"),
        "{text}"
    );
}

#[tokio::test]
async fn a_corrupted_blob_is_an_error_and_nothing_is_committed() {
    let registry = Registry::http();
    let info = push_busybox(&registry, "team/app:1");
    let proxy = FaultProxy::start(&registry);
    let layer = info.layer_digests[0][2].clone();
    proxy.inject(Fault::CorruptBody {
        path_contains: layer.clone(),
    });
    let (dir, store) = new_store();
    let err = pull(
        &insecure(&[&proxy.host]),
        &store,
        &format!("{}/team/app:1", proxy.host),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::Store {
                source: CacheError::DigestMismatch { .. },
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(store.size_of(&Digest::parse(&layer).unwrap()), None);
    assert!(staging_is_empty(dir.path()));
}

#[tokio::test]
async fn a_connection_dropped_mid_blob_resumes_with_range() {
    let registry = Registry::http();
    let info = push_busybox(&registry, "team/app:1");
    let proxy = FaultProxy::start(&registry);
    let layer = info.layer_digests[0][2].clone();
    proxy.inject(Fault::DropMidBody {
        path_contains: layer.clone(),
        after_bytes: 1 << 20,
        times: 2,
    });
    let (_d, store) = new_store();
    let image = pull(
        &insecure(&[&proxy.host]),
        &store,
        &format!("{}/team/app:1", proxy.host),
    )
    .await
    .unwrap();
    assert_eq!(image.layers.len(), 3);
    let ranged: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.path.contains(&layer) && r.range.is_some())
        .collect();
    assert!(
        !ranged.is_empty(),
        "the retry asked for the rest with Range"
    );
    assert!(
        ranged[0].range.as_deref().unwrap().starts_with("bytes="),
        "{:?}",
        ranged[0].range
    );
    assert_ne!(ranged[0].range.as_deref(), Some("bytes=0-"));
}

#[tokio::test]
async fn a_registry_without_range_support_still_completes_after_a_drop() {
    let registry = Registry::http();
    let info = push_busybox(&registry, "team/app:1");
    let proxy = FaultProxy::start(&registry);
    proxy.inject(Fault::NoRangeSupport);
    proxy.inject(Fault::DropMidBody {
        path_contains: info.layer_digests[0][2].clone(),
        after_bytes: 100_000,
        times: 1,
    });
    let (_d, store) = new_store();
    pull(
        &insecure(&[&proxy.host]),
        &store,
        &format!("{}/team/app:1", proxy.host),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn server_errors_and_429_are_retried_honouring_retry_after() {
    let registry = Registry::http();
    push_busybox(&registry, "team/app:1");
    let proxy = FaultProxy::start(&registry);
    proxy.inject(Fault::Status {
        path_contains: "/blobs/".into(),
        status: 503,
        times: 2,
    });
    let (_d, store) = new_store();
    let cfg = insecure(&[&proxy.host]);
    pull(&cfg, &store, &format!("{}/team/app:1", proxy.host))
        .await
        .unwrap();
    assert_eq!(
        proxy.requests().iter().filter(|r| r.status == 503).count(),
        2
    );

    let (_d2, store2) = new_store();
    proxy.clear_faults();
    proxy.inject(Fault::TooManyRequests {
        path_contains: "/blobs/".into(),
        retry_after_secs: 2,
        times: 1,
    });
    let started = Instant::now();
    pull(&cfg, &store2, &format!("{}/team/app:1", proxy.host))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "Retry-After was not honoured: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn not_found_and_denied_are_not_retried() {
    let registry = Registry::http();
    push_busybox(&registry, "team/app:1");
    let proxy = FaultProxy::start(&registry);
    let (_d, store) = new_store();
    let cfg = insecure(&[&proxy.host]);
    let err = pull(&cfg, &store, &format!("{}/team/nope:1", proxy.host))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
    assert_eq!(
        proxy
            .requests()
            .iter()
            .filter(|r| r.path.contains("/manifests/"))
            .count(),
        1
    );

    proxy.clear_requests();
    proxy.inject(Fault::Status {
        path_contains: "/blobs/".into(),
        status: 403,
        times: 100,
    });
    let err = pull(&cfg, &store, &format!("{}/team/app:1", proxy.host))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Denied { .. }), "{err}");
    let denied = proxy.requests().iter().filter(|r| r.status == 403).count();
    assert!(denied <= 4, "403 was retried: {denied} requests");
}

/// A 401 in the middle of a pull (a token that expired) re-authenticates once, then goes on;
/// one that persists fails naming the credentials.
#[tokio::test]
async fn a_401_mid_pull_reauthenticates_once() {
    let registry = Registry::http();
    push_busybox(&registry, "team/app:1");
    let proxy = FaultProxy::start(&registry);
    let cfg = insecure(&[&proxy.host]);
    let probes = |proxy: &FaultProxy| proxy.requests().iter().filter(|r| r.path == "/v2/").count();
    proxy.inject(Fault::Status {
        path_contains: "/blobs/".into(),
        status: 401,
        times: 1,
    });
    let (_d, store) = new_store();
    pull(&cfg, &store, &format!("{}/team/app:1", proxy.host))
        .await
        .unwrap();
    assert_eq!(probes(&proxy), 2, "probed again to re-authenticate");

    proxy.clear_faults();
    proxy.clear_requests();
    proxy.inject(Fault::Status {
        path_contains: "/blobs/".into(),
        status: 401,
        times: 100,
    });
    let (_d2, store2) = new_store();
    let err = pull(&cfg, &store2, &format!("{}/team/app:1", proxy.host))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::CredentialsRequired { .. }),
        "{err}"
    );
    let unauthorized = proxy.requests().iter().filter(|r| r.status == 401).count();
    assert_eq!(unauthorized, 2, "one retry after re-authenticating");
}

#[tokio::test]
async fn schema1_is_refused_with_advice() {
    let registry = Registry::http();
    push_busybox(&registry, "team/app:1");
    let proxy = FaultProxy::start(&registry);
    let body = br#"{"schemaVersion":1,"name":"team/app","tag":"1","architecture":"amd64","fsLayers":[],"history":[]}"#.to_vec();
    proxy.inject(Fault::ReplaceManifest {
        path_contains: "/manifests/".into(),
        content_type: "application/vnd.docker.distribution.manifest.v1+prettyjws".into(),
        body,
    });
    let (_d, store) = new_store();
    let err = pull(
        &insecure(&[&proxy.host]),
        &store,
        &format!("{}/team/app:1", proxy.host),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, RegistryError::Image(ImageError::SchemaV1 { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("rebuild"), "{err}");
}

/// An index of indexes: `multi/app:nested` -> the two-platform index -> each manifest, and
/// deeper nestings up to the limit.
#[tokio::test]
async fn nested_indexes_are_followed_to_this_platform_within_a_depth_limit() {
    let registry = Registry::http();
    let info = push_images(
        &registry,
        "multi/app:1",
        &[busybox_image("amd64"), busybox_image("arm64")],
    );
    // Wrap the index `depth - 1` more times, each level pushed under `nested<depth>`.
    let mut inner = registry.inspect_raw("multi/app:1");
    let mut nest = |depth: usize| {
        let outer = serde_json::json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": Digest::of(&inner).to_string(), "size": inner.len()}]});
        inner = serde_json::to_vec(&outer).unwrap();
        registry.store_manifest("multi/app", &format!("nested{depth}"), &inner)
    };
    let nested2 = nest(2);
    let (_d, store) = new_store();
    let cfg = insecure(&[&registry.host]);
    let reference = format!("{}/multi/app:nested2", registry.host);
    let image = pull(&cfg, &store, &reference).await.unwrap();
    assert_eq!(image.digest.to_string(), nested2);
    assert_eq!(image.manifest_digest.to_string(), info.manifest_digests[0]);
    let mut arm = cfg.clone();
    arm.platform = Platform {
        os: "linux".into(),
        architecture: "arm64".into(),
        variant: Some("v8".into()),
    };
    let image = pull(&arm, &store, &reference).await.unwrap();
    assert_eq!(image.manifest_digest.to_string(), info.manifest_digests[1]);

    // No match: every platform of the nested index is named, none as "unknown".
    let mut s390 = cfg.clone();
    s390.platform.architecture = "s390x".into();
    let err = pull(&s390, &store, &reference).await.unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::Image(ImageError::NoMatchingPlatform { .. })
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("it offers: linux/amd64, linux/arm64") && !text.contains("unknown"),
        "{text}"
    );

    // Four levels of indexes are followed; a fifth is refused.
    nest(3);
    nest(4);
    pull(
        &cfg,
        &store,
        &format!("{}/multi/app:nested4", registry.host),
    )
    .await
    .unwrap();
    nest(5);
    let err = pull(
        &cfg,
        &store,
        &format!("{}/multi/app:nested5", registry.host),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("more than 4 levels deep"), "{err}");
}

/// The real registry's manifest padded to 16 MiB, served by the proxy in front of it
/// (distribution itself refuses to store or serve a manifest over 4 MiB: `storage: read
/// exceeds limit`, as containerd refuses to read one).
#[tokio::test]
async fn manifests_over_4_mib_are_refused_before_they_are_read_whole() {
    let registry = Registry::http();
    push_busybox(&registry, "team/app:1");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&registry.inspect_raw("team/app:1")).unwrap();
    manifest["annotations"] = serde_json::json!({"padding": "x".repeat(16 << 20)});
    let body = serde_json::to_vec(&manifest).unwrap();
    let digest = Digest::of(&body).to_string();
    let content_type = manifest["mediaType"].as_str().unwrap().to_owned();
    let proxy = FaultProxy::start(&registry);
    for path_contains in ["/manifests/big", digest.as_str()] {
        proxy.inject(Fault::ReplaceManifest {
            path_contains: path_contains.into(),
            content_type: content_type.clone(),
            body: body.clone(),
        });
    }
    proxy.inject(Fault::ReplaceManifestChunked {
        path_contains: "/manifests/chunked".into(),
        content_type,
        body: body.clone(),
    });
    let cfg = insecure(&[&proxy.host]);
    let (_d, store) = new_store();
    for reference in [
        format!("{}/team/app:big", proxy.host),
        format!("{}/team/app@{digest}", proxy.host),
    ] {
        let err = pull(&cfg, &store, &reference).await.unwrap_err();
        assert!(
            matches!(err, RegistryError::Image(ImageError::TooLarge { .. })),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&reference)
                && text.contains(&format!("{} bytes", body.len()))
                && text.contains("4194304"),
            "names the reference, the size and the limit: {text}"
        );
    }
    assert_eq!(
        proxy
            .requests()
            .iter()
            .filter(|r| r.path.contains("/manifests/"))
            .count(),
        2,
        "a refused manifest is not retried"
    );
    // Without a Content-Length, the read stops at the limit.
    let err = pull(&cfg, &store, &format!("{}/team/app:chunked", proxy.host))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::Image(ImageError::TooLarge { size: None, .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("more than 4194304 bytes"), "{err}");
}

#[tokio::test]
async fn gzip_zstd_plain_and_docker_v2_images_pull_and_unknown_layers_are_refused() {
    let registry = Registry::http();
    let files = |name: &str| {
        vec![
            Entry::dir("etc", 0o755),
            Entry::file(&format!("etc/{name}"), 0o644, name.as_bytes().to_vec()),
        ]
    };
    let mixed = ImageSpec::new("amd64")
        .layer(Layer::new(files("a")).compression(Compression::Gzip))
        .layer(Layer::new(files("b")).compression(Compression::Zstd))
        .layer(Layer::new(files("c")).compression(Compression::None))
        .layer(Layer::new(files("d")).compression(Compression::GzipMultiMember));
    push_images(&registry, "mixed/app:1", &[mixed]);
    let (_d, store) = new_store();
    let cfg = insecure(&[&registry.host]);
    let image = pull(&cfg, &store, &format!("{}/mixed/app:1", registry.host))
        .await
        .unwrap();
    assert_eq!(image.layers.len(), 4);

    let layout = tempfile::tempdir().unwrap();
    write_layout(layout.path(), "t", &[busybox_image("amd64")]);
    registry.push_as(layout.path(), "t", "docker/app:1", Format::Docker);
    pull(&cfg, &store, &format!("{}/docker/app:1", registry.host))
        .await
        .unwrap();

    let odd = ImageSpec::new("amd64")
        .layer(Layer::new(files("e")).media_type("application/vnd.example.layer.v1.tar+lz4"));
    push_images(&registry, "odd/app:1", &[odd]);
    let err = pull(&cfg, &store, &format!("{}/odd/app:1", registry.host))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("application/vnd.example.layer.v1.tar+lz4"),
        "{err}"
    );
}

#[tokio::test]
async fn tls_spoken_to_plain_http_and_the_reverse_fail_at_once_naming_the_insecure_setting() {
    // HTTPS to a plain-HTTP registry (not listed in ENVBOX_INSECURE_REGISTRIES).
    let plain = Registry::http();
    let (_d, store) = new_store();
    let started = Instant::now();
    let err = pull(&config(), &store, &format!("{}/team/app:1", plain.host))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotHttps { .. }), "{err}");
    assert!(
        err.to_string().contains("add") && err.to_string().contains("ENVBOX_INSECURE_REGISTRIES"),
        "{err}"
    );

    // Plain HTTP to a TLS registry listed there: Go's distribution answers 400...
    let tls = Registry::https_htpasswd("alice", "s3cret");
    let err = pull(
        &insecure(&[&tls.host]),
        &store,
        &format!("{}/team/app:1", tls.host),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RegistryError::NotPlainHttp { .. }), "{err}");
    assert!(
        err.to_string().contains("remove")
            && err.to_string().contains("ENVBOX_INSECURE_REGISTRIES"),
        "{err}"
    );

    // ...and a rustls server closes the connection.
    let ca = TestCa::new();
    let server = support::server::Server::start(
        "tls-only",
        Some(ca.server_config(&ca.issue_server())),
        support::server::handler(|_| async { support::server::respond(200, &[], "{}") }),
    );
    let host = format!("127.0.0.1:{}", server.port());
    let err = pull(&insecure(&[&host]), &store, &format!("{host}/team/app:1"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotPlainHttp { .. }), "{err}");
    assert!(
        err.to_string().contains("ENVBOX_INSECURE_REGISTRIES"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a scheme mismatch is not retried: {:?}",
        started.elapsed()
    );
}

// ------------------------------------------------------------------ the commands

const ENVBOX: &str = env!("CARGO_BIN_EXE_envbox");

fn envbox(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(ENVBOX)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(env.iter().copied())
        .output()
        .expect("run envbox")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn pull_prints_the_digest_and_cache_prune_keeps_only_the_current_image() {
    let registry = Registry::http();
    let a = push_busybox(&registry, "team/a:1");
    let b = push_images(
        &registry,
        "team/b:1",
        &[ImageSpec::new("amd64").layer(Layer::new(vec![Entry::file(
            "only-in-b",
            0o644,
            b"b".to_vec(),
        )]))],
    );
    let state = tempfile::tempdir().unwrap();
    let env = [
        ("ENVBOX_STATE_DIR", state.path().to_str().unwrap()),
        ("ENVBOX_INSECURE_REGISTRIES", registry.host.as_str()),
    ];
    let ref_a = format!("{}/team/a:1", registry.host);
    let ref_b = format!("{}/team/b:1", registry.host);
    for (reference, info) in [(&ref_a, &a), (&ref_b, &b)] {
        let out = envbox(&["pull", reference], &env);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let repo = reference.trim_end_matches(":1");
        assert_eq!(
            text(&out.stdout).trim(),
            format!("{repo}@{}", info.top_digest())
        );
    }
    let ls = envbox(&["cache", "ls"], &env);
    let listing = text(&ls.stdout);
    assert!(
        listing.contains(&ref_a) && listing.contains(&ref_b),
        "{listing}"
    );
    let b_layer = Digest::parse(&b.layer_digests[0][0]).unwrap();
    let store = BlobStore::open(state.path()).unwrap();
    assert!(store.size_of(&b_layer).is_some());

    // b was used after a: the default (one earlier image kept) would keep it.
    let prune = envbox(
        &["cache", "prune", "--image", &ref_a, "--keep-images", "0"],
        &env,
    );
    assert!(prune.status.success(), "{}", text(&prune.stderr));
    assert_eq!(store.size_of(&b_layer), None, "b's layer was pruned");
    for layer in &a.layer_digests[0] {
        assert!(
            store.size_of(&Digest::parse(layer).unwrap()).is_some(),
            "a's layer {layer} was kept"
        );
    }
    let again = envbox(&["pull", &ref_a], &env);
    assert!(
        text(&again.stderr).contains("0 blob(s) downloaded"),
        "{}",
        text(&again.stderr)
    );
}

#[test]
fn pull_reads_the_pull_secret_and_an_extra_certs_directory_from_the_environment() {
    let registry = Registry::https_htpasswd("alice", "s3cret");
    push_busybox(&registry, "private/app:1");
    let certs = tempfile::tempdir().unwrap();
    std::fs::copy(
        registry.ca_cert.as_ref().unwrap(),
        certs.path().join("ca.crt"),
    )
    .unwrap();
    std::fs::create_dir(certs.path().join("..data")).unwrap();
    std::fs::write(certs.path().join("..data").join("not-a-cert"), "junk").unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
    let secret = serde_json::json!({"auths": {registry.host.clone(): {"auth": auth}}}).to_string();
    let state = tempfile::tempdir().unwrap();
    let reference = format!("{}/private/app:1", registry.host);
    let env = [
        ("ENVBOX_STATE_DIR", state.path().to_str().unwrap()),
        ("CODER_IMAGE_PULL_SECRET", secret.as_str()),
        ("CODER_EXTRA_CERTS_PATH", certs.path().to_str().unwrap()),
    ];
    let out = envbox(&["pull", &reference], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("s3cret"));

    let out = envbox(&["pull", &reference], &env[..2]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("CODER_EXTRA_CERTS_PATH"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn foreign_layer_urls_are_tried_first_and_without_credentials() {
    let registry = Registry::http();
    let info = push_busybox(&registry, "team/app:1");
    let storage = BlobStorage::start(&registry);
    let proxy = FaultProxy::start(&registry);
    let layer = info.layer_digests[0][0].clone();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&registry.inspect_raw("team/app:1")).unwrap();
    manifest["layers"][0]["urls"] =
        serde_json::json!([format!("{}/v2/team/app/blobs/{layer}", storage.url)]);
    proxy.inject(Fault::ReplaceManifest {
        path_contains: "/manifests/1".into(),
        content_type: "application/vnd.oci.image.manifest.v1+json".into(),
        body: serde_json::to_vec(&manifest).unwrap(),
    });
    let mut cfg = insecure(&[&proxy.host]);
    cfg.credentials = creds(&proxy.host, "u", "p");
    let (_d, store) = new_store();
    let image = pull(&cfg, &store, &format!("{}/team/app:1", proxy.host))
        .await
        .unwrap();
    assert_eq!(image.layers[0].digest.to_string(), layer);
    let from_storage = storage.requests();
    assert!(
        from_storage.iter().any(|r| r.path.contains(&layer)),
        "the foreign URL was used"
    );
    assert!(
        from_storage.iter().all(|r| !r.has_authorization),
        "credentials went to a foreign URL"
    );
    assert!(
        !proxy
            .requests()
            .iter()
            .any(|r| r.path.contains(&format!("/blobs/{layer}"))),
        "the registry was not asked for it"
    );
}

/// The progress lines (`output` of the JSON lines) envbox wrote on stderr.
fn progress_lines(stderr: &[u8]) -> Vec<String> {
    text(stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["output"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn an_unreachable_registry_says_each_retry_and_gives_up_within_its_budget() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = format!("127.0.0.1:{}", closed.local_addr().unwrap().port());
    drop(closed);
    let state = tempfile::tempdir().unwrap();
    let image = format!("{host}/nope:1");
    let started = Instant::now();
    let out = envbox(
        &["prepare"],
        &[
            ("ENVBOX_STATE_DIR", state.path().to_str().unwrap()),
            ("CODER_INNER_IMAGE", image.as_str()),
        ],
    );
    let elapsed = started.elapsed();
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        elapsed < Duration::from_secs(40),
        "refused took {elapsed:?} to fail: {stderr}"
    );
    // One line per retry: what failed, attempt k of n, when the next comes.
    let retries: Vec<String> = progress_lines(&out.stderr)
        .into_iter()
        .filter(|l| l.contains("next try in"))
        .collect();
    let pattern = regex::Regex::new(
        r"^registry (\S+): connection refused \(attempt (\d+) of (\d+)\); next try in (\d+\.\d) s$",
    )
    .unwrap();
    let mut delays = Vec::new();
    for (i, line) in retries.iter().enumerate() {
        let c = pattern
            .captures(line)
            .unwrap_or_else(|| panic!("retry line {line:?} in {stderr}"));
        assert_eq!(&c[1], host);
        assert_eq!(c[2].parse::<usize>().unwrap(), i + 1, "{stderr}");
        assert_eq!(
            c[3].parse::<usize>().unwrap(),
            retries.len() + 1,
            "{stderr}"
        );
        delays.push(c[4].parse::<f64>().unwrap());
    }
    assert!(retries.len() >= 2, "no retry lines: {stderr}");
    assert!(
        delays.windows(2).all(|w| w[0] < w[1]),
        "the waits grow: {delays:?}"
    );
    // The final error: what failed, how many attempts over how long, what to do.
    let attempts = format!("gave up after {} attempts over", retries.len() + 1);
    assert!(stderr.contains(&attempts), "{stderr}");
    assert!(stderr.contains("connection refused"), "{stderr}");
    assert!(stderr.contains("check the host and port"), "{stderr}");
}
