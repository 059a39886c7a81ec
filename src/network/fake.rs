//! A recording stand-in for the CNI plugins and iptables, for the unit tests of the chaining,
//! caching and cleanup logic: it answers like the 1.1.1 plugins unless told otherwise.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{json, Value};

use super::{Invocation, NetSys, NetnsId, Outcome};

pub(crate) type Respond = Box<dyn Fn(&Invocation) -> Option<io::Result<Outcome>> + Send + Sync>;

/// Records every run; answers like the real plugins (and a `nat` table) unless `respond` says
/// otherwise. The network and the masquerade run on their own threads.
pub(crate) struct FakeSys {
    pub calls: Mutex<Vec<Invocation>>,
    pub netns: Mutex<HashMap<PathBuf, NetnsId>>,
    /// User chains of the `nat` table.
    pub chains: Mutex<Vec<String>>,
    /// `POSTROUTING` rules, as `iptables -S` prints them after `-A POSTROUTING `.
    pub postrouting: Mutex<Vec<String>>,
    respond: Respond,
}

pub(crate) fn ok(stdout: &[u8]) -> io::Result<Outcome> {
    Ok(Outcome {
        success: true,
        status: "exit status: 0".into(),
        stdout: stdout.to_vec(),
        stderr: Vec::new(),
    })
}

pub(crate) fn failed(stdout: &str, stderr: &str) -> io::Result<Outcome> {
    Ok(Outcome {
        success: false,
        status: "exit status: 1".into(),
        stdout: stdout.as_bytes().to_vec(),
        stderr: stderr.as_bytes().to_vec(),
    })
}

pub(crate) fn stdin(inv: &Invocation) -> Value {
    serde_json::from_slice(&inv.stdin).unwrap_or(Value::Null)
}

pub(crate) fn kind(inv: &Invocation) -> String {
    let name = inv.program.file_name().unwrap().to_string_lossy();
    match inv.env_var("CNI_COMMAND") {
        Some(command) => format!("{name} {command}"),
        None if name == "iptables" => format!("{name} {}", inv.args[3..].join(" ")),
        None => format!("{name} {}", inv.args.join(" ")),
    }
}

impl FakeSys {
    pub(crate) fn new(
        respond: impl Fn(&Invocation) -> Option<io::Result<Outcome>> + Send + Sync + 'static,
    ) -> Self {
        let netns = HashMap::from([(PathBuf::from(NETNS), NetnsId { dev: 4, ino: 77 })]);
        FakeSys {
            calls: Mutex::default(),
            netns: Mutex::new(netns),
            chains: Mutex::default(),
            postrouting: Mutex::default(),
            respond: Box::new(respond),
        }
    }

    pub(crate) fn plain() -> Self {
        FakeSys::new(|_| None)
    }

    pub(crate) fn kinds(&self) -> Vec<String> {
        self.calls.lock().unwrap().iter().map(kind).collect()
    }

    pub(crate) fn call(&self, kind_prefix: &str) -> Invocation {
        let calls = self.calls.lock().unwrap();
        let found = calls.iter().find(|i| kind(i).starts_with(kind_prefix));
        found.unwrap_or_else(|| panic!("no {kind_prefix}")).clone()
    }

    /// What the real plugins answer.
    pub(crate) fn behave(&self, inv: &Invocation) -> io::Result<Outcome> {
        let name = inv.program.file_name().unwrap().to_string_lossy();
        if name == "iptables-restore" {
            let rules = String::from_utf8_lossy(&inv.stdin).into_owned();
            let mut chains = self.chains.lock().unwrap();
            for chain in rules.lines().filter_map(|l| l.strip_prefix(':')) {
                let chain = chain.split(' ').next().unwrap().to_owned();
                if !chains.contains(&chain) {
                    chains.push(chain);
                }
            }
            return ok(b"");
        }
        if name == "iptables" {
            return self.iptables(&inv.args[3..]);
        }
        if inv.env_var("CNI_COMMAND") == Some("DEL") {
            return ok(b"");
        }
        let input = stdin(inv);
        match name.as_ref() {
            "bridge" => {
                let address = input["runtimeConfig"]["ips"][0]
                    .as_str()
                    .unwrap()
                    .to_owned();
                let result = json!({
                    "cniVersion": "1.0.0",
                    "interfaces": [
                        {"name": input["bridge"], "mac": "aa:00:00:00:00:01"},
                        {"name": "veth1234", "mac": "aa:00:00:00:00:02"},
                        {"name": "eth0", "mac": "aa:00:00:00:00:03", "sandbox": inv.env_var("CNI_NETNS")}
                    ],
                    "ips": [{"interface": 2, "address": address, "gateway": "172.19.0.1"}],
                    "routes": [{"dst": "0.0.0.0/0"}]
                });
                ok(&serde_json::to_vec(&result).unwrap())
            }
            _ => ok(&serde_json::to_vec(&input["prevResult"]).unwrap()),
        }
    }
}

impl FakeSys {
    /// `iptables -w -t nat <args>` on the modelled table.
    fn iptables(&self, args: &[String]) -> io::Result<Outcome> {
        let mut chains = self.chains.lock().unwrap();
        let mut postrouting = self.postrouting.lock().unwrap();
        let no_chain = || failed("", "iptables: No chain/target/match by that name.");
        let rest = || args[2..].join(" ");
        match (args[0].as_str(), args[1].as_str()) {
            ("-S", "POSTROUTING") => {
                let mut listing = "-P POSTROUTING ACCEPT\n".to_owned();
                for rule in postrouting.iter() {
                    listing += &format!("-A POSTROUTING {rule}\n");
                }
                ok(listing.as_bytes())
            }
            ("-A", "POSTROUTING") => {
                postrouting.push(rest());
                ok(b"")
            }
            ("-D", "POSTROUTING") => match postrouting.iter().position(|r| *r == rest()) {
                Some(at) => {
                    postrouting.remove(at);
                    ok(b"")
                }
                None => failed(
                    "",
                    "iptables: Bad rule (does a matching rule exist in that chain?).",
                ),
            },
            ("-S" | "-F", chain) if chains.iter().any(|c| c == chain) => ok(b""),
            ("-X", chain) => match chains.iter().position(|c| c == chain) {
                Some(at) => {
                    chains.remove(at);
                    ok(b"")
                }
                None => no_chain(),
            },
            _ => no_chain(),
        }
    }
}

impl NetSys for FakeSys {
    fn run(&self, inv: &Invocation) -> io::Result<Outcome> {
        self.calls.lock().unwrap().push(inv.clone());
        (self.respond)(inv).unwrap_or_else(|| self.behave(inv))
    }

    fn netns_id(&self, path: &Path) -> Option<NetnsId> {
        self.netns.lock().unwrap().get(path).copied()
    }
}

pub(crate) const NETNS: &str = "/proc/4242/ns/net";
