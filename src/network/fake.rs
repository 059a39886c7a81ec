//! A recording stand-in for the CNI plugins and iptables, for the unit tests of the chaining,
//! caching and cleanup logic: it answers like the 1.1.1 plugins unless told otherwise.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{Invocation, NetSys, NetnsId, Outcome};

pub type Respond = Box<dyn Fn(&Invocation) -> Option<io::Result<Outcome>>>;

/// Records every run; answers like the real plugins unless `respond` says otherwise.
pub struct FakeSys {
    pub calls: RefCell<Vec<Invocation>>,
    pub netns: RefCell<HashMap<PathBuf, NetnsId>>,
    /// Chains `iptables -S` finds.
    pub chains: RefCell<Vec<String>>,
    /// `POSTROUTING` jumps `iptables -C` finds (by chain; one entry per copy); `-D` removes one.
    pub jumps: RefCell<Vec<String>>,
    respond: Respond,
}

pub fn ok(stdout: &[u8]) -> io::Result<Outcome> {
    Ok(Outcome {
        success: true,
        status: "exit status: 0".into(),
        stdout: stdout.to_vec(),
        stderr: Vec::new(),
    })
}

pub fn failed(stdout: &str, stderr: &str) -> io::Result<Outcome> {
    Ok(Outcome {
        success: false,
        status: "exit status: 1".into(),
        stdout: stdout.as_bytes().to_vec(),
        stderr: stderr.as_bytes().to_vec(),
    })
}

pub fn stdin(inv: &Invocation) -> Value {
    serde_json::from_slice(&inv.stdin).unwrap_or(Value::Null)
}

pub fn kind(inv: &Invocation) -> String {
    let name = inv.program.file_name().unwrap().to_string_lossy();
    match inv.env_var("CNI_COMMAND") {
        Some(command) => format!("{name} {command}"),
        None => format!("{name} {}", inv.args[3..].join(" ")),
    }
}

impl FakeSys {
    pub fn new(respond: impl Fn(&Invocation) -> Option<io::Result<Outcome>> + 'static) -> Self {
        let netns = HashMap::from([(PathBuf::from(NETNS), NetnsId { dev: 4, ino: 77 })]);
        FakeSys {
            calls: RefCell::default(),
            netns: RefCell::new(netns),
            chains: RefCell::default(),
            jumps: RefCell::default(),
            respond: Box::new(respond),
        }
    }

    pub fn plain() -> Self {
        FakeSys::new(|_| None)
    }

    pub fn kinds(&self) -> Vec<String> {
        self.calls.borrow().iter().map(kind).collect()
    }

    pub fn call(&self, kind_prefix: &str) -> Invocation {
        let calls = self.calls.borrow();
        let found = calls.iter().find(|i| kind(i).starts_with(kind_prefix));
        found.unwrap_or_else(|| panic!("no {kind_prefix}")).clone()
    }

    /// What the real plugins answer.
    pub fn behave(&self, inv: &Invocation) -> io::Result<Outcome> {
        let name = inv.program.file_name().unwrap().to_string_lossy();
        if name == "iptables" && matches!(inv.args[3].as_str(), "-C" | "-D") {
            let chain = &inv.args[8];
            let mut jumps = self.jumps.borrow_mut();
            let at = jumps.iter().position(|j| j == chain);
            return match (inv.args[3].as_str(), at) {
                ("-D", Some(at)) => {
                    jumps.remove(at);
                    ok(b"")
                }
                ("-C", Some(_)) => ok(b""),
                _ => failed("", "Bad rule (does a matching rule exist in that chain?)."),
            };
        }
        if name == "iptables" {
            let chain = inv.args[4].clone();
            let found = self.chains.borrow().contains(&chain);
            return if found || inv.args[3] != "-S" {
                ok(b"")
            } else {
                failed("", "No chain/target/match by that name.")
            };
        }
        if inv.env_var("CNI_COMMAND") == Some("DEL") {
            return ok(b"");
        }
        let input = stdin(inv);
        match name.as_ref() {
            "loopback" => {
                ok(br#"{"cniVersion":"1.0.0","interfaces":[{"name":"lo","sandbox":"x"}]}"#)
            }
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

impl NetSys for FakeSys {
    fn run(&self, inv: &Invocation) -> io::Result<Outcome> {
        self.calls.borrow_mut().push(inv.clone());
        (self.respond)(inv).unwrap_or_else(|| self.behave(inv))
    }

    fn netns_id(&self, path: &Path) -> Option<NetnsId> {
        self.netns.borrow().get(path).copied()
    }
}

pub const NETNS: &str = "/proc/4242/ns/net";
