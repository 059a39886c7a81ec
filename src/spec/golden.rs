//! Golden runtime specs: `specs/<scenario>.json` (and the setup actions beside it) must be
//! exactly what the generator produces for each scenario below.
//!
//! Any difference fails; `make specs` (ENVBOX_UPDATE_GOLDEN=1) rewrites the files for review.
//! Every golden file is also parsed back and put through the security invariants, and the
//! conformance suite validates them against the OCI runtime-spec JSON schema.

use std::path::{Path, PathBuf};

use super::render::{self, Secrets};
use super::*;
use crate::config::{Purpose, RawSettings};
use crate::gpu::h100_fixture::{fixture_inventory, fixture_mounts, OUTER_USR_LIB};
use crate::mountinfo::MountTable;
use crate::rootfs::{OsRelease, PasswdEntry};

const SPECS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/specs");
const ROOTFS: &str = "/var/lib/coder/envbox/rootfs";

/// A pod with the persistent volume on its own disk, and a read-only config map.
const POD_MOUNTINFO: &str = "\
100 90 0:50 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
101 100 0:51 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
102 100 0:52 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
103 100 8:16 / /var/lib/coder rw,relatime - ext4 /dev/sdb rw
104 100 8:32 / /home/coder rw,relatime - ext4 /dev/sdc rw
105 100 0:60 / /etc/team-config ro,relatime - tmpfs tmpfs rw
106 100 0:61 / /run rw,nosuid,nodev,relatime - tmpfs tmpfs rw
";

struct Scenario {
    name: &'static str,
    raw: RawSettings,
    rootfs: RootfsFacts,
    image: ImageConfig,
    host: HostFacts,
}

fn base_raw() -> RawSettings {
    RawSettings {
        image: Some("registry.example.com/dev/workspace:1.0".into()),
        username: Some("coder".into()),
        agent_token: Some(crate::config::Secret::new("fake-agent-token")),
        hostname: Some("alice-dev".into()),
        runtime: Some("sysbox-runc".into()),
        ..Default::default()
    }
}

fn os(id: &str, like: &[&str]) -> Option<OsRelease> {
    Some(OsRelease {
        id: id.into(),
        id_like: like.iter().map(|s| s.to_string()).collect(),
    })
}

fn base_rootfs() -> RootfsFacts {
    RootfsFacts {
        user: PasswdEntry {
            name: "coder".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/coder".into(),
            shell: "/bin/bash".into(),
        },
        groups: vec![],
        has_init: false,
        os_release: os("ubuntu", &["debian"]),
        warnings: vec![],
    }
}

