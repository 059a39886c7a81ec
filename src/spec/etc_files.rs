//! `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` of the inner container.
//!
//! Owns: their contents (containerd writes none of them) and the actions that write them under
//! the run dir, from where they are bind-mounted. `host.docker.internal` is the bridge gateway.
//! The outer resolv.conf is copied without loopback nameservers (unreachable from the inner
//! network namespace); with none left, public resolvers are used, as Docker does, and said so.
//! It never writes anything itself.

use std::path::PathBuf;

use super::{RunDirLayout, ID_SHIFT};
use crate::config::Settings;
use crate::host::HostFacts;
use crate::setup::Action;

/// The three files: where they are written, where they go inside.
pub(crate) struct EtcFiles {
    /// `(source under the run dir, destination inside)`, in mount order.
    pub binds: Vec<(PathBuf, PathBuf)>,
    pub actions: Vec<Action>,
    pub warnings: Vec<String>,
}

const FALLBACK_NAMESERVERS: &str = "nameserver 8.8.8.8\nnameserver 8.8.4.4\n";

pub(crate) fn hosts(settings: &Settings) -> String {
    let bridge = &settings.bridge;
    format!(
        "127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         ff00::0\tip6-mcastprefix\n\
         ff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n\
         {}\t{}\n\
         {}\thost.docker.internal\n",
        bridge.first_lease(),
        settings.hostname,
        bridge.gateway
    )
}

fn is_loopback_nameserver(line: &str) -> bool {
    let mut words = line.split_whitespace();
    words.next() == Some("nameserver")
        && words
            .next()
            .and_then(|addr| addr.split('%').next()?.parse::<std::net::IpAddr>().ok())
            .is_some_and(|ip| ip.is_loopback())
}

/// The inner resolv.conf from the outer one, and a warning when it had to fall back.
pub(crate) fn resolv_conf(outer: Option<&str>) -> (String, Option<String>) {
    let Some(outer) = outer else {
        return (
            FALLBACK_NAMESERVERS.to_owned(),
            Some(
                "the outer /etc/resolv.conf is unreadable: the workspace uses 8.8.8.8 and 8.8.4.4"
                    .into(),
            ),
        );
    };
    let kept: Vec<&str> = outer
        .lines()
        .filter(|l| !is_loopback_nameserver(l))
        .collect();
    let mut text = kept.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    if kept
        .iter()
        .any(|l| l.split_whitespace().next() == Some("nameserver"))
    {
        return (text, None);
    }
    text.push_str(FALLBACK_NAMESERVERS);
    (
        text,
        Some("the outer /etc/resolv.conf has no nameserver reachable from the workspace: it uses 8.8.8.8 and 8.8.4.4".into()),
    )
}

pub(crate) fn plan(settings: &Settings, host: &HostFacts, layout: &RunDirLayout) -> EtcFiles {
    let (resolv, warning) = resolv_conf(host.resolv_conf.as_deref());
    let files = [
        ("hosts", hosts(settings)),
        ("hostname", format!("{}\n", settings.hostname)),
        ("resolv.conf", resolv),
    ];
    let mut binds = Vec::new();
    let mut actions = Vec::new();
    for (name, contents) in files {
        let source = layout.etc.join(name);
        actions.push(Action::WriteFile {
            path: source.clone(),
            contents,
            mode: 0o644,
            uid: ID_SHIFT,
            gid: ID_SHIFT,
        });
        binds.push((source, PathBuf::from("/etc").join(name)));
    }
    EtcFiles {
        binds,
        actions,
        warnings: warning.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_nameservers_are_dropped_and_the_rest_kept() {
        let outer = "search ns.svc.cluster.local svc.cluster.local\nnameserver 127.0.0.53\nnameserver 10.96.0.10\nnameserver ::1\noptions ndots:5\n";
        let (text, warning) = resolv_conf(Some(outer));
        assert_eq!(text, "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n");
        assert_eq!(warning, None);
    }

    #[test]
    fn only_loopback_or_unreadable_falls_back_with_a_warning() {
        let (text, warning) = resolv_conf(Some("nameserver 127.0.0.11\noptions ndots:0\n"));
        assert_eq!(
            text,
            "options ndots:0\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n"
        );
        assert!(warning.unwrap().contains("8.8.8.8"));
        let (text, warning) = resolv_conf(None);
        assert_eq!(text, FALLBACK_NAMESERVERS);
        assert!(warning.is_some());
    }
}
