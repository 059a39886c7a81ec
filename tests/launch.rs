//! Integration tests of `envbox docker` end to end (root): a real registry, the real containerd
//! envbox supervises, real runc (`ENVBOX_RUNTIME=runc`: sysbox cannot run here) and the real
//! CNI plugins. The equivalents of the Go envbox's integration tests: environment filters,
//! mounts rw and ro, ownership of a home mount, TUN and FUSE, cgroup limits, hostname, the
//! bootstrap script as the user (with their groups, login variables and a working `sudo`, in a
//! Debian image built from packages), a SIGTERM reaching the agent's trap, the gateway reachable as
//! `host.docker.internal`, a clean second start after a kill -9, and no dockerd anywhere. Also:
//! a failed CNI ADD stops cleanly (the bootstrap exec registered meanwhile freed), and an init
//! that exits at once is named in the error with its status and last output.
//!
//! The tests share the bridge and the containerd shim directory, so they run one at a time.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod support;

use support::coder::StandInCoder;
use support::debian::user_image_layout;
use support::host::launch_requirements_met;
use support::image::{busybox_image, write_layout, Entry, Layer};
use support::registry::Registry;
use support::workspace::Envbox;

const ENVBOX: &str = env!("CARGO_BIN_EXE_envbox");
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A registry holding the busybox test image as `envbox/busybox:v1`.
fn registry_with_busybox() -> (Registry, String) {
    let registry = Registry::http();
    let layout = tempfile::tempdir().unwrap();
    write_layout(layout.path(), "v1", &[busybox_image("amd64")]);
    registry.push(layout.path(), "v1", "envbox/busybox:v1");
    let image = format!("{}/envbox/busybox:v1", registry.host);
    (registry, image)
}

/// A registry holding, as `envbox/dying-init:v1`, the busybox test image with a `/sbin/init`
/// that writes a line to stdout and one to stderr, then exits with status 3.
fn registry_with_dying_init() -> (Registry, String) {
    let registry = Registry::http();
    let layout = tempfile::tempdir().unwrap();
    let init = "#!/bin/sh\necho init-says-bye\necho init-says-bye-on-stderr >&2\nexit 3\n";
    let image = busybox_image("amd64").layer(Layer::new(vec![
        Entry::dir("/sbin", 0o755),
        Entry::file("/sbin/init", 0o755, init),
    ]));
    write_layout(layout.path(), "v1", &[image]);
    registry.push(layout.path(), "v1", "envbox/dying-init:v1");
    let image = format!("{}/envbox/dying-init:v1", registry.host);
    (registry, image)
}

/// One test's directories: the volume, the run dir, and mount sources.
struct Dirs {
    _work: tempfile::TempDir,
    root: PathBuf,
}

impl Dirs {
    fn new(name: &str) -> Dirs {
        let work = tempfile::Builder::new()
            .prefix(&format!("envbox-launch-{name}-"))
            .tempdir_in("/var/tmp")
            .unwrap();
        let root = work.path().to_owned();
        Dirs { _work: work, root }
    }

    fn path(&self, name: &str) -> PathBuf {
        let path = self.root.join(name);
        fs::create_dir_all(&path).unwrap();
        path
    }

    /// `CODER_MOUNTS` binding the test's `home-coder` directory at `/home/coder`.
    fn home_mount(&self) -> (String, String) {
        (
            "CODER_MOUNTS".to_owned(),
            format!("{}:/home/coder", self.path("home-coder").display()),
        )
    }

    fn base_env(&self, image: &str, registry: &Registry, script: &str) -> Vec<(String, String)> {
        [
            ("CODER_INNER_IMAGE", image.to_owned()),
            ("ENVBOX_INSECURE_REGISTRIES", registry.host.clone()),
            ("CODER_INNER_USERNAME", "coder".to_owned()),
            ("CODER_BOOTSTRAP_SCRIPT", script.to_owned()),
            (
                "CODER_AGENT_TOKEN",
                "token-that-must-not-be-logged".to_owned(),
            ),
            ("ENVBOX_RUNTIME", "runc".to_owned()),
            ("ENVBOX_STATE_DIR", self.path("state").display().to_string()),
            ("ENVBOX_RUN_DIR", self.path("run").display().to_string()),
            ("ENVBOX_STOP_TIMEOUT", "20s".to_owned()),
            ("CODER_DOCKER_BRIDGE_CIDR", "172.29.0.1/30".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

/// The names in a directory, sorted (none when it is gone).
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Names of every process on this machine.
fn process_names() -> Vec<String> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            e.file_name().to_str()?.parse::<u32>().ok()?;
            fs::read_to_string(e.path().join("comm")).ok()
        })
        .map(|c| c.trim().to_owned())
        .collect()
}

/// Fails, naming them, when processes of run dir `run` are left (daemons, shims, workspace).
fn assert_no_process_left(run: &Path) {
    let left = processes_mentioning(&run.display().to_string());
    assert!(
        left.is_empty(),
        "processes of {} left: {left:?}",
        run.display()
    );
}

/// Command lines of every process mentioning `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    processes_with_pids(needle)
        .into_iter()
        .map(|(_, text)| text)
        .collect()
}

