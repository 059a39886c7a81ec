//! The workspace's network, through the real CNI plugins (containernetworking-plugins 1.1.1).
//!
//! Owns: attaching a network namespace to the workspace bridge and detaching it again, and
//! the state that makes detaching possible after a crash. [`NetworkPlan`] (pure) turns the
//! settings into the CNI configs: bridge `envbox0` (gateway, hairpin, the MTU of
//! `ENVBOX_ETHLINK`) with host-local IPAM asked for exactly the address `/etc/hosts` names (the
//! bridge's first lease), then portmap, and envbox's own masquerade of the subnet (`masq`). No
//! loopback plugin: runc and sysbox-runc bring `lo` up in a network namespace they create
//! (libcontainer adds a loopback network to every netns without a path), before `create`
//! returns. [`Network`] runs them through [`NetSys`]: ADD chains `prevResult`, with the
//! masquerade beside it; DEL runs in reverse with the cached final ADD result;
//! calls are serialised by a lock under `<run dir>/cni`, where the attachment is cached
//! atomically before the first ADD. It never creates namespaces (`ip netns add` breaks runc's
//! sysfs mount under a user namespace) and never runs a plugin without holding that lock.
//!
//! Use (the netns is the task's init before it starts, e.g. `/proc/<pid>/ns/net`):
//!
//! ```ignore
//! let plan = NetworkPlan::new(&settings, container_id, &read_link_mtu(&settings.ethlink))?;
//! for w in &plan.warnings { warn!("{w}") }
//! let network = Network::new(plan);
//! network.cleanup_stale()?;                 // DEL of what a killed envbox left; a /30 has one lease
//! let attachment = network.add(netns)?;     // address, gateway, interface, mtu
//! // ... start the task; at stop, while the namespace still exists:
//! network.del(&attachment)?;
//! ```
//!
//! Every call blocks on plugin processes (tens of milliseconds): from async code, run it in
//! `spawn_blocking`.
//!
//! A DEL enters the namespace only while its path still names the namespace of the ADD; when
//! it is gone the plugins still release the lease, and the masquerade goes in any case.

mod bridge;
mod error;
#[cfg(test)]
mod fake;
mod invoke;
mod masq;
mod plan;
mod result;
mod state;
mod sys;
#[cfg(test)]
mod tests;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

pub use error::{CniCommand, NetworkError};
pub use plan::{LinkMtu, NetworkPlan, CNI_VERSION, FALLBACK_MTU};
pub(crate) use sys::{read_link_mtu, NetSys, RealNetSys};
#[cfg(test)]
use sys::{Invocation, NetnsId, Outcome};

use invoke::Missing;
use state::Record;

/// Whether a CNI state dir (a plan's `state_dir`) still caches an attachment: its DEL is owed,
/// and the next start's [`Network::cleanup_stale`] reads it from there.
pub(crate) fn attachment_cached(state_dir: &std::path::Path) -> bool {
    std::fs::read_dir(state_dir).is_ok_and(|dir| {
        dir.flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "json"))
    })
}

/// A namespace attached to the workspace network.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    /// The container the namespace belongs to.
    pub container_id: String,
    /// The network namespace file.
    pub netns: PathBuf,
    /// Inside: `eth0`.
    pub interface: String,
    /// The address leased to the namespace.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The bridge's address: `host.docker.internal` and the default route.
    pub gateway: Ipv4Addr,
    /// The interface MTU.
    pub mtu: u32,
    /// The interface's MAC address, if the plugin reported one.
    pub mac: Option<String>,
    /// The outer end of the veth pair.
    pub host_veth: Option<String>,
    record: Record,
}

/// What [`Network::cleanup_stale`] found and removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleCleanup {
    /// The container the leftover attachment belonged to.
    pub container_id: String,
    /// Its network namespace file.
    pub netns: PathBuf,
    /// Whether the namespace still existed (else only the lease and iptables rules were left).
    pub netns_existed: bool,
    /// Whether the ADD had finished before the crash.
    pub add_finished: bool,
    /// "Already gone" errors of the plugins, ignored.
    pub ignored: Vec<String>,
}

/// The workspace network of one plan.
pub struct Network<S: NetSys = RealNetSys> {
    plan: NetworkPlan,
    sys: S,
}

impl Network<RealNetSys> {
    /// A network for `plan` that makes the real CNI calls.
    pub fn new(plan: NetworkPlan) -> Self {
        Network::with_sys(plan, RealNetSys)
    }
}

impl<S: NetSys + Sync> Network<S> {
    pub(crate) fn with_sys(plan: NetworkPlan, sys: S) -> Self {
        Network { plan, sys }
    }

