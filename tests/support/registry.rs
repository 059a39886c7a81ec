//! A real CNCF distribution registry (Debian's `docker-registry`, 2.8) run as a child process
//! for one test: plain HTTP, HTTPS with htpasswd (bcrypt) Basic auth, or HTTPS with token auth
//! against a [`TokenServer`]. Owns its temp dir (config, storage, certificates, log), waits until
//! `GET /v2/` answers, and kills + reaps the process on drop. Pushes OCI layouts with `skopeo`.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::tls::TestCa;
use super::token::TokenServer;

/// Binary of Debian's `docker-registry` package.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// The manifest format a push writes to the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// As in the layout (OCI manifests / image index), digests preserved.
    Oci,
    /// Converted by skopeo to Docker schema 2 (`--format v2s2`); digests change.
    Docker,
}

pub struct Registry {
    /// `127.0.0.1:PORT`
    pub host: String,
    /// The CA certificate (PEM) for HTTPS registries; its directory is a skopeo `--cert-dir`.
    pub ca_cert: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    dir: TempDir,
    child: Option<Child>,
    log_path: PathBuf,
    tls_client: Option<Arc<rustls::ClientConfig>>,
}

enum Auth<'a> {
    None,
    Htpasswd { user: &'a str, password: &'a str },
    Token(&'a TokenServer),
}

impl Registry {
    /// Plain HTTP, no auth.
    pub fn http() -> Registry {
        Registry::start(None, Auth::None)
    }

    /// HTTPS (certificate from a fresh CA) with htpasswd Basic auth.
    pub fn https_htpasswd(user: &str, password: &str) -> Registry {
        let mut registry = Registry::start(Some(&TestCa::new()), Auth::Htpasswd { user, password });
        registry.user = Some(user.to_owned());
        registry.password = Some(password.to_owned());
        registry
    }

    /// HTTPS with token auth; the token server (HTTPS, same CA) issues tokens for `user`.
    pub fn https_token(user: &str, password: &str) -> (Registry, TokenServer) {
        let ca = TestCa::new();
        let token = TokenServer::https(&ca, user, password);
        let mut registry = Registry::https_with_token_server(&ca, &token);
        registry.user = Some(user.to_owned());
        registry.password = Some(password.to_owned());
        (registry, token)
    }

    /// HTTPS (certificate from `ca`) with token auth against an existing token server (e.g.
    /// [`TokenServer::plain_http`]). `user`/`password` are left unset.
    pub fn https_with_token_server(ca: &TestCa, token: &TokenServer) -> Registry {
        Registry::start(Some(ca), Auth::Token(token))
    }

