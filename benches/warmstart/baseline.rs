//! The baseline of the warm start benchmark: a containerd of its own (envbox's configuration,
//! its own directories) and `ctr run -d` of the same image, flattened, in a user namespace like
//! envbox's, timed from spawning containerd to the same marker.
//!
//! Its CNI variant also attaches the task's network namespace to envbox's own network (the
//! `envbox0` bridge, the default subnet, the same CNI plugins and masquerade, through envbox's
//! `network::Network` as `envbox docker` runs them), after `ctr run -d` returns: what `ctr run
//! --cni` does, which reads its CNI config only from `/etc/cni/net.d` (shared by the host).
//! envbox attaches before the task starts; the work is the same. The bridge is deleted after
//! each run (untimed), so each ADD makes it afresh, as each start of envbox does. Its exec
//! variant also runs the marker script as envbox does, in an exec (`ctr task exec -d`, as root)
//! beside an init that only sleeps. Two more carry envbox's seccomp profile (moby's, for three
//! architectures: runc compiles it in every create and exec): the plain run with it
//! (`Variant::Seccomp`), and the exec variant with it (`Variant::Full`): every step of envbox's
//! start but its own bookkeeping.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use envbox::config::{Purpose, RawSettings, Settings};
use envbox::network::{LinkMtu, Network, NetworkPlan};
use envbox::supervise::{render_config, ContainerdPaths, DISABLED_PLUGINS};

use crate::{run_ok, wait_for_file, MARKER_SCRIPT, POLL, TIMEOUT};

/// What the baseline runs, and what it does after `ctr run -d`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Variant {
    /// Nothing: the init is the marker script; no network, no seccomp profile.
    Plain,
    /// The same with envbox's seccomp profile.
    Seccomp,
    /// The CNI ADD.
    Cni,
    /// The CNI ADD, then the marker script in an exec (the init sleeps).
    CniExec,
    /// That with envbox's seccomp profile.
    Full,
}

impl Variant {
    /// Every variant, in the order of the report.
    pub const ALL: [Variant; 5] = [
        Variant::Plain,
        Variant::Seccomp,
        Variant::Cni,
        Variant::CniExec,
        Variant::Full,
    ];

    /// The CNI ADD after `ctr run -d`.
    pub fn network(self) -> bool {
        matches!(self, Variant::Cni | Variant::CniExec | Variant::Full)
    }

    /// The marker script in an exec beside an init that sleeps.
    pub fn exec(self) -> bool {
        matches!(self, Variant::CniExec | Variant::Full)
    }

    /// envbox's seccomp profile in the spec.
    pub fn seccomp(self) -> bool {
        matches!(self, Variant::Seccomp | Variant::Full)
    }

    /// What it is, for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Variant::Plain => "no network",
            Variant::Seccomp => "no network, envbox's seccomp profile",
            Variant::Cni => "then envbox's CNI network attached (bridge envbox0)",
            Variant::CniExec => {
                "init sleeping, envbox's CNI network attached, then ctr task exec -d of the script"
            }
            Variant::Full => "that with envbox's seccomp profile: envbox's steps, by ctr",
        }
    }
}

/// The baseline's containerd and specs.
pub struct Baseline {
    paths: ContainerdPaths,
    /// By (init sleeps, seccomp profile).
    specs: [[PathBuf; 2]; 2],
    marker: PathBuf,
    /// The CNI variant's network.
    network: Network,
}

/// The cgroup (v1 `pids` or v2) the baseline's task runs in (the spec's `cgroupsPath`).
const CGROUP: &str = "envbox-warmbench";

