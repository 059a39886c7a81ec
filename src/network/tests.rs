//! The chaining, caching and cleanup logic against a recording stand-in for the plugins.

use std::io;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::fake::{failed, kind, ok, stdin, FakeSys, NETNS};
use super::*;
use crate::config::{Purpose, RawSettings, Settings};

fn plan(run_dir: &Path) -> NetworkPlan {
    let raw = RawSettings {
        image: Some("ubuntu".into()),
        username: Some("coder".into()),
        run_dir: Some(run_dir.to_str().unwrap().into()),
        ..Default::default()
    };
    let settings = Settings::from_raw(&raw, None, Purpose::Docker).unwrap();
    let mtu = LinkMtu::Read {
        link: "eth0".into(),
        mtu: 1450,
    };
    NetworkPlan::new(&settings, "ws1", &mtu).unwrap()
}

fn stdin_text(inv: &Invocation) -> String {
    String::from_utf8_lossy(&inv.stdin).into_owned()
}

/// The calls of one CNI command (plugins only), in the order they ran.
fn cni_calls(net: &Network<FakeSys>, command: &str) -> Vec<String> {
    let suffix = format!(" {command}");
    net.sys
        .kinds()
        .into_iter()
        .filter(|k| k.ends_with(&suffix))
        .collect()
}

fn network(dir: &tempfile::TempDir, sys: FakeSys) -> Network<FakeSys> {
    Network::with_sys(plan(dir.path()), sys)
}

#[test]
fn add_chains_prev_result_and_caches_the_final_result() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir, FakeSys::plain());
    let attachment = net.add(Path::new(NETNS)).unwrap();
    let mut kinds = net.sys.kinds();
    let main: Vec<&String> = kinds
        .iter()
        .filter(|k| !k.starts_with("iptables"))
        .collect();
    assert_eq!(main, ["bridge ADD", "portmap ADD"], "in order: {kinds:?}");
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "bridge ADD",
            "iptables -A POSTROUTING -s 172.19.0.0/30 -j ENVBOX-MASQ",
            "iptables -S POSTROUTING",
            "iptables-restore -w --noflush",
            "portmap ADD",
        ]
    );
    assert_eq!(*net.sys.chains.lock().unwrap(), ["ENVBOX-MASQ"]);
    assert_eq!(
        stdin_text(&net.sys.call("iptables-restore")),
        masq::chain_rules("ENVBOX-MASQ", "172.19.0.0/30")
    );
    assert_eq!(
        *net.sys.postrouting.lock().unwrap(),
        ["-s 172.19.0.0/30 -j ENVBOX-MASQ"]
    );

    let bridge = net.sys.call("bridge ADD");
    let bridge_in = stdin(&bridge);
    assert_eq!(bridge.program, PathBuf::from("/usr/lib/cni/bridge"));
    assert_eq!(bridge_in["cniVersion"], json!("1.0.0"));
    assert_eq!(bridge_in["name"], json!("envbox"));
    assert_eq!(
        bridge_in["runtimeConfig"],
        json!({"ips": ["172.19.0.2/30"]})
    );
    assert!(
        bridge_in.get("prevResult").is_none(),
        "the first plugin has none"
    );
    let portmap_in = stdin(&net.sys.call("portmap ADD"));
    let bridge_out = net.sys.behave(&bridge).unwrap().stdout;
    assert_eq!(
        portmap_in["prevResult"],
        serde_json::from_slice::<Value>(&bridge_out).unwrap()
    );
    assert!(
        portmap_in.get("runtimeConfig").is_none(),
        "no port mappings given"
    );

    assert_eq!(attachment.address, std::net::Ipv4Addr::new(172, 19, 0, 2));
    assert_eq!(attachment.gateway, std::net::Ipv4Addr::new(172, 19, 0, 1));
    assert_eq!(
        (
            attachment.interface.as_str(),
            attachment.prefix,
            attachment.mtu
        ),
        ("eth0", 30, 1450)
    );
    assert_eq!(attachment.host_veth.as_deref(), Some("veth1234"));
    let cached = state::read(&net.plan.cache_path()).unwrap().unwrap();
    assert_eq!(
        cached.result.as_ref().unwrap()["ips"][0]["address"],
        json!("172.19.0.2/30")
    );
    assert_eq!(cached.netns_id, NetnsId { dev: 4, ino: 77 });
}

