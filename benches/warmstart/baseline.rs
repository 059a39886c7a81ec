//! The baseline of the warm start benchmark: a containerd of its own (envbox's configuration,
//! its own directories) and `ctr run -d` of the same image, flattened, in a user namespace like
//! envbox's, timed from spawning containerd to the same marker.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use envbox::supervise::{render_config, ContainerdPaths, DISABLED_PLUGINS};

use crate::{run_ok, wait_for_file, MARKER_SCRIPT, POLL, TIMEOUT};

/// The baseline's containerd and spec.
pub struct Baseline {
    paths: ContainerdPaths,
    spec: PathBuf,
    marker: PathBuf,
}

impl Baseline {
    pub fn new(work: &Path, rootfs: &Path) -> Baseline {
        let base = work.join("baseline");
        let paths = ContainerdPaths::new(&base.join("state"), &base.join("run"));
        for dir in [&paths.root, &paths.state, paths.log.parent().unwrap()] {
            fs::create_dir_all(dir).expect("baseline dirs");
        }
        let disabled: Vec<String> = DISABLED_PLUGINS.iter().map(|p| (*p).to_owned()).collect();
        fs::write(
            &paths.config,
            render_config(&paths, &disabled).expect("config"),
        )
        .expect("config");
        let home = base.join("home");
        fs::create_dir_all(&home).expect("marker dir");
        std::os::unix::fs::chown(&home, Some(100_000), Some(100_000)).expect("chown marker dir");
        let out = Command::new("ctr")
            .args(["oci", "spec"])
            .output()
            .expect("ctr oci spec");
        assert!(out.status.success(), "ctr oci spec failed");
        let mut spec: serde_json::Value = serde_json::from_slice(&out.stdout).expect("spec json");
        let map = serde_json::json!([{"containerID": 0, "hostID": 100_000, "size": 65_536}]);
        spec["root"] = serde_json::json!({ "path": rootfs });
        spec["process"]["args"] = serde_json::json!(["/bin/sh", "-c", MARKER_SCRIPT]);
        spec["process"]["env"] = serde_json::json!(["PATH=/bin"]);
        spec["mounts"].as_array_mut().expect("mounts").push(serde_json::json!({
            "destination": "/home/coder", "type": "bind", "source": home, "options": ["rbind", "rw"]
        }));
        let linux = &mut spec["linux"];
        linux["namespaces"]
            .as_array_mut()
            .expect("namespaces")
            .push(serde_json::json!({"type": "user"}));
        linux["uidMappings"] = map.clone();
        linux["gidMappings"] = map;
        linux["cgroupsPath"] = serde_json::json!("/envbox-warmbench");
        let spec_path = base.join("spec.json");
        fs::write(&spec_path, serde_json::to_vec_pretty(&spec).unwrap()).expect("spec");
        Baseline {
            paths,
            spec: spec_path,
            marker: home.join("ready"),
        }
    }

    fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(&self.paths.grpc_socket);
        cmd
    }

    /// One timed start: (containerd accepting, `ctr run` returned, marker), from spawn.
    pub fn run(&self, id: &str) -> [Duration; 3] {
        let _ = fs::remove_file(&self.marker);
        for socket in [&self.paths.grpc_socket, &self.paths.ttrpc_socket] {
            let _ = fs::remove_file(socket);
        }
        let log = fs::File::create(&self.paths.log).expect("containerd log");
        let started = Instant::now();
        let mut containerd = Command::new("containerd")
            .arg("--config")
            .arg(&self.paths.config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        let end = started + TIMEOUT;
        while std::os::unix::net::UnixStream::connect(&self.paths.grpc_socket).is_err() {
            assert!(
                containerd.try_wait().unwrap().is_none(),
                "baseline containerd exited"
            );
            assert!(Instant::now() < end, "baseline containerd not ready");
            std::thread::sleep(POLL);
        }
        let ready = started.elapsed();
        run_ok(
            self.ctr()
                .args(["run", "-d", "--null-io", "--config"])
                .arg(&self.spec)
                .arg(id),
        );
        let ran = started.elapsed();
        let containerd_log = || fs::read_to_string(&self.paths.log).unwrap_or_default();
        wait_for_file(
            &self.marker,
            "the baseline container",
            || true,
            containerd_log,
        );
        let marked = started.elapsed();
        self.stop(id, containerd);
        [ready, ran, marked]
    }

    fn stop(&self, id: &str, mut containerd: Child) {
        run_ok(self.ctr().args(["task", "kill", "--signal", "SIGKILL", id]));
        let end = Instant::now() + TIMEOUT;
        while self
            .ctr()
            .args(["task", "rm", id])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            assert!(Instant::now() < end, "baseline task {id} not removed");
            std::thread::sleep(Duration::from_millis(20));
        }
        run_ok(self.ctr().args(["container", "rm", id]));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(containerd.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM containerd");
        containerd.wait().expect("wait containerd");
    }
}
