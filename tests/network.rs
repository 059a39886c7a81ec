//! Integration test (root): the workspace network through the real CNI plugins
//! (containernetworking-plugins: bridge, host-local, portmap) and real iptables, on a
//! process in a fresh network namespace (`unshare --net sleep`).
//!
//! Every test has its own network name, bridge, /30 and run dir (keyed on the test and this
//! process's pid), so tests running beside each other, or beside other checkouts' tests, never
//! share a lease, a bridge or an iptables chain. Without root or the tools it fails when `CI` is
//! set and says it skipped otherwise.

use std::io::BufRead;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use envbox::config::{Purpose, RawSettings, Settings};
use envbox::network::{LinkMtu, Network, NetworkError, NetworkPlan};

mod support;

use support::host::{network_requirements_met, BUSYBOX, CNI_PATH};

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn stdout(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A process in a new network namespace, killed on drop.
struct Netns {
    child: Child,
}

impl Netns {
    fn new() -> Netns {
        let child = Command::new("unshare")
            .args(["--net", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare");
        let netns = Netns { child };
        // unshare execs sleep once the namespace is made: wait until the path names another one.
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_link(netns.path()).ok().as_ref() == Some(&ours)
            || std::fs::read_link(netns.path()).is_err()
        {
            assert!(Instant::now() < deadline, "unshare --net did not happen");
            std::thread::sleep(Duration::from_millis(10));
        }
        netns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.child.id()))
    }

    /// A command run inside the namespace.
    fn inside(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .args(args);
        cmd
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One test's network: names, subnet and run dir of its own; the bridge is deleted on drop
/// (the bridge plugin never deletes it).
struct TestNet {
    plan: NetworkPlan,
    _run_dir: tempfile::TempDir,
}

impl TestNet {
    /// `tag` (0..=9) tells the tests of this file apart; the pid tells processes apart.
    fn new(tag: u32, mtu: u32) -> TestNet {
        let pid = std::process::id();
        let cidr = format!(
            "10.{}.{}.{}/30",
            200 + tag,
            (pid / 64) % 256,
            (pid % 64) * 4 + 1
        );
        let run_dir = tempfile::tempdir().unwrap();
        let raw = RawSettings {
            image: Some("busybox".into()),
            username: Some("root".into()),
            bridge_cidr: Some(cidr),
            run_dir: Some(run_dir.path().to_str().unwrap().into()),
            cni_path: Some(CNI_PATH.into()),
            ..Default::default()
        };
        let settings = Settings::from_raw(&raw, None, Purpose::Docker).unwrap();
        let link = LinkMtu::Read {
            link: "test".into(),
            mtu,
        };
        let plan = NetworkPlan::new(&settings, &format!("it{pid}-{tag}"), &link)
            .unwrap()
            .with_names(&format!("envbox-it{pid}-{tag}"), &format!("ebt{pid}{tag}"))
            .unwrap();
        TestNet {
            plan,
            _run_dir: run_dir,
        }
    }

    fn network(&self) -> Network {
        Network::new(self.plan.clone())
    }

    /// The lines of `iptables -t nat -S` that belong to this network: its masquerade chain,
    /// the chain's rules and the jumps to it.
    fn nat_rules(&self) -> Vec<String> {
        let all = stdout(Command::new("iptables").args(["-w", "-t", "nat", "-S"]));
        let chain = self.plan.masquerade_chain();
        all.lines()
            .filter(|l| {
                *l == format!("-N {chain}")
                    || l.starts_with(&format!("-A {chain} "))
                    || (l.starts_with("-A POSTROUTING ") && l.ends_with(&format!(" -j {chain}")))
            })
            .map(str::to_owned)
            .collect()
    }

    fn chain_exists(&self, chain: &str) -> bool {
        run(Command::new("iptables").args(["-w", "-t", "nat", "-S", chain]))
            .status
            .success()
    }

    fn lease(&self) -> PathBuf {
        self.plan
            .ipam_dir()
            .join(&self.plan.name)
            .join(self.plan.address.to_string())
    }

    fn bridge_ports(&self) -> String {
        stdout(Command::new("ip").args(["-o", "link", "show", "master", &self.plan.bridge]))
    }
}

impl Drop for TestNet {
    /// Also removes what a failed test may have left in iptables.
    fn drop(&mut self) {
        let rules = self.nat_rules();
        for rule in &rules {
            if let Some(rest) = rule.strip_prefix("-A POSTROUTING ") {
                let delete = format!("iptables -w -t nat -D POSTROUTING {rest}");
                let _ = Command::new("sh").args(["-c", &delete]).output();
            }
        }
        for rule in &rules {
            if let Some(chain) = rule.strip_prefix("-N ") {
                for op in ["-F", "-X"] {
                    let _ = Command::new("iptables")
                        .args(["-w", "-t", "nat", op, chain])
                        .output();
                }
            }
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.plan.bridge])
            .output();
    }
}

/// Connects from inside `netns` to a server on `ip` outside; returns the address the server
/// saw the connection come from.
fn connect_from_inside(netns: &Netns, ip: Ipv4Addr) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).expect("listen on the gateway address");
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (stream, peer) = listener.accept().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stream)
            .read_line(&mut line)
            .unwrap();
        tx.send((peer, line)).unwrap();
    });
    let script = format!("echo hello-from-inside | {BUSYBOX} nc {ip} {port}");
    let out = run(Command::new("timeout").args([
        "20",
        "nsenter",
        &format!("--net={}", netns.path().display()),
        BUSYBOX,
        "sh",
        "-c",
        &script,
    ]));
    let (peer, line) = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| {
            panic!(
                "nothing reached {ip}:{port} from inside: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert_eq!(line.trim(), "hello-from-inside");
    peer
}

fn inside(netns: &Netns, args: &[&str]) -> String {
    stdout(&mut netns.inside(args))
}

#[test]
fn add_gives_the_workspace_its_address_mtu_route_and_the_gateway_then_del_leaves_nothing() {
    if !network_requirements_met("add_gives_the_workspace_its_address_mtu_route_and_the_gateway") {
        return;
    }
    let net = TestNet::new(0, 1280);
    let network = net.network();
    let netns = Netns::new();
    let before = net.nat_rules();
    assert_eq!(before, Vec::<String>::new(), "a fresh network has no rules");

    let attachment = network.add(&netns.path()).unwrap();
    assert_eq!(attachment.address, net.plan.address);
    assert_eq!(attachment.gateway, net.plan.gateway());
    assert_eq!(
        (attachment.interface.as_str(), attachment.prefix),
        ("eth0", 30)
    );
    assert_eq!(attachment.mtu, 1280);

    let addr = inside(&netns, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    let expected = format!("inet {}/30 ", net.plan.address);
    assert!(addr.contains(&expected), "{addr}");
    let link = inside(&netns, &["ip", "-o", "link", "show", "dev", "eth0"]);
    assert!(link.contains(" mtu 1280 ") && link.contains("UP"), "{link}");
    let route = inside(&netns, &["ip", "-4", "route", "show", "default"]);
    let expected = format!("default via {} dev eth0", net.plan.gateway());
    assert!(route.contains(&expected), "{route}");
    let host_veth = attachment.host_veth.clone().expect("a host veth");
    assert!(
        net.bridge_ports().contains(&host_veth),
        "{}",
        net.bridge_ports()
    );

    let peer = connect_from_inside(&netns, net.plan.gateway());
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(net.plan.address),
        "not masqueraded on the bridge"
    );

    let rules = net.nat_rules();
    assert!(
        rules.iter().any(|r| r.contains("MASQUERADE"))
            && rules.iter().any(|r| r.starts_with("-A POSTROUTING")),
        "ADD installs the masquerade: {rules:#?}"
    );
    assert!(net.lease().exists());

    network.del(&attachment).unwrap();
    assert_eq!(
        net.nat_rules(),
        before,
        "DEL leaves no iptables rule behind"
    );
    assert_eq!(net.bridge_ports().trim(), "", "the veth is gone");
    let links = inside(&netns, &["ip", "-o", "link"]);
    assert!(!links.contains("eth0"), "{links}");
    assert!(!net.lease().exists(), "the lease is released");
    assert!(!net.plan.cache_path().exists(), "nothing cached");
    assert_eq!(network.cleanup_stale().unwrap(), None);
}

#[test]
fn a_killed_envbox_is_cleaned_up_and_the_only_lease_of_a_slash_30_can_be_taken_again() {
    if !network_requirements_met("a_killed_envbox_is_cleaned_up") {
        return;
    }
    let net = TestNet::new(1, 1400);
    let mut first_ns = Netns::new();
    let first = net.network().add(&first_ns.path()).unwrap();
    // Killed: neither DEL nor anything else; then the workspace's namespace goes too.
    first_ns.kill();
    let chains: Vec<String> = net
        .nat_rules()
        .iter()
        .filter_map(|l| l.strip_prefix("-N ").map(str::to_owned))
        .collect();
    assert_eq!(chains.len(), 1, "{:#?}", net.nat_rules());
    assert!(net.lease().exists(), "the crash leaves the lease");

    let restarted = net.network();
    let second_ns = Netns::new();
    let refused = restarted.add(&second_ns.path()).unwrap_err();
    assert!(
        matches!(refused, NetworkError::StaleAttachment { .. }),
        "{refused}"
    );

    let cleaned = restarted
        .cleanup_stale()
        .unwrap()
        .expect("a stale attachment");
    assert!(
        !cleaned.netns_existed && cleaned.add_finished,
        "{cleaned:?}"
    );
    assert!(!net.lease().exists(), "the lease is released");
    assert!(
        !net.chain_exists(&chains[0]),
        "the masquerade chain of the dead namespace is gone"
    );
    assert_eq!(net.nat_rules(), Vec::<String>::new());

    let second = restarted.add(&second_ns.path()).unwrap();
    assert_eq!(second.address, first.address, "the /30's one lease again");
    connect_from_inside(&second_ns, net.plan.gateway());
    restarted.del(&second).unwrap();
    assert_eq!(net.nat_rules(), Vec::<String>::new());
}

#[test]
fn cleanup_stale_with_the_namespace_still_there_removes_its_interface() {
    if !network_requirements_met("cleanup_stale_with_the_namespace_still_there") {
        return;
    }
    let net = TestNet::new(2, 1400);
    let netns = Netns::new();
    net.network().add(&netns.path()).unwrap();
    assert!(inside(&netns, &["ip", "-o", "link"]).contains("eth0"));

    let cleaned = net.network().cleanup_stale().unwrap().unwrap();
    assert!(cleaned.netns_existed, "{cleaned:?}");
    assert!(!inside(&netns, &["ip", "-o", "link"]).contains("eth0"));
    assert_eq!(net.bridge_ports().trim(), "");
    assert!(!net.lease().exists());
    assert_eq!(net.nat_rules(), Vec::<String>::new());
}

#[test]
fn a_missing_namespace_is_refused_before_any_plugin_runs() {
    if !network_requirements_met("a_missing_namespace_is_refused") {
        return;
    }
    let net = TestNet::new(3, 1400);
    let err = net
        .network()
        .add(Path::new("/proc/0/ns/net"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/proc/0/ns/net"), "{err}");
    assert!(!net.plan.cache_path().exists());
}

/// A veth pair from the host into another namespace: a network "elsewhere" that only the host
/// can route to. The host end is deleted on drop (which takes the pair).
struct Elsewhere {
    ns: Netns,
    host_end: String,
    host_ip: Ipv4Addr,
    far_ip: Ipv4Addr,
}

impl Elsewhere {
    fn new() -> Elsewhere {
        let pid = std::process::id();
        let base = Ipv4Addr::new(10, 210, ((pid / 64) % 256) as u8, ((pid % 64) * 4) as u8);
        let host_ip = Ipv4Addr::from(u32::from(base) + 1);
        let far_ip = Ipv4Addr::from(u32::from(base) + 2);
        let ns = Netns::new();
        let (host_end, far_end) = (format!("eoh{pid}"), format!("eof{pid}"));
        let ns_pid = ns.child.id().to_string();
        stdout(Command::new("ip").args([
            "link", "add", &host_end, "type", "veth", "peer", "name", &far_end,
        ]));
        let elsewhere = Elsewhere {
            ns,
            host_end,
            host_ip,
            far_ip,
        };
        stdout(Command::new("ip").args(["link", "set", &far_end, "netns", &ns_pid]));
        stdout(Command::new("ip").args([
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &elsewhere.host_end,
        ]));
        stdout(Command::new("ip").args(["link", "set", &elsewhere.host_end, "up"]));
        for args in [
            vec![
                "ip",
                "addr",
                "add",
                &format!("{far_ip}/30"),
                "dev",
                &far_end,
            ],
            vec!["ip", "link", "set", &far_end, "up"],
            vec!["ip", "link", "set", "lo", "up"],
        ] {
            stdout(&mut elsewhere.ns.inside(&args));
        }
        elsewhere
    }

    /// Listens on the far address inside; returns the port and the peer of the first
    /// connection (with the line it sent).
    fn listen(&self) -> (u16, mpsc::Receiver<(SocketAddr, String)>) {
        let netns = std::fs::File::open(self.ns.path()).expect("open the namespace");
        let far_ip = self.far_ip;
        let (port_tx, port_rx) = mpsc::channel();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // This thread only: the test's other threads stay in the host namespace.
            use std::os::fd::AsRawFd;
            // SAFETY: setns only reads the descriptor, which stays open for the call.
            let entered = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
            let listener = TcpListener::bind((far_ip, 0)).expect("listen elsewhere");
            port_tx.send(listener.local_addr().unwrap().port()).unwrap();
            let (stream, peer) = listener.accept().unwrap();
            let mut line = String::new();
            std::io::BufReader::new(stream)
                .read_line(&mut line)
                .unwrap();
            tx.send((peer, line)).unwrap();
        });
        (port_rx.recv().expect("listening"), rx)
    }
}

impl Drop for Elsewhere {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_end])
            .output();
    }
}

