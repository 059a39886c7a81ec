//! A private containerd for the bench: its own config, root, state and socket under a
//! directory of the fresh filesystem (nothing shared with a system containerd), CRI off, the
//! default overlayfs snapshotter. `ctr image pull` through it fetches and unpacks an image.
//! Killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Containerd {
    child: Child,
    socket: PathBuf,
}

impl Containerd {
    /// Starts containerd under `dir` and waits until it answers.
    pub fn start(dir: &Path) -> Containerd {
        let socket = dir.join("c.sock");
        let config = dir.join("config.toml");
        std::fs::create_dir_all(dir).expect("containerd dir");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = {root:?}\nstate = {state:?}\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = {sock:?}\n[ttrpc]\n  address = {ttrpc:?}\n",
                root = dir.join("root").display().to_string(),
                state = dir.join("state").display().to_string(),
                sock = socket.display().to_string(),
                ttrpc = dir.join("c.sock.ttrpc").display().to_string(),
            ),
        )
        .expect("containerd config");
        let log = std::fs::File::create(dir.join("containerd.log")).expect("containerd log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let containerd = Containerd { child, socket };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !containerd.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not answer: {}",
                std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        containerd
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "bench"])
            .args(args)
            .output()
            .expect("run ctr")
    }

    /// `ctr image pull --plain-http`: fetch and unpack into the overlayfs snapshotter.
    pub fn pull(&self, reference: &str) {
        let out = self.ctr(&["image", "pull", "--plain-http", reference]);
        assert!(
            out.status.success(),
            "ctr image pull: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