/// (pid, command line) of every process whose command line mentions `needle`.
fn processes_with_pids(needle: &str) -> Vec<(u32, String)> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            text.contains(needle).then_some((pid, text))
        })
        .collect()
}

fn wait_for_file(path: &Path, envbox: &mut Envbox, timeout: Duration) -> String {
    let end = Instant::now() + timeout;
    loop {
        if let Ok(text) = fs::read_to_string(path) {
            if text.ends_with("END\n") {
                return text;
            }
        }
        if let Some(status) = envbox.child.try_wait().unwrap() {
            panic!(
                "envbox exited ({status}) before writing {}:\n{}",
                path.display(),
                envbox.log()
            );
        }
        assert!(
            Instant::now() < end,
            "no {} within {timeout:?}:\n{}",
            path.display(),
            envbox.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A one-shot HTTP server on the outer side (all addresses), answering `body`.
fn outer_server(body: &'static str) -> u16 {
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn workspace_runs_through_containerd_runc_and_cni_and_stops_on_sigterm() {
    if !launch_requirements_met("envbox docker integration test") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (registry, image) = registry_with_busybox();
    let dirs = Dirs::new("e2e");
    let home = dirs.path("home-coder");
    let rw = dirs.path("rw");
    let ro = dirs.path("ro");
    fs::write(ro.join("seen"), "from the outside\n").unwrap();
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o777)).unwrap();
    let port = outer_server("hello from the outer side");

    let script = format!(
        r#"
echo "bootstrap first line"
r="$HOME/report.tmp"
{{
echo "uid=$(id -u) gid=$(id -g) home=$HOME pwd=$(pwd)"
echo "binary_dir=$BINARY_DIR exists=$(test -d "$BINARY_DIR" && echo yes)"
echo "hostname=$(hostname)"
echo "init=$(tr '\0' ' ' < /proc/1/cmdline)"
echo "uid_map=$(cat /proc/self/uid_map | tr -s ' ')"
echo "match=$ENVBOX_T_MATCH other=${{ENVBOX_OTHER:-unset}} sysbox=${{SYSBOX_X:-unset}}"
echo "token=$(test -n "$CODER_AGENT_TOKEN" && echo set)"
echo "subsystem=$CODER_AGENT_SUBSYSTEM"
echo "ro_seen=$(cat /mnt/ro/seen)"
echo "ro_write=$(touch /mnt/ro/new 2>&1 && echo allowed)"
echo "rw_owner=$(stat -c %u /mnt/rw)"
echo "tun=$(test -c /dev/net/tun && (exec 3<>/dev/net/tun) 2>&1 && echo open)"
echo "fuse=$(test -c /dev/fuse && (exec 3<>/dev/fuse) 2>&1 && echo open)"
echo "mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max)"
echo "cpu=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max)"
# Debian's static busybox crashes in name lookups (static glibc NSS; its wget even for an
# address): read /etc/hosts here and talk HTTP with nc.
gateway=$(awk '$2 == "host.docker.internal" {{ print $1 }}' /etc/hosts)
echo "gateway=$gateway"
echo "lo_flags=$(cat /sys/class/net/lo/flags)"
echo "outer=$(printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 "$gateway" {port} 2>&1 | tail -n 1)"
echo END
}} > "$r" 2>&1
mv "$r" "$HOME/report"
echo "bootstrap output line"
trap 'echo trapped > "$HOME/trapped"; exit 0' TERM
while :; do sleep 1; done
"#
    );
    let coder = StandInCoder::start();
    let mut env = dirs.base_env(&image, &registry, &script);
    env.extend(
        [
            ("CODER_AGENT_URL", coder.url.clone()),
            ("CODER_INNER_HOSTNAME", "envbox-it".to_owned()),
            ("CODER_INNER_ENVS", "ENVBOX_T_*,SYSBOX_X".to_owned()),
            ("ENVBOX_T_MATCH", "yes=indeed".to_owned()),
            ("ENVBOX_OTHER", "not passed".to_owned()),
            ("SYSBOX_X", "never passed".to_owned()),
            ("CODER_ADD_TUN", "true".to_owned()),
            ("CODER_ADD_FUSE", "true".to_owned()),
            ("CODER_CPUS", "1500m".to_owned()),
            ("CODER_MEMORY", "256Mi".to_owned()),
            ("ENVBOX_LOG", "debug".to_owned()),
            (
                "CODER_MOUNTS",
                format!(
                    "{}:/home/coder,{}:/mnt/rw,{}:/mnt/ro:ro",
                    home.display(),
                    rw.display(),
                    ro.display()
                ),
            ),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );

    let mut envbox = Envbox::start(&env);
    envbox.wait_for(r#""type":"done""#, Duration::from_secs(120));
    let report = wait_for_file(&home.join("report"), &mut envbox, Duration::from_secs(30));
    let field = |name: &str| -> String {
        report
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in report:\n{report}"))
            .to_owned()
    };
    assert_eq!(
        field("uid"),
        "1000 gid=1000 home=/home/coder pwd=/home/coder",
        "{report}"
    );
    assert_eq!(field("binary_dir"), "/home/coder/.coder exists=yes");
    assert_eq!(field("hostname"), "envbox-it");
    // The bootstrap's exec was started in the created task, before the init, with its script
    // held back: the script itself ran once the init had started (runc's start returns once
    // the init has exec'd), and not earlier.
    assert_eq!(field("init").trim_end(), "sleep infinity", "{report}");
    let log = envbox.log();
    let at = |stage: &str| {
        log.find(&format!("start: {stage}"))
            .unwrap_or_else(|| panic!("no stage {stage:?} in the log:\n{log}"))
    };
    assert!(
        at("bootstrap exec started, its script held") < at("task started"),
        "{log}"
    );
    assert!(!log.contains("before the task's start failed"), "{log}");
    assert_eq!(field("uid_map"), " 0 100000 65536");
    assert_eq!(field("match"), "yes=indeed other=unset sysbox=unset");
    assert_eq!(field("token"), "set");
    assert_eq!(field("subsystem"), "envbox");
    assert_eq!(field("ro_seen"), "from the outside");
    assert!(
        field("ro_write").contains("Read-only file system"),
        "{report}"
    );
    assert!(!ro.join("new").exists());
    assert_eq!(
        field("rw_owner"),
        "0",
        "a plain mount source is owned by root inside"
    );
    assert_eq!(field("tun"), "open", "{report}");
    assert_eq!(field("fuse"), "open", "{report}");
    assert_eq!(field("mem"), (256u64 << 20).to_string());
    assert_eq!(field("cpu"), "150000");
    assert_eq!(
        field("gateway"),
        "172.29.0.1",
        "host.docker.internal is the gateway"
    );
    assert_eq!(field("outer"), "hello from the outer side", "{report}");
    // No CNI plugin touches `lo`: the runtime brings it up in the namespace it creates.
    let lo_flags = u32::from_str_radix(field("lo_flags").trim_start_matches("0x"), 16);
    assert_eq!(
        lo_flags.map(|f| f & 1),
        Ok(1),
        "lo is up (IFF_UP): {report}"
    );
    // Ownership of the home mount: the inner user, shifted.
    let meta = fs::metadata(&home).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (101_000, 101_000));
    assert_eq!(fs::metadata(home.join("report")).unwrap().uid(), 101_000);
    // The script's output is in the progress log, whole.
    envbox.wait_for("bootstrap output line", Duration::from_secs(10));
    let log = envbox.log();
    let running_as = log.find("Bootstrap script running as coder");
    assert!(
        running_as.is_some() && running_as < log.find("bootstrap first line"),
        "the script's lines follow the line that says it runs:\n{log}"
    );
    // The blobs fetched and layers unpacked for this start were synced once the workspace was
    // up: none is left marked as not on disk (a marker is removed only after the syncfs).
    // (`done` was seen above; the sync runs beside the workspace, so give it a moment.)
    for store in ["blobs", "layers/chain"] {
        let unsynced = dirs.root.join("state").join(store).join(".unsynced");
        let marked = || fs::read_dir(&unsynced).map(|d| d.count()).unwrap_or(99);
        let end = Instant::now() + Duration::from_secs(10);
        while marked() != 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(marked(), 0, "left unsynced in {}", unsynced.display());
    }
    assert!(
        !process_names().iter().any(|n| n == "dockerd"),
        "no dockerd anywhere"
    );

    envbox.stop_cleanly(Duration::from_secs(60));
    assert_eq!(
        fs::read_to_string(home.join("trapped")).unwrap_or_default(),
        "trapped\n",
        "the SIGTERM reached the bootstrap script's trap"
    );
    let log = envbox.log();
    assert!(
        !log.contains("token-that-must-not-be-logged"),
        "token in log"
    );
    // The progress log reached the (stand-in) Coder dashboard: every request with the agent's
    // token, under the log source registered first, from the first line to the last.
    let received = coder.received();
    assert!(!received.is_empty(), "nothing sent to Coder");
    assert_eq!(received[0].path, "/api/v2/workspaceagents/me/log-source");
    assert!(received
        .iter()
        .all(|r| r.token.as_deref() == Some("token-that-must-not-be-logged")));
    let lines = coder.lines();
    let has = |level: &str, text: &str| lines.iter().any(|(l, o)| l == level && o.contains(text));
    for text in [
        "Preparing image",
        "bootstrap output line",
        "Workspace is up",
        "Workspace stopped",
    ] {
        assert!(has("info", text), "{text:?} not sent to Coder: {lines:?}");
    }
    assert_no_process_left(&dirs.root.join("run"));
    assert_eq!(
        entries(&dirs.root.join("run")),
        Vec::<String>::new(),
        "a clean stop removes everything the start made under the run dir"
    );
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&dirs.root.display().to_string()),
        "mounts left under {}:\n{mounts}",
        dirs.root.display()
    );
    let nat = Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .output()
        .unwrap();
    let nat = String::from_utf8_lossy(&nat.stdout);
    assert!(
        !nat.contains("172.29.0.") && !nat.contains("ENVBOX-MASQ"),
        "NAT rules left:\n{nat}"
    );
    assert!(
        !Path::new("/sys/class/net/envbox0").exists(),
        "the workspace bridge is removed at stop"
    );
}

#[test]
fn containerd_dying_stops_envbox_with_a_message_naming_it() {
    if !launch_requirements_met("envbox docker daemon death test") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (registry, image) = registry_with_busybox();
    let dirs = Dirs::new("death");
    let mut env = dirs.base_env(
        &image,
        &registry,
        "echo agent-up; while :; do sleep 1; done",
    );
    env.push(dirs.home_mount());
    let mut envbox = Envbox::start(&env);
    envbox.wait_for("agent-up", Duration::from_secs(120));
    let run = dirs.root.join("run");
    let config = run.join("containerd").display().to_string();
    let containerd: Vec<i32> = fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let program = text.split(' ').next()?;
            let is_containerd = program == "containerd" || program.ends_with("/containerd");
            (is_containerd && text.contains(&config)).then_some(pid)
        })
        .collect();
    assert_eq!(containerd.len(), 1, "envbox's containerd: {containerd:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(containerd[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = envbox.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "a daemon's death is a failure");
    let log = envbox.log();
    assert!(
        log.contains("\"type\":\"error\"") && log.contains("containerd exited unexpectedly"),
        "{log}"
    );
    // In a pod, envbox is PID 1: its exit ends every process of the pod. Here the shim and the
    // workspace outlive it; a next start removes them (see the kill -9 test). Clean up.
    let mut second = Envbox::start(&env);
    second.wait_for("agent-up", Duration::from_secs(120));
    second.stop_cleanly(Duration::from_secs(60));
    assert_no_process_left(&run);
}

