//! Reading a CNI ADD result (spec 1.0.0) and a plugin's error. Pure.
//!
//! Owns: finding the workspace interface (the one with a `sandbox`) and its IPv4 address and
//! gateway in a result, the host-side veth, and parsing the `{"code","msg","details"}` a plugin
//! prints when it fails. It never judges whether the address is the right one.

use std::net::Ipv4Addr;

use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
struct CniResult {
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<IpConfig>,
}

#[derive(Deserialize)]
struct Interface {
    name: String,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    sandbox: Option<String>,
}

#[derive(Deserialize)]
struct IpConfig {
    #[serde(default)]
    interface: Option<usize>,
    address: String,
    #[serde(default)]
    gateway: Option<String>,
}

/// What a result says about the workspace's interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AddFacts {
    /// `address/prefix` as the plugin gave it.
    pub cidr: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub mac: Option<String>,
    /// The outer end of the veth pair (neither the bridge nor in the sandbox).
    pub host_veth: Option<String>,
}

/// Reads the facts of `ifname` from a final ADD result; the error says what is missing.
pub(crate) fn add_facts(result: &Value, ifname: &str, bridge: &str) -> Result<AddFacts, String> {
    let parsed: CniResult =
        serde_json::from_value(result.clone()).map_err(|e| format!("not a CNI result: {e}"))?;
    let index = parsed
        .interfaces
        .iter()
        .position(|i| i.name == ifname && i.sandbox.as_deref().is_some_and(|s| !s.is_empty()))
        .ok_or_else(|| format!("no interface {ifname} inside the namespace"))?;
    let ip = parsed
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(index))
        .find_map(|ip| {
            let (addr, prefix) = ip.address.split_once('/')?;
            Some((
                ip,
                addr.parse::<Ipv4Addr>().ok()?,
                prefix.parse::<u8>().ok()?,
            ))
        });
    let Some((ip, address, prefix)) = ip else {
        return Err(format!("no IPv4 address for {ifname}"));
    };
    let gateway = match &ip.gateway {
        None => None,
        Some(text) => Some(
            text.parse()
                .map_err(|_| format!("gateway {text:?} is not an IPv4 address"))?,
        ),
    };
    Ok(AddFacts {
        cidr: ip.address.clone(),
        address,
        prefix,
        gateway,
        mac: parsed.interfaces[index].mac.clone(),
        host_veth: parsed
            .interfaces
            .iter()
            .find(|i| i.name != bridge && i.sandbox.as_deref().is_none_or(str::is_empty))
            .map(|i| i.name.clone()),
    })
}

/// A plugin's error object.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct PluginError {
    pub code: u64,
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

/// Reads a plugin's error from its stdout, `None` when it printed none.
pub(crate) fn plugin_error(stdout: &[u8]) -> Option<PluginError> {
    serde_json::from_slice(stdout).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The result bridge 1.1.1 printed for a real ADD.
    fn real_result() -> Value {
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "exp0", "mac": "4a:b7:ee:a3:2e:ad"},
                {"name": "vethb6b5c531", "mac": "ba:f6:4f:38:34:77"},
                {"name": "eth0", "mac": "e6:62:a9:db:54:df", "sandbox": "/proc/3117/ns/net"}
            ],
            "ips": [{"interface": 2, "address": "172.31.250.2/30", "gateway": "172.31.250.1"}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        })
    }

    #[test]
    fn the_sandboxed_interface_and_its_address_are_found() {
        let facts = add_facts(&real_result(), "eth0", "exp0").unwrap();
        assert_eq!(
            facts,
            AddFacts {
                cidr: "172.31.250.2/30".into(),
                address: Ipv4Addr::new(172, 31, 250, 2),
                prefix: 30,
                gateway: Some(Ipv4Addr::new(172, 31, 250, 1)),
                mac: Some("e6:62:a9:db:54:df".into()),
                host_veth: Some("vethb6b5c531".into()),
            }
        );
    }

    #[test]
    fn missing_pieces_are_named() {
        let mut r = real_result();
        assert_eq!(
            add_facts(&r, "eth1", "exp0").unwrap_err(),
            "no interface eth1 inside the namespace"
        );
        r["ips"][0]["interface"] = json!(1);
        assert_eq!(
            add_facts(&r, "eth0", "exp0").unwrap_err(),
            "no IPv4 address for eth0"
        );
        r["ips"][0] = json!({"interface": 2, "address": "fd00::2/64"});
        assert_eq!(
            add_facts(&r, "eth0", "exp0").unwrap_err(),
            "no IPv4 address for eth0"
        );
        assert!(add_facts(&json!([1]), "eth0", "exp0")
            .unwrap_err()
            .starts_with("not a CNI result"));
    }

    #[test]
    fn plugin_errors_parse_with_or_without_details() {
        let e = plugin_error(br#"{"cniVersion":"1.0.0","code":7,"msg":"bad","details":"why"}"#);
        assert_eq!(
            e,
            Some(PluginError {
                code: 7,
                msg: "bad".into(),
                details: "why".into()
            })
        );
        let e = plugin_error(b"{\n    \"code\": 999,\n    \"msg\": \"failed to open netns\"\n}");
        assert_eq!(e.unwrap().code, 999);
        assert_eq!(plugin_error(b"panic: runtime error"), None);
    }
}