    /// Attaches the namespace at `netns`. Refuses while a previous attachment is cached (run
    /// [`Network::cleanup_stale`] first). On failure everything added is deleted again; if that
    /// fails too, the cache stays for `cleanup_stale`.
    pub fn add(&self, netns: &Path) -> Result<Attachment, NetworkError> {
        let _lock = state::lock(&self.plan.lock_path())?;
        let cache = self.plan.cache_path();
        if let Some(previous) = state::read(&cache)? {
            return Err(NetworkError::StaleAttachment {
                container_id: previous.container_id,
                path: cache,
            });
        }
        let netns_id = self
            .sys
            .netns_id(netns)
            .ok_or_else(|| NetworkError::Netns {
                path: netns.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "cannot be opened"),
            })?;
        let mut record = self.plan.pending_record(netns, netns_id);
        state::write(&cache, &record)?;
        let attached =
            invoke::add(&self.sys, &record, &self.plan.net.to_string()).and_then(|result| {
                record.result = Some(result);
                self.attachment(&record)
            });
        match attached {
            Ok(attachment) => {
                state::write(&cache, &record)?;
                Ok(attachment)
            }
            Err(error) => {
                let undone = invoke::del(&self.sys, &record, Missing::Ignore)
                    .and_then(|_| state::remove(&cache));
                if let Err(rollback) = undone {
                    tracing::warn!(
                        "undoing the failed CNI ADD failed too ({rollback}); {} keeps it for the next start",
                        cache.display()
                    );
                }
                Err(error)
            }
        }
    }

    /// Detaches; run it while the namespace still exists (else the plugin cannot find the
    /// interface; the lease and the masquerade rules are still removed).
    ///
    /// A failed DEL is run once more, "already gone" errors ignored: portmap's iptables
    /// teardown can fail transiently (iptables-nft EBUSY on a chain just unreferenced) after
    /// the interface went. The first error is returned only when that pass fails too.
    pub fn del(&self, attachment: &Attachment) -> Result<(), NetworkError> {
        let _lock = state::lock(&self.plan.lock_path())?;
        if let Err(first) = invoke::del(&self.sys, &attachment.record, Missing::Report) {
            std::thread::sleep(std::time::Duration::from_millis(100));
            invoke::del(&self.sys, &attachment.record, Missing::Ignore).map_err(|_| first)?;
        }
        state::remove(&self.plan.cache_path())
    }

    /// Deletes the bridge (after the last [`Network::del`]): the plugins never do, and a
    /// bridge left with another subnet breaks the next start on a machine that keeps it.
    pub(crate) fn remove_bridge(&self) -> Result<bool, NetworkError> {
        bridge::delete(&self.plan.bridge).map_err(|source| NetworkError::Bridge {
            bridge: self.plan.bridge.clone(),
            source,
        })
    }

    /// Deletes an attachment a previous envbox left cached (killed before its DEL). "Already
    /// gone" errors are ignored and listed; any other keeps the cache and is returned.
    pub fn cleanup_stale(&self) -> Result<Option<StaleCleanup>, NetworkError> {
        let _lock = state::lock(&self.plan.lock_path())?;
        let cache = self.plan.cache_path();
        let Some(record) = state::read(&cache)? else {
            return Ok(None);
        };
        let netns_existed = self.sys.netns_id(&record.netns) == Some(record.netns_id);
        let ignored = invoke::del(&self.sys, &record, Missing::Ignore)?;
        state::remove(&cache)?;
        Ok(Some(StaleCleanup {
            container_id: record.container_id,
            netns: record.netns,
            netns_existed,
            add_finished: record.result.is_some(),
            ignored,
        }))
    }

    /// The attachment a final ADD result describes, checked to be the address asked for.
    fn attachment(&self, record: &Record) -> Result<Attachment, NetworkError> {
        let result = record.result.as_ref().expect("called after ADD");
        let facts =
            result::add_facts(result, &record.ifname, &self.plan.bridge).map_err(|problem| {
                NetworkError::BadResult {
                    plugin: invoke::last_plugin(&record.conflist),
                    problem,
                }
            })?;
        if facts.address != self.plan.address || facts.prefix != self.plan.net.prefix {
            return Err(NetworkError::UnexpectedAddress {
                interface: record.ifname.clone(),
                expected: self.plan.address,
                got: facts.cidr,
                ipam_dir: self.plan.ipam_dir(),
            });
        }
        Ok(Attachment {
            container_id: record.container_id.clone(),
            netns: record.netns.clone(),
            interface: record.ifname.clone(),
            address: facts.address,
            prefix: facts.prefix,
            gateway: facts.gateway.unwrap_or(self.plan.gateway()),
            mtu: self.plan.mtu,
            mac: facts.mac,
            host_veth: facts.host_veth,
            record: record.clone(),
        })
    }
}
