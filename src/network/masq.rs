//! envbox's own masquerade of the workspace subnet: what leaves the bridge for elsewhere goes
//! out with the outer address.
//!
//! Owns: one `nat` chain per network ([`chain_name`]: `ENVBOX-MASQ` for the real one) holding
//! what the bridge plugin's `ipMasq` would add (accept traffic within the subnet, masquerade
//! the rest but multicast), and the one `POSTROUTING` jump to it (`-s <subnet>`). The bridge
//! plugin runs with `ipMasq` off: its eight iptables runs sat on the start's critical path,
//! while [`install`] runs beside the plugins' ADD. Install is idempotent and repairs what a
//! killed run or another subnet left (the chain is rewritten atomically by `iptables-restore
//! --noflush`, other jumps to it removed); [`remove`] takes jump and chain away. It never
//! touches a rule that does not jump to its chain.

use sha2::{Digest as _, Sha256};

use super::plan::PLUGIN_PATH;
use super::sys::{Invocation, NetSys, Outcome};
use super::NetworkError;

/// iptables' longest chain name.
const MAX_CHAIN: usize = 28;

/// The chain of `network`: `<NETWORK>-MASQ` upper-cased (`ENVBOX-MASQ`), or a digest of the
/// name when that would be too long for iptables.
pub(crate) fn chain_name(network: &str) -> String {
    let plain = format!("{}-MASQ", network.to_ascii_uppercase());
    if plain.len() <= MAX_CHAIN {
        return plain;
    }
    let digest = Sha256::digest(network.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02X}")).collect();
    format!("ENVBOX-MASQ-{hex}")
}

/// The `iptables-restore --noflush` input that (re)writes the chain: declaring it creates it
/// or flushes it, so a repeat never duplicates a rule.
pub(crate) fn chain_rules(chain: &str, subnet: &str) -> String {
    format!(
        "*nat\n:{chain} - [0:0]\n-A {chain} -d {subnet} -j ACCEPT\n-A {chain} ! -d 224.0.0.0/4 -j MASQUERADE\nCOMMIT\n"
    )
}

/// The jump, as `iptables -S` prints it after `-A`.
fn jump(chain: &str, subnet: &str) -> Vec<String> {
    ["POSTROUTING", "-s", subnet, "-j", chain]
        .map(str::to_owned)
        .to_vec()
}

fn run(
    sys: &dyn NetSys,
    program: &str,
    args: &[&str],
    stdin: &str,
) -> Result<Outcome, NetworkError> {
    let invocation = Invocation {
        program: program.into(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        env: vec![("PATH".into(), PLUGIN_PATH.into())],
        stdin: stdin.as_bytes().to_vec(),
    };
    sys.run(&invocation)
        .map_err(|source| NetworkError::IptablesSpawn {
            args: format!("{program} {}", args.join(" ")),
            source,
        })
}

fn iptables(sys: &dyn NetSys, args: &[&str]) -> Result<Outcome, NetworkError> {
    let all: Vec<&str> = ["-w", "-t", "nat"].iter().chain(args).copied().collect();
    run(sys, "iptables", &all, "")
}

/// `outcome` as a result: a failure names `what` ran (the command line).
fn must(outcome: Outcome, what: &str) -> Result<Outcome, NetworkError> {
    if outcome.success {
        return Ok(outcome);
    }
    Err(NetworkError::Iptables {
        args: what.to_owned(),
        status: outcome.status,
        output: String::from_utf8_lossy(&outcome.stderr).trim().to_owned(),
    })
}

/// `iptables -w -t nat <args>` that must succeed.
fn iptables_ok(sys: &dyn NetSys, args: &[&str]) -> Result<Outcome, NetworkError> {
    must(
        iptables(sys, args)?,
        &format!("iptables -w -t nat {}", args.join(" ")),
    )
}

/// `iptables -w -t nat <op> <rule>`, which must succeed.
fn change_rule(sys: &dyn NetSys, op: &str, rule: &[String]) -> Result<(), NetworkError> {
    let args: Vec<&str> = std::iter::once(op)
        .chain(rule.iter().map(String::as_str))
        .collect();
    iptables_ok(sys, &args).map(drop)
}

/// Every `POSTROUTING` rule that jumps to `chain`, as `iptables -S` prints it (without `-A`).
fn jumps_to(sys: &dyn NetSys, chain: &str) -> Result<Vec<Vec<String>>, NetworkError> {
    let listing = iptables_ok(sys, &["-S", "POSTROUTING"])?.stdout;
    Ok(String::from_utf8_lossy(&listing)
        .lines()
        .filter_map(|line| line.strip_prefix("-A "))
        .map(|rule| {
            rule.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|words| words.ends_with(&["-j".to_owned(), chain.to_owned()]))
        .collect())
}

/// Installs (or repairs) the masquerade of `subnet` (canonical `a.b.c.d/p`) for `network`.
pub(crate) fn install(sys: &dyn NetSys, network: &str, subnet: &str) -> Result<(), NetworkError> {
    let chain = chain_name(network);
    let outcome = run(
        sys,
        "iptables-restore",
        &["-w", "--noflush"],
        &chain_rules(&chain, subnet),
    )?;
    must(
        outcome,
        &format!("iptables-restore -w --noflush (chain {chain})"),
    )?;
    let wanted = jump(&chain, subnet);
    let mut present = false;
    for rule in jumps_to(sys, &chain)? {
        if rule == wanted && !present {
            present = true;
        } else {
            change_rule(sys, "-D", &rule)?;
        }
    }
    if present {
        return Ok(());
    }
    change_rule(sys, "-A", &wanted)
}

/// Removes the jumps to `network`'s chain and the chain. True when there was something.
pub(crate) fn remove(sys: &dyn NetSys, network: &str) -> Result<bool, NetworkError> {
    let chain = chain_name(network);
    let jumps = jumps_to(sys, &chain)?;
    for rule in &jumps {
        change_rule(sys, "-D", rule)?;
    }
    if !iptables(sys, &["-S", &chain])?.success {
        return Ok(!jumps.is_empty());
    }
    iptables_ok(sys, &["-F", &chain])?;
    // iptables-nft can still see the chain referenced for a moment after its jump went
    // (EBUSY, seen once in five runs here): retry briefly before giving up.
    let mut attempt = 0;
    loop {
        let outcome = iptables(sys, &["-X", &chain])?;
        if outcome.success || attempt == 4 {
            return must(outcome, &format!("iptables -w -t nat -X {chain}")).map(|_| true);
        }
        attempt += 1;
        std::thread::sleep(std::time::Duration::from_millis(50 << attempt));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_fit_iptables() {
        assert_eq!(chain_name("envbox"), "ENVBOX-MASQ");
        assert_eq!(chain_name("envbox-it42-a"), "ENVBOX-IT42-A-MASQ");
        let long = chain_name("a-network-name-far-too-long-for-iptables");
        assert!(
            long.starts_with("ENVBOX-MASQ-") && long.len() <= MAX_CHAIN,
            "{long}"
        );
        assert_ne!(long, chain_name("a-network-name-far-too-long-for-iptablez"));
    }

    #[test]
    fn the_chain_accepts_the_subnet_and_masquerades_the_rest_but_multicast() {
        assert_eq!(
            chain_rules("ENVBOX-MASQ", "172.19.0.0/30"),
            "*nat\n:ENVBOX-MASQ - [0:0]\n\
             -A ENVBOX-MASQ -d 172.19.0.0/30 -j ACCEPT\n\
             -A ENVBOX-MASQ ! -d 224.0.0.0/4 -j MASQUERADE\nCOMMIT\n"
        );
    }
}