#[test]
fn a_second_start_after_kill_9_of_the_first_starts_cleanly() {
    if !launch_requirements_met("envbox docker restart test") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (registry, image) = registry_with_busybox();
    let dirs = Dirs::new("restart");
    let script = r#"echo "started as $(id -u)"; while :; do sleep 1; done"#;
    let mut env = dirs.base_env(&image, &registry, script);
    env.push(dirs.home_mount());

    let mut first = Envbox::start(&env);
    first.wait_for("started as 1000", Duration::from_secs(120));
    first.signal(nix::sys::signal::Signal::SIGKILL);
    first.wait_exit(Duration::from_secs(10));
    let run = dirs.root.join("run");
    // What tells the next start that this container may still use the rootfs (so the rootfs
    // is reassembled only after the container is removed), where runc keeps it.
    let runtime_state =
        envbox::runtime::state_dir(&run.join("runtime"), envbox::launch::CONTAINER_ID);
    assert!(
        runtime_state.join("state.json").is_file(),
        "{} after the kill -9",
        runtime_state.display()
    );

    let mut second = Envbox::start(&env);
    second.wait_for("started as 1000", Duration::from_secs(120));
    let log = second.log();
    assert!(
        log.contains("previous run"),
        "the second start cleaned the first one's leftovers:\n{log}"
    );
    assert!(
        !log.contains("Downloading") || log.contains("0 unpacked now"),
        "the image came from the cache:\n{log}"
    );
    second.stop_cleanly(Duration::from_secs(60));
    assert_no_process_left(&run);
    assert!(
        !runtime_state.exists(),
        "{} after a clean stop",
        runtime_state.display()
    );
}