#[test]
fn traffic_leaving_for_elsewhere_is_masqueraded_and_stops_being_so_after_del() {
    if !network_requirements_met("traffic_leaving_for_elsewhere_is_masqueraded") {
        return;
    }
    let net = TestNet::new(4, 1400);
    let network = net.network();
    let workspace = Netns::new();
    let elsewhere = Elsewhere::new();
    let attachment = network.add(&workspace.path()).unwrap();

    let (port, seen) = elsewhere.listen();
    let script = format!(
        "echo hello-elsewhere | {BUSYBOX} nc {} {port}",
        elsewhere.far_ip
    );
    let out = run(&mut workspace.inside(&["timeout", "20", BUSYBOX, "sh", "-c", &script]));
    let (peer, line) = seen
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| {
            panic!(
                "nothing reached {}:{port} from the workspace: {}{}\n{:#?}",
                elsewhere.far_ip,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                net.nat_rules()
            )
        });
    assert_eq!(line.trim(), "hello-elsewhere");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(elsewhere.host_ip),
        "the workspace's address ({}) is masqueraded behind the host's",
        net.plan.address
    );

    network.del(&attachment).unwrap();
    assert_eq!(
        net.nat_rules(),
        Vec::<String>::new(),
        "DEL removes the masquerade"
    );
}
