//! [`NetworkPlan`]: everything the CNI calls need, computed from the settings. Pure.
//!
//! Owns: the conflist (bridge + host-local + portmap), the address asked of host-local (the
//! bridge's first lease, the one `/etc/hosts` names), the MTU choice, and where the CNI state
//! lives under the run dir. It never reads or runs anything: the MTU comes in as a
//! [`LinkMtu`] read at the edge ([`super::read_link_mtu`]).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::state::{self, Record};
use super::sys::NetnsId;
use super::NetworkError;
use crate::config::{names, BridgeNet, Settings};

/// The CNI spec version envbox speaks (containernetworking-plugins 1.1.1 supports it).
pub const CNI_VERSION: &str = "1.0.0";
/// Network name: keys host-local's lease directory and the masquerade chain.
pub(crate) const NETWORK_NAME: &str = "envbox";
/// The outer side of the workspace network.
pub(crate) const BRIDGE_NAME: &str = "envbox0";
/// The workspace's interface.
pub(crate) const IFNAME: &str = "eth0";
/// The MTU when the link to copy from cannot be read (the kernel's Ethernet default).
pub const FALLBACK_MTU: u32 = 1500;
/// `PATH` given to the plugins: bridge and portmap run `iptables`.
pub(crate) const PLUGIN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The MTU of `ENVBOX_ETHLINK`, as read at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkMtu {
    /// The link's MTU was read.
    Read {
        /// The link's name.
        link: String,
        /// Its MTU.
        mtu: u32,
    },
    /// The link is absent or its MTU unreadable: the plan falls back to [`FALLBACK_MTU`].
    Unavailable {
        /// The link's name.
        link: String,
        /// Why its MTU could not be read.
        reason: String,
    },
}

/// What the CNI calls of one workspace use. Build it with [`NetworkPlan::new`]; tests that must
/// not collide with the real network rename it with [`NetworkPlan::with_names`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPlan {
    /// CNI network name (`envbox`).
    pub name: String,
    /// Bridge on the outer side (`envbox0`); its address is the gateway.
    pub bridge: String,
    /// `CNI_CONTAINERID`: keys the lease and the iptables rules.
    pub container_id: String,
    /// The workspace's interface (`eth0`).
    pub ifname: String,
    /// `CODER_DOCKER_BRIDGE_CIDR`, host bits cleared.
    pub net: BridgeNet,
    /// The address asked of host-local: the bridge's first lease.
    pub address: Ipv4Addr,
    /// The MTU of the bridge and the veth pairs.
    pub mtu: u32,
    /// `ENVBOX_CNI_PATH`: where the plugin executables are.
    pub cni_path: PathBuf,
    /// `<run dir>/cni`: host-local's leases (`ipam/`), the cached attachment and its lock.
    pub state_dir: PathBuf,
    /// Said once, e.g. that the MTU fell back.
    pub warnings: Vec<String>,
}

/// CNI's rule for container IDs and network names (libcni's `ValidateContainerID`).
fn is_cni_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn check_identifier(what: &'static str, value: &str) -> Result<(), NetworkError> {
    if is_cni_identifier(value) {
        return Ok(());
    }
    Err(NetworkError::InvalidName {
        what,
        value: value.to_owned(),
        expected: "a letter or digit, then letters, digits, '_', '.' or '-'",
    })
}

/// A Linux interface name: 1 to 15 bytes, no `/`, `:` or whitespace.
fn check_link_name(value: &str) -> Result<(), NetworkError> {
    let ok = (1..=15).contains(&value.len())
        && !value.contains(['/', ':'])
        && !value.contains(char::is_whitespace)
        && value != "."
        && value != "..";
    if ok {
        return Ok(());
    }
    Err(NetworkError::InvalidName {
        what: "bridge name",
        value: value.to_owned(),
        expected: "an interface name of 1 to 15 characters without '/', ':' or spaces",
    })
}

impl NetworkPlan {
    /// The plan of the workspace `container_id`, whose network copies the MTU of `link_mtu`.
    pub fn new(
        settings: &Settings,
        container_id: &str,
        link_mtu: &LinkMtu,
    ) -> Result<NetworkPlan, NetworkError> {
        check_identifier("container ID", container_id)?;
        let (mtu, warnings) = match link_mtu {
            LinkMtu::Read { mtu, .. } => (*mtu, Vec::new()),
            LinkMtu::Unavailable { link, reason } => (
                FALLBACK_MTU,
                vec![format!(
                    "{} {link:?}: {reason}; the workspace network uses MTU {FALLBACK_MTU}",
                    names::ETHLINK
                )],
            ),
        };
        Ok(NetworkPlan {
            name: NETWORK_NAME.to_owned(),
            bridge: BRIDGE_NAME.to_owned(),
            container_id: container_id.to_owned(),
            ifname: IFNAME.to_owned(),
            net: settings.bridge,
            address: settings.bridge.first_lease(),
            mtu,
            cni_path: settings.cni_path.clone(),
            state_dir: crate::run_dir::RunLayout::new(&settings.run_dir).cni(),
            warnings,
        })
    }