#[test]
fn the_image_cache_is_cleaned_up_in_the_background_once_the_workspace_is_up() {
    if !launch_requirements_met("envbox docker cache cleanup test") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (registry, image) = registry_with_busybox();
    let layout = tempfile::tempdir().unwrap();
    let other = support::image::ImageSpec::new("amd64")
        .layer(Layer::new(vec![Entry::file("/other", 0o644, "other")]));
    let info = write_layout(layout.path(), "v1", &[other]);
    registry.push(layout.path(), "v1", "envbox/other:v1");
    let dirs = Dirs::new("cleanup");
    let mut env = dirs.base_env(&image, &registry, "echo bootstrap-ran; sleep 600");
    env.push(dirs.home_mount());
    env.push(("ENVBOX_KEEP_IMAGES".to_owned(), "0".to_owned()));
    let state = dirs.path("state");
    let prepared = Command::new(ENVBOX)
        .args([
            "prepare",
            "--image",
            &format!("{}/envbox/other:v1", registry.host),
        ])
        .args(["--state-dir", state.to_str().unwrap()])
        .args(["--insecure-registries", &registry.host])
        .output()
        .unwrap();
    assert!(prepared.status.success(), "{prepared:?}");
    // One layer: its chain ID is its diff ID.
    let other_layer = state
        .join("layers/chain")
        .join(info.diff_ids[0][0].trim_start_matches("sha256:"));
    assert!(other_layer.is_dir());

    let mut envbox = Envbox::start(&env);
    envbox.wait_for("bootstrap-ran", Duration::from_secs(120));
    envbox.wait_for("Image cache cleaned up", Duration::from_secs(60));
    let log = envbox.log();
    assert!(
        !other_layer.exists(),
        "the other image's layer was removed:\n{log}"
    );
    // The workspace's own layers stay (its overlay uses them).
    assert_eq!(
        entries(&state.join("layers/chain"))
            .iter()
            .filter(|n| !n.starts_with('.'))
            .count(),
        3,
        "{log}"
    );
    envbox.stop_cleanly(Duration::from_secs(60));
}