/// The PID of the baseline task's init, from its cgroup.
fn task_pid() -> u32 {
    let end = Instant::now() + TIMEOUT;
    loop {
        for procs in [
            format!("/sys/fs/cgroup/pids/{CGROUP}/cgroup.procs"),
            format!("/sys/fs/cgroup/{CGROUP}/cgroup.procs"),
        ] {
            if let Some(pid) = fs::read_to_string(&procs)
                .ok()
                .and_then(|s| s.lines().next().and_then(|l| l.parse().ok()))
            {
                return pid;
            }
        }
        assert!(Instant::now() < end, "no process in the cgroup {CGROUP}");
        std::thread::sleep(POLL);
    }
}

/// envbox's workspace network (default subnet, bridge `envbox0`), its CNI state under `run`.
fn envbox_network(run: &Path) -> Network {
    let raw = RawSettings {
        image: Some("bench".into()),
        username: Some("root".into()),
        run_dir: Some(run.display().to_string()),
        ..Default::default()
    };
    let settings = Settings::from_raw(&raw, None, Purpose::Docker).expect("network settings");
    let link = LinkMtu::Read {
        link: "bench".into(),
        mtu: 1500,
    };
    Network::new(NetworkPlan::new(&settings, "warmbench", &link).expect("network plan"))
}

/// The bridge the CNI variant's ADD made, deleted as envbox's stop deletes it.
fn delete_bridge() {
    let _ = Command::new("ip")
        .args(["link", "delete", "envbox0"])
        .output();
}

impl Baseline {
    /// `seccomp`: envbox's profile (`linux.seccomp` of `envbox spec`).
    pub fn new(work: &Path, rootfs: &Path, seccomp: &serde_json::Value) -> Baseline {
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
        linux["cgroupsPath"] = serde_json::json!(format!("/{CGROUP}"));
        let mut write = |sleeps: bool, with_seccomp: bool| -> PathBuf {
            let script = if sleeps {
                "exec sleep 3600"
            } else {
                MARKER_SCRIPT
            };
            spec["process"]["args"] = serde_json::json!(["/bin/sh", "-c", script]);
            match with_seccomp {
                true => spec["linux"]["seccomp"] = seccomp.clone(),
                false => {
                    spec["linux"]
                        .as_object_mut()
                        .expect("linux")
                        .remove("seccomp");
                }
            }
            let path = base.join(format!("spec-{sleeps}-{with_seccomp}.json"));
            fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).expect("spec");
            path
        };
        let specs = [
            [write(false, false), write(false, true)],
            [write(true, false), write(true, true)],
        ];
        Baseline {
            paths,
            specs,
            marker: home.join("ready"),
            network: envbox_network(&base.join("run-cni")),
        }
    }

    fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(&self.paths.grpc_socket);
        cmd
    }

    /// One timed start: (containerd accepting, `ctr run` returned, network attached (else as
    /// `ctr run`), marker and network both done), from spawn.
    pub fn run(&self, id: &str, variant: Variant) -> [Duration; 4] {
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
        let spec = &self.specs[usize::from(variant.exec())][usize::from(variant.seccomp())];
        run_ok(
            self.ctr()
                .args(["run", "-d", "--null-io", "--config"])
                .arg(spec)
                .arg(id),
        );
        let ran = started.elapsed();
        let attachment = variant.network().then(|| {
            let netns = PathBuf::from(format!("/proc/{}/ns/net", task_pid()));
            self.network
                .add(&netns)
                .expect("CNI ADD of the baseline task")
        });
        let attached = started.elapsed();
        if variant.exec() {
            run_ok(
                self.ctr()
                    .args(["task", "exec", "-d", "--exec-id", "boot", id])
                    .args(["/bin/sh", "-c", MARKER_SCRIPT]),
            );
        }
        let containerd_log = || fs::read_to_string(&self.paths.log).unwrap_or_default();
        wait_for_file(
            &self.marker,
            "the baseline container",
            || true,
            containerd_log,
        );
        let marked = started.elapsed();
        if let Some(attachment) = attachment {
            self.network
                .del(&attachment)
                .expect("CNI DEL of the baseline task");
            delete_bridge();
        }
        self.stop(id, containerd);
        [ready, ran, attached, marked]
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
