//! The bridge plugin's masquerade rules, removed when the plugin itself cannot.
//!
//! Owns: the name and comment the bridge plugin (1.1.1, `ipMasq`) gives its `nat` chain for one
//! container (`CNI-` + the first 24 hex digits of sha512(network + container ID); comment
//! `name: "<network>" id: "<id>"`), and the sweep that deletes the `POSTROUTING` jump and the
//! chain when they are still there. The plugin's DEL only tears them down from the addresses it
//! finds on the interface inside the namespace: after a crash the namespace is gone and they
//! would leak (one set per restart). It never touches another container's rules.

use std::net::Ipv4Addr;

use sha2::{Digest as _, Sha512};

use super::plan::PLUGIN_PATH;
use super::sys::{Invocation, NetSys, Outcome};
use super::NetworkError;

/// The chain the bridge plugin creates for `container_id` on `network`.
pub fn chain_name(network: &str, container_id: &str) -> String {
    let digest = Sha512::digest(format!("{network}{container_id}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("CNI-{}", &hex[..24])
}

/// The comment on each of those rules (Go's `%q`; names are plain CNI identifiers).
pub fn comment(network: &str, container_id: &str) -> String {
    format!("name: {network:?} id: {container_id:?}")
}

fn iptables(sys: &dyn NetSys, args: &[&str]) -> Result<Outcome, NetworkError> {
    let mut all = vec!["-w", "-t", "nat"];
    all.extend_from_slice(args);
    let invocation = Invocation {
        program: "iptables".into(),
        args: all.iter().map(|a| (*a).to_owned()).collect(),
        env: vec![("PATH".into(), PLUGIN_PATH.into())],
        stdin: Vec::new(),
    };
    sys.run(&invocation)
        .map_err(|source| NetworkError::IptablesSpawn {
            args: all.join(" "),
            source,
        })
}

fn must(outcome: Outcome, args: &[&str]) -> Result<(), NetworkError> {
    if outcome.success {
        return Ok(());
    }
    Err(NetworkError::Iptables {
        args: format!("-w -t nat {}", args.join(" ")),
        status: outcome.status,
        output: String::from_utf8_lossy(&outcome.stderr).trim().to_owned(),
    })
}

/// Deletes the masquerade jump and chain of `container_id` if they exist. True when there was
/// something to delete.
pub fn sweep(
    sys: &dyn NetSys,
    network: &str,
    container_id: &str,
    address: Ipv4Addr,
) -> Result<bool, NetworkError> {
    let chain = chain_name(network, container_id);
    if !iptables(sys, &["-S", &chain])?.success {
        // No chain: no jump to it can exist either.
        return Ok(false);
    }
    let comment = comment(network, container_id);
    let source = address.to_string();
    let jump = [
        "POSTROUTING",
        "-s",
        &source,
        "-j",
        &chain,
        "-m",
        "comment",
        "--comment",
        &comment,
    ];
    // Every copy of the jump (a crash between the plugin's own steps can leave two).
    let check: Vec<&str> = [&["-C"][..], &jump[..]].concat();
    let delete: Vec<&str> = [&["-D"][..], &jump[..]].concat();
    for _ in 0..8 {
        if !iptables(sys, &check)?.success {
            break;
        }
        must(iptables(sys, &delete)?, &delete)?;
    }
    let flush = ["-F", chain.as_str()];
    must(iptables(sys, &flush)?, &flush)?;
    // iptables-nft can still see the chain referenced for a moment after its jump went
    // (EBUSY, seen once in five runs here): retry briefly before giving up.
    let remove = ["-X", chain.as_str()];
    let mut attempt = 0;
    loop {
        let outcome = iptables(sys, &remove)?;
        if outcome.success || attempt == 4 {
            return must(outcome, &remove).map(|()| true);
        }
        attempt += 1;
        std::thread::sleep(std::time::Duration::from_millis(50 << attempt));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_and_comment_match_the_bridge_plugin() {
        // Seen on this machine: bridge 1.1.1, network "exptest", container "exp1".
        assert_eq!(
            chain_name("exptest", "exp1"),
            "CNI-e720c96b0b88571c5d265c65"
        );
        assert_eq!(comment("exptest", "exp1"), r#"name: "exptest" id: "exp1""#);
    }
}