#[test]
fn a_full_volume_is_told_in_the_progress_log_and_to_coder() {
    if !launch_requirements_met("envbox docker on a full volume") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let registry = Registry::http();
    let layout = tempfile::tempdir().unwrap();
    let big = support::image::prng_bytes(77, 40 << 20);
    let image = busybox_image("amd64").layer(Layer::new(vec![Entry::file("/big.bin", 0o644, big)]));
    write_layout(layout.path(), "v1", &[image]);
    registry.push(layout.path(), "v1", "envbox/big:v1");
    let image = format!("{}/envbox/big:v1", registry.host);
    let volume = support::volume::SmallVolume::new(24);
    let dirs = Dirs::new("full");
    let coder = StandInCoder::start();
    let mut env = dirs.base_env(&image, &registry, "echo never");
    env.retain(|(k, _)| k != "ENVBOX_STATE_DIR");
    env.push((
        "ENVBOX_STATE_DIR".to_owned(),
        volume.state().display().to_string(),
    ));
    env.push(("CODER_AGENT_URL".to_owned(), coder.url.clone()));
    let mut envbox = Envbox::start(&env);
    let status = envbox.wait_exit(Duration::from_secs(120));
    assert!(!status.success());
    let log = envbox.log();
    let told = "is full: the image needs about";
    assert!(
        log.lines()
            .any(|l| l.contains("\"type\":\"error\"") && l.contains(told)),
        "{log}"
    );
    assert!(
        coder
            .outputs()
            .iter()
            .any(|o| o.contains(told) && o.contains("Make room")),
        "{:?}",
        coder.outputs()
    );
    assert_no_process_left(&dirs.root.join("run"));
}

#[test]
fn a_failed_network_attach_stops_cleanly_and_names_the_plugin() {
    if !launch_requirements_met("envbox docker failed network test") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (registry, image) = registry_with_busybox();
    let dirs = Dirs::new("cni-fails");
    let mut env = dirs.base_env(&image, &registry, "echo agent-up");
    let missing = dirs.path("no-plugins");
    env.push(("ENVBOX_CNI_PATH".to_owned(), missing.display().to_string()));
    let mut envbox = Envbox::start(&env);
    // The bootstrap's exec was registered while the network was being attached: its FIFOs
    // and the threads waiting on them are freed, so the exit comes at once.
    let status = envbox.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "a failed CNI ADD is a failure");
    let log = envbox.log();
    assert!(
        log.contains("\"type\":\"error\"")
            && log.contains(&format!("cannot run {}/bridge", missing.display())),
        "{log}"
    );
    assert!(!log.contains("agent-up"), "the script never ran:\n{log}");
    let io = dirs.root.join("run/io");
    let left: Vec<_> = fs::read_dir(&io)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "FIFOs left in {}: {left:?}", io.display());
    let merged = dirs.root.join("state/container/merged");
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(&format!(" {} ", merged.display())),
        "the rootfs is still mounted"
    );
    assert_no_process_left(&dirs.root.join("run"));
    assert_eq!(
        entries(&dirs.root.join("run")),
        ["cni", "init.log", "log"],
        "after a failed start only the logs stay (no socket or config), and the CNI state \
         whose DEL failed (no plugins) for the next start"
    );
    assert!(
        log.contains("logs kept for a look into the failure"),
        "{log}"
    );
}