    /// The same plan under another network and bridge name (tests beside a real envbox).
    pub fn with_names(mut self, name: &str, bridge: &str) -> Result<NetworkPlan, NetworkError> {
        check_identifier("network name", name)?;
        check_link_name(bridge)?;
        self.name = name.to_owned();
        self.bridge = bridge.to_owned();
        Ok(self)
    }

    /// The `nat` chain of envbox's masquerade of this network's subnet.
    pub fn masquerade_chain(&self) -> String {
        super::masq::chain_name(&self.name)
    }

    /// The gateway: the bridge's address, `host.docker.internal` inside.
    pub fn gateway(&self) -> Ipv4Addr {
        self.net.gateway
    }

    /// host-local's `dataDir`.
    pub fn ipam_dir(&self) -> PathBuf {
        self.state_dir.join("ipam")
    }

    /// The cached attachment (the final ADD result and the config it was made with).
    pub fn cache_path(&self) -> PathBuf {
        self.state_dir.join(format!("{}.json", self.name))
    }

    /// The lock every CNI call of this network holds.
    pub(crate) fn lock_path(&self) -> PathBuf {
        self.state_dir.join(format!("{}.lock", self.name))
    }

    /// The network configuration list: bridge (with host-local IPAM), then portmap.
    pub(crate) fn conflist(&self) -> Value {
        json!({
            "cniVersion": CNI_VERSION,
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    // envbox's own rule instead (`masq`), installed beside the ADD.
                    "ipMasq": false,
                    "hairpinMode": true,
                    "mtu": self.mtu,
                    "capabilities": {"ips": true},
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{
                            "subnet": self.net.to_string(),
                            "gateway": self.net.gateway.to_string(),
                        }]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": self.ipam_dir(),
                    },
                },
                {
                    "type": "portmap",
                    "snat": true,
                    "capabilities": {"portMappings": true},
                },
            ],
        })
    }

    /// The record cached before the first ADD into `netns` (which names `netns_id`).
    pub(crate) fn pending_record(&self, netns: &Path, netns_id: NetnsId) -> Record {
        Record {
            version: state::VERSION,
            container_id: self.container_id.clone(),
            netns: netns.to_owned(),
            netns_id,
            ifname: self.ifname.clone(),
            cni_path: self.cni_path.clone(),
            conflist: self.conflist(),
            runtime_config: self.runtime_config(),
            result: None,
        }
    }

    /// Runtime arguments, handed to plugins that declare the capability: the one address.
    pub(crate) fn runtime_config(&self) -> Value {
        json!({"ips": [format!("{}/{}", self.address, self.net.prefix)]})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Purpose, RawSettings};

    fn settings(cidr: &str) -> Settings {
        let raw = RawSettings {
            image: Some("ubuntu".into()),
            username: Some("coder".into()),
            bridge_cidr: Some(cidr.into()),
            run_dir: Some("/run/envbox-x".into()),
            ..Default::default()
        };
        Settings::from_raw(&raw, None, Purpose::Docker).unwrap()
    }

    fn read(mtu: u32) -> LinkMtu {
        LinkMtu::Read {
            link: "eth0".into(),
            mtu,
        }
    }

    fn ipam(plan: &NetworkPlan) -> Value {
        plan.conflist()["plugins"][0]["ipam"].clone()
    }

    #[test]
    fn default_slash_30_asks_for_the_address_etc_hosts_names() {
        let s = settings("172.19.0.1/30");
        let plan = NetworkPlan::new(&s, "workspace", &read(1450)).unwrap();
        assert_eq!(plan.address, Ipv4Addr::new(172, 19, 0, 2));
        assert_eq!(
            plan.address,
            s.bridge.first_lease(),
            "the /etc/hosts address"
        );
        assert_eq!(plan.gateway(), s.bridge.gateway);
        assert_eq!(
            ipam(&plan)["ranges"],
            json!([[{"subnet": "172.19.0.0/30", "gateway": "172.19.0.1"}]])
        );
        assert_eq!(ipam(&plan)["routes"], json!([{"dst": "0.0.0.0/0"}]));
        assert_eq!(ipam(&plan)["dataDir"], json!("/run/envbox-x/cni/ipam"));
        assert_eq!(plan.runtime_config(), json!({"ips": ["172.19.0.2/30"]}));
        assert!(plan.warnings.is_empty());
    }

    #[test]
    fn the_conflist_is_bridge_then_portmap() {
        let plan = NetworkPlan::new(&settings("172.19.0.1/30"), "ws", &read(1450)).unwrap();
        let list = plan.conflist();
        assert_eq!(list["cniVersion"], json!(CNI_VERSION));
        assert_eq!(list["name"], json!("envbox"));
        let bridge = &list["plugins"][0];
        assert_eq!(bridge["type"], json!("bridge"));
        assert_eq!(bridge["bridge"], json!("envbox0"));
        for flag in ["isGateway", "hairpinMode"] {
            assert_eq!(bridge[flag], json!(true), "{flag}");
        }
        assert_eq!(
            bridge["ipMasq"],
            json!(false),
            "envbox's own masquerade instead"
        );
        assert_eq!(bridge["mtu"], json!(1450));
        assert_eq!(bridge["capabilities"], json!({"ips": true}));
        assert_eq!(bridge["ipam"]["type"], json!("host-local"));
        assert_eq!(list["plugins"][1]["type"], json!("portmap"));
        assert_eq!(list["plugins"].as_array().unwrap().len(), 2);
        assert_eq!(plan.ifname, "eth0");
        assert_eq!(plan.cni_path, PathBuf::from("/usr/lib/cni"));
        assert_eq!(
            plan.cache_path(),
            PathBuf::from("/run/envbox-x/cni/envbox.json")
        );
    }

    #[test]
    fn host_bits_are_cleared_from_the_subnet() {
        let plan = NetworkPlan::new(&settings("172.19.0.5/30"), "ws", &read(1500)).unwrap();
        assert_eq!(
            ipam(&plan)["ranges"][0][0],
            json!({"subnet": "172.19.0.4/30", "gateway": "172.19.0.5"})
        );
        assert_eq!(plan.address, Ipv4Addr::new(172, 19, 0, 6));
        assert_eq!(plan.runtime_config(), json!({"ips": ["172.19.0.6/30"]}));
    }

    #[test]
    fn a_slash_24_keeps_gateway_one_and_workspace_two() {
        let plan = NetworkPlan::new(&settings("10.20.30.77/24"), "ws", &read(9000)).unwrap();
        assert_eq!(
            ipam(&plan)["ranges"][0][0],
            json!({"subnet": "10.20.30.0/24", "gateway": "10.20.30.1"})
        );
        assert_eq!(plan.address, Ipv4Addr::new(10, 20, 30, 2));
        assert_eq!(plan.conflist()["plugins"][0]["mtu"], json!(9000));
    }

    #[test]
    fn ipv6_and_too_small_networks_are_refused_by_the_setting_naming_it() {
        for cidr in ["fd00::1/64", "172.19.0.1/31", "172.19.0.1/32"] {
            let raw = RawSettings {
                image: Some("ubuntu".into()),
                username: Some("coder".into()),
                bridge_cidr: Some(cidr.into()),
                ..Default::default()
            };
            let err = Settings::from_raw(&raw, None, Purpose::Docker)
                .unwrap_err()
                .to_string();
            assert!(err.contains("CODER_DOCKER_BRIDGE_CIDR"), "{cidr}: {err}");
        }
    }

    #[test]
    fn an_unreadable_link_falls_back_to_1500_and_says_so() {
        let mtu = LinkMtu::Unavailable {
            link: "eth9".into(),
            reason: "no such link".into(),
        };
        let plan = NetworkPlan::new(&settings("172.19.0.1/30"), "ws", &mtu).unwrap();
        assert_eq!(plan.mtu, FALLBACK_MTU);
        assert_eq!(plan.conflist()["plugins"][0]["mtu"], json!(1500));
        assert_eq!(plan.warnings.len(), 1);
        let warning = &plan.warnings[0];
        assert!(
            warning.contains("ENVBOX_ETHLINK") && warning.contains("eth9"),
            "{warning}"
        );
        assert!(warning.contains("no such link") && warning.contains("1500"));
    }

    #[test]
    fn names_are_checked() {
        let s = settings("172.19.0.1/30");
        for bad in ["", "-x", "a b", "a/b", "ä"] {
            let err = NetworkPlan::new(&s, bad, &read(1500)).unwrap_err();
            assert!(err.to_string().contains("container ID"), "{bad:?}: {err}");
        }
        let plan = NetworkPlan::new(&s, "abc_1.2-3", &read(1500)).unwrap();
        assert!(plan
            .clone()
            .with_names("t-net", "sixteen-chars-xx")
            .is_err());
        assert!(plan.clone().with_names("t net", "br0").is_err());
        let renamed = plan.with_names("t-net", "tbr0").unwrap();
        assert_eq!(renamed.conflist()["name"], json!("t-net"));
        assert_eq!(renamed.conflist()["plugins"][0]["bridge"], json!("tbr0"));
        assert_eq!(
            renamed.lock_path(),
            PathBuf::from("/run/envbox-x/cni/t-net.lock")
        );
    }
}