#[test]
fn plugins_get_exactly_the_cni_environment() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir, FakeSys::plain());
    net.add(Path::new(NETNS)).unwrap();
    let mut env = net.sys.call("bridge ADD").env;
    env.sort();
    let expected: Vec<(String, String)> = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "ws1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", NETNS),
        ("CNI_PATH", "/usr/lib/cni"),
        ("PATH", plan::PLUGIN_PATH),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    assert_eq!(env, expected);
}

#[test]
fn del_runs_in_reverse_with_the_cached_result_then_removes_the_masquerade() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir, FakeSys::plain());
    let attachment = net.add(Path::new(NETNS)).unwrap();
    let final_result = state::read(&net.plan.cache_path()).unwrap().unwrap().result;
    net.sys.calls.lock().unwrap().clear();
    net.del(&attachment).unwrap();
    assert_eq!(
        net.sys.kinds(),
        [
            "portmap DEL",
            "bridge DEL",
            "iptables -S POSTROUTING",
            "iptables -D POSTROUTING -s 172.19.0.0/30 -j ENVBOX-MASQ",
            "iptables -S ENVBOX-MASQ",
            "iptables -F ENVBOX-MASQ",
            "iptables -X ENVBOX-MASQ",
        ]
    );
    assert!(net.sys.chains.lock().unwrap().is_empty());
    assert!(net.sys.postrouting.lock().unwrap().is_empty());
    for plugin in ["portmap DEL", "bridge DEL"] {
        let inv = net.sys.call(plugin);
        assert_eq!(
            Some(stdin(&inv)["prevResult"].clone()),
            final_result,
            "{plugin}"
        );
        assert_eq!(inv.env_var("CNI_NETNS"), Some(NETNS));
    }
    assert_eq!(state::read(&net.plan.cache_path()).unwrap(), None);
}

#[test]
fn a_plugin_error_is_typed_and_the_partial_add_is_undone() {
    let dir = tempfile::tempdir().unwrap();
    let sys = FakeSys::new(|inv| {
        (kind(inv) == "portmap ADD").then(|| {
            failed(
                r#"{"cniVersion":"1.0.0","code":7,"msg":"bad config","details":"x"}"#,
                "",
            )
        })
    });
    let net = network(&dir, sys);
    let err = net.add(Path::new(NETNS)).unwrap_err();
    assert!(
        matches!(&err, NetworkError::Plugin { plugin, command: CniCommand::Add, code: 7, msg, .. }
            if plugin == "portmap" && msg == "bad config"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "CNI plugin portmap ADD failed (code 7): bad config (x)"
    );
    assert_eq!(cni_calls(&net, "DEL"), ["portmap DEL", "bridge DEL"]);
    assert!(
        net.sys.postrouting.lock().unwrap().is_empty() && net.sys.chains.lock().unwrap().is_empty(),
        "the masquerade is undone too"
    );
    assert_eq!(
        state::read(&net.plan.cache_path()).unwrap(),
        None,
        "undone: no cache"
    );
}

#[test]
fn output_that_is_not_a_cni_error_is_shown_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let sys = FakeSys::new(|inv| (kind(inv) == "bridge ADD").then(|| failed("", "panic: boom")));
    let err = network(&dir, sys)
        .add(Path::new(NETNS))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "CNI plugin bridge ADD failed (exit status: 1) without a CNI error: panic: boom"
    );
}

#[test]
fn a_missing_plugin_names_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let sys = FakeSys::new(|inv| {
        (kind(inv) == "portmap ADD").then(|| Err(io::Error::from(io::ErrorKind::NotFound)))
    });
    let err = network(&dir, sys)
        .add(Path::new(NETNS))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("portmap ADD: cannot run /usr/lib/cni/portmap"),
        "{err}"
    );
    assert!(err.contains("ENVBOX_CNI_PATH"), "{err}");
}