#[test]
fn an_init_that_exits_at_once_is_named_with_its_status_and_last_output() {
    if !launch_requirements_met("envbox docker dying init test") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (registry, image) = registry_with_dying_init();
    let dirs = Dirs::new("dying-init");
    let with_script = dirs.base_env(&image, &registry, "echo agent-up");
    let without_script: Vec<_> = with_script
        .iter()
        .filter(|(k, _)| k != "CODER_BOOTSTRAP_SCRIPT")
        .cloned()
        .collect();
    // With a bootstrap script, its exec meets a stopped container (or, when it was quicker than
    // the init, is ended with it); without one, envbox sees the init's exit once up. The second
    // run shares the run dir, and so the init's output file, with the first.
    for env in [with_script, without_script] {
        let mut envbox = Envbox::start(&env);
        let status = envbox.wait_exit(Duration::from_secs(120));
        assert!(!status.success(), "an init's exit is a failure");
        let log = envbox.log();
        let error = log
            .lines()
            .find(|l| l.contains("\"type\":\"error\""))
            .unwrap_or_else(|| panic!("no error line:\n{log}"));
        assert!(
            error.contains(
                "the workspace's init (/sbin/init) exited with status 3 right after start"
            ),
            "{error}"
        );
        assert!(
            !error.contains("cannot exec in a stopped container"),
            "the riddle is explained, not passed on: {error}"
        );
        // Both streams, and only this run's lines (the first run's are in the file too).
        assert!(error.contains("init-says-bye-on-stderr"), "{error}");
        assert_eq!(error.matches("init-says-bye").count(), 2, "{error}");
        assert!(
            !error.contains("sysbox-runc"),
            "not a systemd image: {error}"
        );
        let run = dirs.root.join("run");
        assert_no_process_left(&run);
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mountinfo.contains(&dirs.root.display().to_string()),
            "mounts left under {}",
            dirs.root.display()
        );
        let io = run.join("io");
        let left: Vec<_> = fs::read_dir(&io)
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "FIFOs left in {}: {left:?}", io.display());
    }
    assert!(
        !Path::new("/sys/class/net/envbox0").exists(),
        "the workspace bridge is removed at stop"
    );
}

/// A stand-in OCI runtime (test only): the real runc, except that it refuses to exec into a
/// container that is only created, as a stricter runtime might (sysbox-runc is unproven here).
const RUNC_REFUSING_EARLY_EXEC: &str = r#"#!/bin/sh
root= log=/dev/null prev= exec_call= id=
for arg in "$@"; do
    [ "$prev" = --root ] && root=$arg
    [ "$prev" = --log ] && log=$arg
    [ "$arg" = exec ] && exec_call=yes
    prev=$arg id=$arg
done
if [ -n "$exec_call" ] && REAL --root "$root" state "$id" 2>/dev/null | grep -q '"status": "created"'; then
    # Where the shim reads runc's last error from.
    echo '{"level":"error","msg":"stand-in runtime: no exec into a created container"}' >> "$log"
    exit 1
fi
exec REAL "$@"
"#;

#[test]
fn a_runtime_refusing_the_early_exec_gets_it_after_the_start() {
    if !launch_requirements_met("envbox docker early exec fallback test") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (registry, image) = registry_with_busybox();
    let dirs = Dirs::new("late-exec");
    let bin = dirs.path("bin");
    let real = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v runc"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let wrapper = bin.join("runc");
    fs::write(
        &wrapper,
        RUNC_REFUSING_EARLY_EXEC.replace("REAL", real.trim()),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let home = dirs.path("home-coder");
    let script = r#"printf 'init=%s\nEND\n' "$(tr '\0' ' ' < /proc/1/cmdline)" > "$HOME/report.tmp"
mv "$HOME/report.tmp" "$HOME/report"
exec sleep 600"#;
    let mut env = dirs.base_env(&image, &registry, script);
    env.extend([
        dirs.home_mount(),
        ("ENVBOX_LOG".to_owned(), "debug".to_owned()),
        (
            "PATH".to_owned(),
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        ),
    ]);
    let mut envbox = Envbox::start(&env);
    envbox.wait_for(r#""type":"done""#, Duration::from_secs(120));
    let report = wait_for_file(&home.join("report"), &mut envbox, Duration::from_secs(30));
    assert_eq!(report, "init=sleep infinity \nEND\n", "{report}");
    let log = envbox.log();
    assert!(
        log.contains("no exec into a created container")
            && log.contains("starting it again now that the task runs"),
        "the refusal is logged and the exec retried:\n{log}"
    );
    assert!(
        !log.contains("start: bootstrap exec started, its script held"),
        "{log}"
    );
    envbox.stop_cleanly(Duration::from_secs(60));
    assert_no_process_left(&dirs.root.join("run"));
}

/// Every regular file under `dir` (links not followed) whose bytes contain `needle`, with its
/// mode.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<(PathBuf, u32)> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if meta.is_file() {
            let bytes = fs::read(&path).unwrap_or_default();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push((path, meta.mode() & 0o7777));
            }
        }
    }
    found
}

