//! Test harness for the pull stage: a real registry, a token server, an OCI image builder and
//! a fault-injecting proxy. Include it from an integration test with `mod support;`.
//!
//! Needs root-free tools from Debian: `docker-registry` (distribution 2.8), `skopeo`,
//! `busybox-static`. Every server runs on its own thread and tokio runtime, so the harness works
//! from plain `#[test]` and from `#[tokio::test]` alike; everything stops on drop.
//!
//! ```ignore
//! mod support;
//! use support::image::{busybox_image, write_layout};
//! use support::proxy::{Fault, FaultProxy};
//! use support::registry::Registry;
//!
//! let layout = tempfile::tempdir().unwrap();
//! let info = write_layout(layout.path(), "v1", &[busybox_image("amd64")]);
//! let registry = Registry::http();                        // or https_htpasswd / https_token
//! let digest = registry.push(layout.path(), "v1", "library/busybox:v1");
//! assert_eq!(digest, info.top_digest());
//! let proxy = FaultProxy::start(&registry);               // pull via proxy.host instead
//! proxy.inject(Fault::Status { path_contains: "/blobs/".into(), status: 503, times: 1 });
//! // ... pull from proxy.url() ..., then inspect proxy.requests() / proxy.blob_gets()
//! ```
//!
//! - [`registry`]: `Registry::{http, https_htpasswd, https_token, https_with_token_server}`,
//!   `push`/`push_as(Format::Docker)`, `inspect_raw`, `log`, `blob_path`.
//! - [`token`]: `TokenServer` (Docker token protocol, ES256 JWTs with `x5c`), request log.
//! - [`image`]: `write_layout`, `Layer`/`Entry`/`Compression`, `busybox_image`, `big_image`.
//! - [`proxy`]: `FaultProxy` + `Fault`, `BlobStorage` (S3-like redirect target).
//! - [`tls`]: `TestCa` and signing certificates; [`server`]: the shared hyper server thread.
//! - [`debian`]: `user_image_layout`, a Debian image (debootstrap + umoci) with a user in extra
//!   groups, passwordless sudo and a directory with ACLs.
//! - [`coder`]: `StandInCoder`, the agent log endpoints of Coder (which cannot run here).
//! - [`volume`]: `SmallVolume`, a loop-mounted ext4 of a few MiB (real ENOSPC).
//! - [`workspace`]: `Envbox`, a running `envbox docker` with its progress lines.
#![allow(dead_code)]

pub mod coder;
pub mod debian;
pub mod host;
pub mod image;
pub mod proxy;
pub mod registry;
pub mod server;
pub mod tls;
pub mod token;
pub mod volume;
pub mod workspace;