fn base_image() -> ImageConfig {
    ImageConfig {
        env: vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            "LANG=C.UTF-8".into(),
        ],
        cmd: Some(vec!["bash".into()]),
        ..Default::default()
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn base_host() -> HostFacts {
    HostFacts {
        environ: pairs(&[
            ("HOSTNAME", "coder-alice-dev-6f7d9"),
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("CODER_INNER_IMAGE", "registry.example.com/dev/workspace:1.0"),
        ]),
        mounts: MountTable::parse(POD_MOUNTINFO).expect("pod mountinfo"),
        resolv_conf: Some(
            "search coder.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
                .into(),
        ),
        arch: "x86_64".into(),
        nofile_hard: 1_048_576,
        // A Burstable pod's score, as the kubelet sets it.
        oom_score_adj: 968,
        gpu: None,
    }
}

fn scenario(name: &'static str, edit: impl FnOnce(&mut Scenario)) -> Scenario {
    let mut s = Scenario {
        name,
        raw: base_raw(),
        rootfs: base_rootfs(),
        image: base_image(),
        host: base_host(),
    };
    edit(&mut s);
    s
}

fn gpu_host(s: &mut Scenario) {
    s.raw.add_gpu = Some("true".into());
    s.raw.usr_lib_dir = Some(OUTER_USR_LIB.into());
    s.host.mounts = fixture_mounts();
    let inventory = fixture_inventory();
    s.host.environ.extend(inventory.env.iter().cloned());
    s.host.gpu = Some(inventory);
}

fn scenarios() -> Vec<Scenario> {
    vec![
        scenario("plain", |_| {}),
        scenario("tun-fuse", |s| {
            s.raw.add_tun = Some("true".into());
            s.raw.add_fuse = Some("true".into());
        }),
        scenario("mounts", |s| {
            s.raw.mounts = Some(
                "/home/coder:/home/coder,/etc/team-config:/etc/team:ro,/var/lib/coder/cache:/cache"
                    .into(),
            );
        }),
        scenario("limits", |s| {
            s.raw.cpus = Some("1500m".into());
            s.raw.memory = Some("4Gi".into());
        }),
        scenario("gpu-ubuntu", gpu_host),
        scenario("gpu-rhel", |s| {
            gpu_host(s);
            s.rootfs.os_release = os("rocky", &["rhel", "centos", "fedora"]);
        }),
        scenario("systemd", |s| {
            s.rootfs.has_init = true;
            s.image.stop_signal = Some("SIGRTMIN+3".into());
            s.raw.work_dir = Some("/home/coder".into());
        }),
        scenario("env-filters", |s| {
            s.raw.envs = Some("KUBERNETES_*,MY_TOKEN,SYSBOX_*,CODER_IMAGE_PULL_SECRET".into());
            s.raw.bridge_cidr = Some("10.200.0.1/24".into());
            s.host.environ.extend(pairs(&[
                ("MY_TOKEN", "a=b=c"),
                ("MY_TOKEN_2", "not listed"),
                ("SYSBOX_HONOR_CAPS", "TRUE"),
                ("CODER_IMAGE_PULL_SECRET", "{\"auths\":{}}"),
                ("CODER_AGENT_SUBSYSTEM", "exectrace"),
            ]));
            s.image.env.push("SYSBOX_SKIP_UID_SHIFT=/".into());
            s.image.working_dir = Some("/src".into());
        }),
        scenario("runc-everything", |s| {
            s.raw.runtime = Some("runc".into());
            s.raw.add_tun = Some("true".into());
            s.raw.add_fuse = Some("true".into());
            s.raw.cpus = Some("2".into());
            s.raw.memory = Some("512Mi".into());
            s.raw.mounts = Some("/home/coder:/home/coder".into());
            s.raw.run_dir = Some("/run/envbox-test".into());
            s.host.resolv_conf = Some("nameserver 127.0.0.11\n".into());
        }),
    ]
}

fn render_scenario(s: &Scenario) -> (String, String) {
    let settings = Settings::from_raw(&s.raw, None, Purpose::Docker).expect("scenario settings");
    let plan = build(&SpecInput {
        settings: &settings,
        rootfs_path: Path::new(ROOTFS),
        rootfs: &s.rootfs,
        image: &s.image,
        host: &s.host,
    })
    .unwrap_or_else(|e| panic!("scenario {}: {e}", s.name));
    let mut actions: String = plan.actions.iter().map(|a| format!("{a}\n")).collect();
    for warning in &plan.warnings {
        actions.push_str(&format!("# warning: {warning}\n"));
    }
    (render::to_json(&plan.spec, Secrets::Reveal), actions)
}

fn golden_path(name: &str, extension: &str) -> PathBuf {
    Path::new(SPECS_DIR).join(format!("{name}.{extension}"))
}

fn compare_or_update(path: &Path, actual: &str, failures: &mut Vec<String>) {
    if std::env::var_os("ENVBOX_UPDATE_GOLDEN").is_some() {
        std::fs::write(path, actual).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        return;
    }
    match std::fs::read_to_string(path) {
        Ok(expected) if expected == actual => {}
        Ok(expected) => {
            let line = expected
                .lines()
                .zip(actual.lines())
                .position(|(e, a)| e != a)
                .map_or(
                    expected.lines().count().min(actual.lines().count()) + 1,
                    |i| i + 1,
                );
            failures.push(format!(
                "{} differs from the generator's output from line {line}: expected {:?}, got {:?}",
                path.display(),
                expected.lines().nth(line - 1).unwrap_or("<end>"),
                actual.lines().nth(line - 1).unwrap_or("<end>")
            ));
        }
        Err(e) => failures.push(format!("{}: {e}", path.display())),
    }
}

#[test]
fn golden_specs_match_the_generator() {
    let mut failures = Vec::new();
    let all = scenarios();
    assert!(all.len() >= 8);
    for s in &all {
        let (spec, actions) = render_scenario(s);
        compare_or_update(&golden_path(s.name, "json"), &spec, &mut failures);
        compare_or_update(&golden_path(s.name, "actions"), &actions, &mut failures);
    }
    assert!(
        failures.is_empty(),
        "golden specs differ (run `make specs` and review the diff if the change is intended):\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_golden_spec_keeps_the_security_invariants() {
    let mut checked = 0;
    for entry in std::fs::read_dir(SPECS_DIR).expect("specs dir") {
        let path = entry.expect("specs entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("golden spec");
            let spec: oci_spec::runtime::Spec =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            invariants::check(&spec).unwrap_or_else(|v| panic!("{}: {v}", path.display()));
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} golden specs");
}

#[test]
fn scenario_specifics_are_in_the_golden_specs() {
    let spec = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(golden_path(name, "json")).unwrap()).unwrap()
    };
    let env = |name: &str| spec(name)["process"]["env"].clone();
    let dests = |name: &str| -> Vec<String> {
        spec(name)["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap().to_owned())
            .collect()
    };
    let filtered = env("env-filters");
    let filtered: Vec<&str> = filtered
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        filtered.contains(&"MY_TOKEN=a=b=c") && filtered.contains(&"KUBERNETES_SERVICE_PORT=443")
    );
    assert!(!filtered.iter().any(|v| v.starts_with("SYSBOX_")
        || v.starts_with("CODER_IMAGE_PULL_SECRET")
        || v.starts_with("MY_TOKEN_2")));
    assert!(
        filtered.contains(&"CODER_AGENT_SUBSYSTEM=envbox"),
        "outer subsystem is read from the process env, not the scenario"
    );
    assert!(dests("gpu-ubuntu").contains(&"/dev/nvidia-uvm".to_owned()));
    assert!(dests("gpu-ubuntu").contains(&"/usr/local/nvidia".to_owned()));
    let rhel = std::fs::read_to_string(golden_path("gpu-rhel", "actions")).unwrap();
    assert!(rhel.contains("/usr/lib64/libcuda.so.1"), "{rhel}");
    assert_eq!(
        spec("systemd")["process"]["args"],
        serde_json::json!(["/sbin/init"])
    );
    assert!(
        dests("tun-fuse").contains(&"/dev/net/tun".to_owned())
            && dests("tun-fuse").contains(&"/dev/fuse".to_owned())
    );
}