/// The agent token is in the workspace's spec (its init's environment, as in the Go envbox):
/// it may be under the run dir while the workspace runs, private to root, and is never on the
/// volume, during the run or after the stop.
#[test]
fn the_agent_token_never_rests_on_the_volume_and_is_private_under_the_run_dir() {
    if !launch_requirements_met("envbox docker agent token test") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (registry, image) = registry_with_busybox();
    let dirs = Dirs::new("token");
    let canary = "canary-token-5f0c2e9a7d";
    let mut env = dirs.base_env(&image, &registry, "echo agent-up; exec sleep 600");
    env.retain(|(name, _)| name != "CODER_AGENT_TOKEN");
    env.push(("CODER_AGENT_TOKEN".to_owned(), canary.to_owned()));
    env.push(dirs.home_mount());
    // An earlier envbox kept containerd's metadata on the volume: it goes at start.
    let legacy = dirs.path("state/containerd/io.containerd.metadata.v1.bolt");
    fs::write(legacy.join("meta.db"), format!("old spec with {canary}")).unwrap();
    let mut envbox = Envbox::start(&env);
    envbox.wait_for("agent-up", Duration::from_secs(120));

    let state = dirs.root.join("state");
    let run = dirs.root.join("run");
    assert_eq!(
        files_containing(&state, canary.as_bytes()),
        vec![],
        "the token on the volume while the workspace runs"
    );
    let in_run = files_containing(&run, canary.as_bytes());
    assert!(
        !in_run.is_empty(),
        "the token is in the workspace's spec: found nowhere under {}, so this test looks in \
         the wrong place",
        run.display()
    );
    for (path, mode) in &in_run {
        assert_eq!(
            mode & 0o077,
            0,
            "{} (mode {mode:o}) holds the token",
            path.display()
        );
    }
    let containerd = fs::metadata(run.join("containerd")).unwrap();
    assert_eq!(
        containerd.mode() & 0o777,
        0o700,
        "containerd's dir is root's alone"
    );

    envbox.stop_cleanly(Duration::from_secs(60));
    assert_eq!(files_containing(&state, canary.as_bytes()), vec![]);
    assert_eq!(files_containing(&run, canary.as_bytes()), vec![]);
    assert!(
        !envbox.log().contains(canary),
        "the token in the progress log"
    );
}

/// Whether this process has CAP_SYS_RESOURCE (a privileged pod does; some sandboxes not).
fn has_cap_sys_resource() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
        .unwrap();
    eff & (1 << caps::Capability::CAP_SYS_RESOURCE.index()) != 0
}