    pub fn url(&self) -> String {
        let scheme = if self.ca_cert.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.host)
    }

    /// The directory holding `ca.crt` (skopeo's `--cert-dir`), for HTTPS registries.
    pub fn cert_dir(&self) -> Option<PathBuf> {
        self.ca_cert
            .as_ref()
            .map(|p| p.parent().expect("CA cert has a parent").to_owned())
    }

    /// The registry's storage root (`docker/registry/v2/...` lies below).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps the blob `sha256:<hex>` (to corrupt or delete it behind its back).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256: digest");
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// skopeo flags for this registry's TLS and credentials; `prefix` is `""` (inspect),
    /// `"src-"` or `"dest-"` (copy).
    pub fn skopeo_flags(&self, prefix: &str) -> Vec<String> {
        let mut flags = Vec::new();
        match self.cert_dir() {
            Some(dir) => flags.push(format!("--{prefix}cert-dir={}", dir.display())),
            None => flags.push(format!("--{prefix}tls-verify=false")),
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            flags.push(format!("--{prefix}creds={user}:{password}"));
        }
        flags
    }

    /// Pushes `image` as `repo_and_tag` (e.g. `team/a:1`) through a layout written for it; the
    /// layout's digests.
    pub fn push_image(
        &self,
        image: super::image::ImageSpec,
        repo_and_tag: &str,
    ) -> super::image::LayoutInfo {
        let layout = tempfile::tempdir().expect("layout dir");
        let info = super::image::write_layout(layout.path(), "t", &[image]);
        self.push(layout.path(), "t", repo_and_tag);
        info
    }

    /// `skopeo copy --all --preserve-digests oci:<layout>:<tag> docker://<host>/<repo_and_tag>`;
    /// returns the digest of the pushed manifest (or index).
    pub fn push(&self, layout: &Path, tag_in_layout: &str, repo_and_tag: &str) -> String {
        self.push_as(layout, tag_in_layout, repo_and_tag, Format::Oci)
    }

    /// [`Registry::push`] in the given format.
    pub fn push_as(
        &self,
        layout: &Path,
        tag_in_layout: &str,
        repo_and_tag: &str,
        format: Format,
    ) -> String {
        let digest_file = self
            .dir
            .path()
            .join(format!("digest-{}", repo_and_tag.replace(['/', ':'], "_")));
        let mut args: Vec<String> = vec![
            "copy".into(),
            "--insecure-policy".into(),
            "--all".into(),
            format!("--digestfile={}", digest_file.display()),
        ];
        match format {
            Format::Oci => args.push("--preserve-digests".into()),
            Format::Docker => args.push("--format=v2s2".into()),
        }
        args.extend(self.skopeo_flags("dest-"));
        args.push(format!("oci:{}:{tag_in_layout}", layout.display()));
        args.push(format!("docker://{}/{repo_and_tag}", self.host));
        self.skopeo_ok(&args);
        fs::read_to_string(&digest_file)
            .expect("read skopeo --digestfile")
            .trim()
            .to_owned()
    }

    /// `skopeo inspect --raw docker://<host>/<reference>`: the manifest bytes as served.
    pub fn inspect_raw(&self, reference: &str) -> Vec<u8> {
        let mut args: Vec<String> = vec!["inspect".into(), "--raw".into()];
        args.extend(self.skopeo_flags(""));
        args.push(format!("docker://{}/{reference}", self.host));
        self.skopeo_ok(&args).stdout
    }

    /// Writes `body` into the registry's storage as the manifest of `repo:tag`, as a push
    /// leaves it, and returns its digest: for what skopeo or the registry's own PUT refuse
    /// (manifests over 4 MiB, nested indexes). The blobs and manifests it names must be in
    /// `repo` already. The registry serves it from storage like any other.
    pub fn store_manifest(&self, repo: &str, tag: &str, body: &[u8]) -> String {
        let digest = super::server::sha256_digest(body);
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        let write = |path: PathBuf, bytes: &[u8]| {
            fs::create_dir_all(path.parent().expect("a parent")).expect("storage dirs");
            fs::write(&path, bytes).expect("write into the registry's storage");
        };
        write(self.blob_path(&digest), body);
        let manifests = self
            .storage_dir()
            .join("docker/registry/v2/repositories")
            .join(repo)
            .join("_manifests");
        let link = digest.as_bytes();
        write(
            manifests.join("revisions/sha256").join(hex).join("link"),
            link,
        );
        let tag_dir = manifests.join("tags").join(tag);
        write(tag_dir.join("current/link"), link);
        write(tag_dir.join("index/sha256").join(hex).join("link"), link);
        digest
    }

    /// Runs skopeo, panicking with its output and the registry log if it fails.
    pub fn skopeo_ok(&self, args: &[String]) -> Output {
        let output = skopeo(args);
        assert!(
            output.status.success(),
            "skopeo {} failed ({}):\n{}\n--- registry log ---\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr),
            tail(&self.log(), 4000)
        );
        output
    }

    fn start(ca: Option<&TestCa>, auth: Auth<'_>) -> Registry {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} missing: apt-get install docker-registry"
        );
        let dir = tempfile::Builder::new()
            .prefix("envbox-registry-")
            .tempdir()
            .expect("registry temp dir");
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let storage = dir.path().join("storage");
        fs::create_dir_all(&storage).expect("create registry storage dir");

        let mut ca_cert = None;
        let mut tls_yaml = String::new();
        if let Some(ca) = ca {
            let certs = dir.path().join("certs");
            fs::create_dir_all(&certs).expect("create certs dir");
            let server = ca.issue_server();
            let ca_path = certs.join("ca.crt");
            fs::write(&ca_path, &ca.cert_pem).expect("write ca.crt");
            let tls_dir = dir.path().join("tls");
            fs::create_dir_all(&tls_dir).expect("create tls dir");
            fs::write(tls_dir.join("server.crt"), &server.cert_pem).expect("write server.crt");
            fs::write(tls_dir.join("server.key"), &server.key_pem).expect("write server.key");
            tls_yaml = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                tls_dir.join("server.crt").display(),
                tls_dir.join("server.key").display()
            );
            ca_cert = Some(ca_path);
        }

        let auth_yaml = match auth {
            Auth::None => String::new(),
            Auth::Htpasswd { user, password } => {
                let hash = bcrypt::hash(password, 4).expect("bcrypt hash");
                let path = dir.path().join("htpasswd");
                fs::write(&path, format!("{user}:{hash}\n")).expect("write htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: envbox-test\n    path: {}\n",
                    path.display()
                )
            }
            Auth::Token(token) => {
                let bundle = dir.path().join("token-signer.pem");
                fs::write(&bundle, &token.signing_cert_pem).expect("write rootcertbundle");
                format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    token.url,
                    token.service,
                    token.issuer,
                    bundle.display()
                )
            }
        };

        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: {host}\n  secret: envbox-test-secret\n{tls_yaml}\
             health:\n  storagedriver:\n    enabled: false\n\
             {auth_yaml}",
            storage = storage.display(),
        );
        let config_path = dir.path().join("config.yml");
        fs::write(&config_path, &config).expect("write registry config");

        let log_path = dir.path().join("registry.log");
        let log = fs::File::create(&log_path).expect("create registry log");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");

        let mut registry = Registry {
            host,
            ca_cert,
            user: None,
            password: None,
            dir,
            child: Some(child),
            log_path,
            tls_client: ca.map(|ca| ca.client_config()),
        };
        registry.wait_ready(&config);
        registry
    }

    fn wait_ready(&mut self, config: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .expect("registry child")
                .try_wait()
                .expect("poll registry child")
            {
                panic!(
                    "docker-registry exited early ({status}); config:\n{config}\n--- log ---\n{}",
                    self.log()
                );
            }
            let last = match self.get_v2_status() {
                Ok(200) | Ok(401) => return,
                Ok(other) => format!("GET /v2/ answered {other}"),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                panic!(
                    "docker-registry at {} not ready after 20 s ({last}); config:\n{config}\n--- log ---\n{}",
                    self.url(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Status of `GET /v2/` (plain std I/O, rustls for HTTPS).
    fn get_v2_status(&self) -> Result<u16, String> {
        let mut tcp = TcpStream::connect(&self.host).map_err(|e| format!("connect: {e}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let request = format!(
            "GET /v2/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.host
        );
        let mut response = Vec::new();
        match &self.tls_client {
            None => {
                tcp.write_all(request.as_bytes())
                    .map_err(|e| e.to_string())?;
                let _ = tcp.read_to_end(&mut response);
            }
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1")
                    .expect("server name")
                    .to_owned();
                let mut conn = rustls::ClientConnection::new(config.clone(), name)
                    .map_err(|e| e.to_string())?;
                let mut stream = rustls::Stream::new(&mut conn, &mut tcp);
                stream
                    .write_all(request.as_bytes())
                    .map_err(|e| format!("TLS: {e}"))?;
                let _ = stream.read_to_end(&mut response);
            }
        }
        let text = String::from_utf8_lossy(&response);
        let status_line = text.lines().next().unwrap_or("");
        status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `skopeo` with `args` (no assertion).
pub fn skopeo(args: &[String]) -> Output {
    Command::new("skopeo")
        .args(args)
        .output()
        .expect("run skopeo (apt-get install skopeo)")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local address")
        .port()
}

fn tail(text: &str, max: usize) -> &str {
    let start = text.len().saturating_sub(max);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    &text[start..]
}