#[test]
fn another_address_than_the_one_in_etc_hosts_is_refused_and_released() {
    let dir = tempfile::tempdir().unwrap();
    let sys = FakeSys::new(|inv| {
        (kind(inv) == "portmap ADD").then(|| {
            let mut result = stdin(inv)["prevResult"].clone();
            result["ips"][0]["address"] = json!("172.19.0.3/30");
            ok(&serde_json::to_vec(&result).unwrap())
        })
    });
    let net = network(&dir, sys);
    let err = net.add(Path::new(NETNS)).unwrap_err();
    assert!(
        matches!(&err, NetworkError::UnexpectedAddress { got, .. } if got == "172.19.0.3/30"),
        "{err:?}"
    );
    assert!(net.sys.kinds().contains(&"bridge DEL".to_owned()));
    assert_eq!(state::read(&net.plan.cache_path()).unwrap(), None);
}

#[test]
fn add_refuses_while_a_previous_attachment_is_cached() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir, FakeSys::plain());
    net.add(Path::new(NETNS)).unwrap();
    let err = net.add(Path::new(NETNS)).unwrap_err().to_string();
    assert!(
        err.contains("cleanup_stale") && err.contains("\"ws1\""),
        "{err}"
    );
}

#[test]
fn stale_cleanup_after_the_namespace_died_releases_the_lease_and_the_masquerade() {
    let dir = tempfile::tempdir().unwrap();
    let first = network(&dir, FakeSys::plain());
    first.add(Path::new(NETNS)).unwrap();
    drop(first); // killed: no DEL

    let sys = FakeSys::plain();
    sys.netns.lock().unwrap().clear(); // the namespace is gone
    sys.chains.lock().unwrap().push("ENVBOX-MASQ".into());
    // Two copies of the jump (and another network's rule, left alone).
    sys.postrouting.lock().unwrap().extend([
        "-s 172.19.0.0/30 -j ENVBOX-MASQ".to_owned(),
        "-s 10.1.0.0/16 -j OTHER".to_owned(),
        "-s 172.19.0.0/30 -j ENVBOX-MASQ".to_owned(),
    ]);
    let net = network(&dir, sys);
    let cleaned = net.cleanup_stale().unwrap().unwrap();
    assert_eq!((cleaned.netns_existed, cleaned.add_finished), (false, true));
    assert_eq!(cleaned.container_id, "ws1");
    assert_eq!(
        net.sys.call("bridge DEL").env_var("CNI_NETNS"),
        Some(""),
        "never entered"
    );
    assert!(net.sys.chains.lock().unwrap().is_empty());
    assert_eq!(
        *net.sys.postrouting.lock().unwrap(),
        ["-s 10.1.0.0/16 -j OTHER"]
    );
    assert_eq!(net.cleanup_stale().unwrap(), None, "nothing left");
}

#[test]
fn add_repairs_a_masquerade_left_for_another_subnet_or_twice() {
    let dir = tempfile::tempdir().unwrap();
    let sys = FakeSys::plain();
    sys.chains.lock().unwrap().push("ENVBOX-MASQ".into());
    sys.postrouting.lock().unwrap().extend([
        "-s 10.9.0.0/16 -j ENVBOX-MASQ".to_owned(),
        "-s 172.19.0.0/30 -j ENVBOX-MASQ".to_owned(),
        "-s 172.19.0.0/30 -j ENVBOX-MASQ".to_owned(),
        "-s 10.1.0.0/16 -j OTHER".to_owned(),
    ]);
    let net = network(&dir, sys);
    net.add(Path::new(NETNS)).unwrap();
    assert_eq!(
        *net.sys.postrouting.lock().unwrap(),
        ["-s 172.19.0.0/30 -j ENVBOX-MASQ", "-s 10.1.0.0/16 -j OTHER"]
    );
    assert!(
        net.sys
            .kinds()
            .contains(&"iptables-restore -w --noflush".to_owned()),
        "the chain is rewritten (declared, so flushed) on every ADD"
    );
}