/// The OOM killer takes the workspace before its supervisors. With CAP_SYS_RESOURCE envbox,
/// containerd and the shim go down to -999 (-998) and the workspace's init and agent keep the
/// pod's score (here 300); without it the supervisors keep the pod's score and the workspace
/// gets 1000. Either way nothing in the workspace can lower its score.
#[test]
fn the_oom_killer_takes_the_workspace_before_its_supervisors() {
    if !launch_requirements_met("envbox docker OOM score test") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (registry, image) = registry_with_busybox();
    let dirs = Dirs::new("oom");
    let script = "echo \"agent score $(cat /proc/self/oom_score_adj)\"; \
                  echo \"init score $(cat /proc/1/oom_score_adj)\"; \
                  echo -500 > /proc/self/oom_score_adj 2>/dev/null || echo lowering-refused; \
                  echo agent-up; exec sleep 600";
    let mut env = dirs.base_env(&image, &registry, script);
    env.push(dirs.home_mount());
    // The pod's score, as the kubelet would have set it: envbox runs under it.
    let mut envbox = Envbox::start_with_score(&env, Some(300));
    envbox.wait_for("agent-up", Duration::from_secs(120));
    let log = envbox.log();
    let (supervisor, workspace) = if has_cap_sys_resource() {
        (-999, 300)
    } else {
        assert!(log.contains("keep the pod's OOM score"), "{log}");
        (300, 1000)
    };
    assert!(log.contains(&format!("agent score {workspace}")), "{log}");
    assert!(log.contains(&format!("init score {workspace}")), "{log}");
    assert!(
        log.contains("lowering-refused"),
        "the agent lowered its score:\n{log}"
    );
    let score = |pid: u32| -> i32 {
        fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(score(envbox.child.id()), supervisor, "envbox itself");
    let daemons = processes_with_pids(&dirs.root.join("run").display().to_string());
    assert!(
        daemons.iter().any(|(_, c)| c.starts_with("containerd "))
            && daemons.iter().any(|(_, c)| c.contains("containerd-shim")),
        "containerd and its shim not found: {daemons:?}"
    );
    for (pid, command) in daemons {
        assert!(
            score(pid) < workspace && score(pid) <= supervisor + 1,
            "{command} ({pid}) at {}",
            score(pid)
        );
    }
    envbox.stop_cleanly(Duration::from_secs(60));
}

#[test]
fn the_bootstrap_runs_with_the_users_groups_login_env_acls_and_sudo() {
    if !launch_requirements_met("envbox docker user groups test") {
        return;
    }
    // Built before taking the lock: the other tests need not wait for it.
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let layout = work.path().join("layout");
    if !user_image_layout(&layout, "v1") {
        return;
    }
    let registry = Registry::http();
    registry.push(&layout, "v1", "envbox/debian-user:v1");
    let image = format!("{}/envbox/debian-user:v1", registry.host);
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dirs = Dirs::new("user");
    let home = dirs.path("home-coder");
    let script = r#"
r="$HOME/report.tmp"
{
echo "ids=$(id -G)"
echo "names=$(id -Gn)"
echo "status_groups=$(sed -n 's/^Groups:[[:space:]]*//p' /proc/$$/status)"
echo "env=HOME=$HOME USER=$USER LOGNAME=$LOGNAME SHELL=$SHELL"
echo "group_read=$(cat /srv/docker-only 2>&1)"
echo "sudo=$(sudo -n true 2>&1 && echo sudo-ok)"
echo "sudo_uid=$(sudo -n id -u 2>&1)"
echo "acl:"
getfacl -n /srv/shared 2>&1
echo END
} > "$r" 2>&1
mv "$r" "$HOME/report"
while :; do sleep 1; done
"#;
    let mut env = dirs.base_env(&image, &registry, script);
    env.push((
        "CODER_MOUNTS".to_owned(),
        format!("{}:/home/coder", home.display()),
    ));
    let mut envbox = Envbox::start(&env);
    envbox.wait_for(r#""type":"done""#, Duration::from_secs(300));
    let report = wait_for_file(&home.join("report"), &mut envbox, Duration::from_secs(60));
    let field = |name: &str| -> String {
        report
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in report:\n{report}"))
            .to_owned()
    };
    let sorted = |list: String| {
        let mut items: Vec<String> = list.split_whitespace().map(str::to_owned).collect();
        items.sort();
        items
    };
    // The primary group first (the egid), then the groups /etc/group lists coder in; farout
    // (gid 70000) cannot be mapped and is left out with a warning.
    let ids = field("ids");
    assert!(ids.starts_with("1000 "), "{report}");
    assert_eq!(sorted(ids), ["1000", "102", "27"], "{report}");
    assert_eq!(
        sorted(field("names")),
        ["coder", "docker", "sudo"],
        "{report}"
    );
    assert_eq!(
        sorted(field("status_groups")),
        ["1000", "102", "27"],
        "the bootstrap process's own supplementary groups: {report}"
    );
    assert_eq!(
        field("env"),
        "HOME=/home/coder USER=coder LOGNAME=coder SHELL=/bin/bash",
        "{report}"
    );
    assert_eq!(field("group_read"), "docker-group-only", "{report}");
    assert!(field("sudo").ends_with("sudo-ok"), "{report}");
    assert_eq!(field("sudo_uid"), "0", "{report}");
    let log = envbox.log();
    assert!(
        log.contains("Bootstrap script running as coder (uid 1000, groups 1000,27,102)"),
        "{log}"
    );
    assert!(
        log.contains("group \\\"farout\\\" (gid 70000)") && log.contains("left out"),
        "a warning names the group that cannot be mapped:\n{log}"
    );

    envbox.stop_cleanly(Duration::from_secs(60));
    assert_no_process_left(&dirs.root.join("run"));

    // Last: POSIX ACLs survive the unpack (their own change): the access and default entries.
    let acl: Vec<&str> = report
        .lines()
        .skip_while(|l| *l != "acl:")
        .map(str::trim)
        .collect();
    for entry in [
        "user:1000:rwx",
        "group:102:r-x",
        "default:user:1000:rwx",
        "default:group:102:r-x",
    ] {
        assert!(acl.contains(&entry), "no {entry} in getfacl -n:\n{report}");
    }
}

/// The GPU end-to-end script (tests/gpu/e2e.sh, issue 24) runs its whole flow here without a
/// GPU (`--rehearse`): its OCI layout, envbox docker from `oci:`, the host's /usr/lib where a
/// pod mounts it, SIGTERM and the leftover checks. The one run on a GPU host must not be the
/// first. Without `--rehearse` and without a GPU it refuses, saying why.
#[test]
fn the_gpu_script_rehearses_here_and_refuses_without_a_gpu() {
    if !launch_requirements_met("GPU script rehearsal") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gpu/e2e.sh");
    let bin_dir = Path::new(ENVBOX).parent().unwrap();
    let run = |args: &[&str]| {
        Command::new("bash")
            .arg(&script)
            .args(args)
            .env(
                "PATH",
                format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
            )
            .env_remove("OUT")
            .output()
            .expect("run tests/gpu/e2e.sh")
    };
    let out = run(&["--rehearse"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("PASSED (rehearsal"), "{text}");
    if !Path::new("/dev/nvidiactl").exists() {
        let out = run(&[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("no NVIDIA GPU on this host"), "{stderr}");
    }
}