#[test]
fn a_failed_masquerade_fails_the_add_and_undoes_it() {
    let dir = tempfile::tempdir().unwrap();
    let sys = FakeSys::new(|inv| {
        inv.program
            .ends_with("iptables-restore")
            .then(|| failed("", "iptables-restore: line 2 failed"))
    });
    let net = network(&dir, sys);
    let err = net.add(Path::new(NETNS)).unwrap_err().to_string();
    assert!(
        err.contains("iptables-restore -w --noflush (chain ENVBOX-MASQ) failed")
            && err.contains("line 2 failed"),
        "{err}"
    );
    assert_eq!(cni_calls(&net, "DEL"), ["portmap DEL", "bridge DEL"]);
    assert_eq!(state::read(&net.plan.cache_path()).unwrap(), None);
}

#[test]
fn a_reused_namespace_path_is_not_entered() {
    let dir = tempfile::tempdir().unwrap();
    network(&dir, FakeSys::plain())
        .add(Path::new(NETNS))
        .unwrap();
    let sys = FakeSys::plain();
    sys.netns
        .lock()
        .unwrap()
        .insert(NETNS.into(), NetnsId { dev: 4, ino: 78 });
    let net = network(&dir, sys);
    assert!(!net.cleanup_stale().unwrap().unwrap().netns_existed);
    assert_eq!(net.sys.call("bridge DEL").env_var("CNI_NETNS"), Some(""));
}

#[test]
fn stale_cleanup_ignores_gone_but_reports_other_errors_and_keeps_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    network(&dir, FakeSys::plain())
        .add(Path::new(NETNS))
        .unwrap();

    let sys = FakeSys::new(|inv| {
        (kind(inv) == "portmap DEL").then(|| failed(r#"{"code":999,"msg":"could not teardown ipv4 dnat: running [/usr/sbin/iptables -t nat -X CNI-DN-x --wait]: exit status 1: iptables: Resource busy."}"#, ""))
    });
    let net = network(&dir, sys);
    let err = net.cleanup_stale().unwrap_err();
    assert!(
        matches!(err, NetworkError::Plugin { ref plugin, command: CniCommand::Del, .. } if plugin == "portmap"),
        "{err:?}"
    );
    assert!(
        net.sys.kinds().contains(&"bridge DEL".to_owned()),
        "the other DELs still ran"
    );
    assert!(
        state::read(&net.plan.cache_path()).unwrap().is_some(),
        "kept for a retry"
    );

    let sys = FakeSys::new(|inv| {
        (kind(inv) == "bridge DEL").then(|| failed(r#"{"code":3,"msg":"unknown container"}"#, ""))
    });
    let net = network(&dir, sys);
    let cleaned = net.cleanup_stale().unwrap().unwrap();
    assert_eq!(
        cleaned.ignored,
        ["CNI plugin bridge DEL failed (code 3): unknown container"]
    );
    assert_eq!(state::read(&net.plan.cache_path()).unwrap(), None);
}

#[test]
fn a_crash_during_add_leaves_a_record_whose_del_has_no_prev_result() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir, FakeSys::plain());
    // What add() caches before its first ADD, as a killed envbox would leave it.
    let pending = net
        .plan
        .pending_record(Path::new(NETNS), NetnsId { dev: 4, ino: 77 });
    std::fs::create_dir_all(&net.plan.state_dir).unwrap();
    state::write(&net.plan.cache_path(), &pending).unwrap();
    let cleaned = net.cleanup_stale().unwrap().unwrap();
    assert!(!cleaned.add_finished && cleaned.netns_existed);
    let bridge = net.sys.call("bridge DEL");
    assert!(stdin(&bridge).get("prevResult").is_none());
    assert_eq!(
        stdin(&bridge)["runtimeConfig"],
        json!({"ips": ["172.19.0.2/30"]})
    );
}
