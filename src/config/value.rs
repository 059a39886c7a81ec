//! Parsers for the text forms settings take: booleans, Kubernetes quantities, CIDRs, mount
//! lists, variable-name patterns, hostnames.
//!
//! Owns: turning one string into one typed value, or a [`Problem`] that says what was expected.
//! It knows nothing about which setting a string came from (the caller adds that) and never
//! reads the environment or the filesystem.

use std::net::Ipv4Addr;
use std::path::{Component, Path, PathBuf};

/// Why a value was refused: what the setting expects, and optionally what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem(pub String);

impl Problem {
    fn new(text: impl Into<String>) -> Self {
        Problem(text.into())
    }
}

type Parsed<T> = Result<T, Problem>;

/// A duration: whole seconds (`90`), or a number with `s`, `m`, `h` or `d` (`30s`, `2m`, `7d`).
pub(crate) fn parse_duration(text: &str) -> Parsed<std::time::Duration> {
    let expected = || Problem::new("expected seconds, or a number with s, m, h or d (30s, 2m, 7d)");
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let number: u64 = number.parse().map_err(|_| expected())?;
    let seconds = match unit {
        "s" => Some(number),
        "m" => number.checked_mul(60),
        "h" => number.checked_mul(3600),
        "d" => number.checked_mul(86400),
        _ => None,
    }
    .ok_or_else(expected)?;
    Ok(std::time::Duration::from_secs(seconds))
}

/// A count: a whole number, 0 or more.
pub(crate) fn parse_count(text: &str) -> Parsed<usize> {
    match text.parse::<u32>() {
        Ok(n) if text.bytes().all(|b| b.is_ascii_digit()) => Ok(n as usize),
        _ => Err(Problem::new(
            "expected a whole number, 0 or more (how many earlier images to keep, e.g. 1)",
        )),
    }
}

/// Go's `strconv.ParseBool` forms, which existing templates use.
pub(crate) fn parse_bool(text: &str) -> Parsed<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(Problem::new(
            "expected a boolean: 1, t, T, TRUE, true, True, 0, f, F, FALSE, false or False",
        )),
    }
}

/// An exact non-negative rational number `num / den`, as a Kubernetes quantity denotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Quantity {
    num: u128,
    den: u128,
}

const QUANTITY_FORMS: &str = "a number or a Kubernetes quantity";

/// Parses `<decimal>[suffix]` where suffix is one of `n u m k M G T P E Ki Mi Gi Ti Pi Ei` or an
/// exponent `e<int>`/`E<int>`.
fn parse_quantity(text: &str) -> Parsed<Quantity> {
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 || number.len() > 24 {
        return Err(Problem::new(format!("expected {QUANTITY_FORMS}")));
    }
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    let digits: String = [int_part, frac_part].concat();
    let mut num: u128 = digits
        .parse()
        .map_err(|_| Problem::new(format!("expected {QUANTITY_FORMS}")))?;
    let mut den: u128 = 10u128.pow(frac_part.len() as u32);
    let (mul, div): (u128, u128) = match suffix {
        "" => (1, 1),
        "n" => (1, 1_000_000_000),
        "u" => (1, 1_000_000),
        "m" => (1, 1_000),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        exp if exp.starts_with(['e', 'E']) => {
            let power: i32 = exp[1..]
                .parse()
                .ok()
                .filter(|p: &i32| p.abs() <= 18)
                .ok_or_else(|| Problem::new(format!("expected {QUANTITY_FORMS}: bad exponent")))?;
            let factor = 10u128.pow(power.unsigned_abs());
            if power >= 0 {
                (factor, 1)
            } else {
                (1, factor)
            }
        }
        other => {
            return Err(Problem::new(format!(
            "expected {QUANTITY_FORMS}: unknown suffix {other:?} (use m, k, M, G, Ki, Mi, Gi, ...)"
        )))
        }
    };
    num = num
        .checked_mul(mul)
        .ok_or_else(|| Problem::new("value too large"))?;
    den = den
        .checked_mul(div)
        .ok_or_else(|| Problem::new("value too precise"))?;
    Ok(Quantity { num, den })
}

/// A CPU limit in thousandths of a CPU. `None` means no limit (`0`).
pub(crate) fn parse_cpus(text: &str) -> Parsed<Option<u64>> {
    let q = parse_quantity(text).map_err(|p| {
        Problem::new(format!(
            "{}; CPUs are written like 2, 1.5 or 1500m",
            p.0.trim_end_matches('.')
        ))
    })?;
    let scaled = q
        .num
        .checked_mul(1000)
        .ok_or_else(|| Problem::new("value too large"))?;
    if scaled % q.den != 0 {
        return Err(Problem::new(
            "CPUs can be given to a precision of 1m (0.001) at most",
        ));
    }
    let millis = scaled / q.den;
    match millis {
        0 => Ok(None),
        1..=9 => Err(Problem::new("the smallest CPU limit is 10m (0.01 CPU)")),
        m => u64::try_from(m)
            .map(Some)
            .map_err(|_| Problem::new("value too large")),
    }
}

/// Smallest memory limit a container can start with (Docker's minimum as well).
pub(crate) const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;

/// A memory limit in bytes, rounded up to a whole byte. `None` means no limit (`0`).
pub(crate) fn parse_memory(text: &str) -> Parsed<Option<u64>> {
    let q = parse_quantity(text).map_err(|p| {
        Problem::new(format!(
            "{}; memory is written in bytes or like 512Mi, 4Gi, 4G",
            p.0.trim_end_matches('.')
        ))
    })?;
    let bytes = q.num.div_ceil(q.den);
    match u64::try_from(bytes) {
        Ok(0) => Ok(None),
        Ok(b) if b < MIN_MEMORY_BYTES => Err(Problem::new("the smallest memory limit is 6Mi")),
        Ok(b) => Ok(Some(b)),
        Err(_) => Err(Problem::new("value too large")),
    }
}

/// A size in bytes (`ENVBOX_NODE_CACHE_SIZE`): bytes, or a Kubernetes quantity (`50Gi`, `20G`).
pub(crate) fn parse_size(text: &str) -> Parsed<u64> {
    let q = parse_quantity(text).map_err(|p| {
        Problem::new(format!(
            "{}; sizes are written in bytes or like 50Gi, 20G",
            p.0.trim_end_matches('.')
        ))
    })?;
    u64::try_from(q.num.div_ceil(q.den)).map_err(|_| Problem::new("value too large"))
}

/// The inner container's network, from a CIDR such as `172.19.0.1/30`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BridgeNet {
    /// The network address (host bits cleared): what CNI's host-local wants as `subnet`.
    pub network: Ipv4Addr,
    pub prefix: u8,
    /// The first address of the network: the outer side, `host.docker.internal`.
    pub gateway: Ipv4Addr,
}

impl BridgeNet {
    /// The address host-local leases first: the inner container's.
    pub(crate) fn first_lease(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 2)
    }
}

impl std::fmt::Display for BridgeNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Parses an IPv4 CIDR with room for a gateway and one container (prefix 30 or shorter).
pub(crate) fn parse_cidr(text: &str) -> Parsed<BridgeNet> {
    const FORM: &str = "expected an IPv4 CIDR such as 172.19.0.1/30";
    let (addr, prefix) = text.split_once('/').ok_or_else(|| Problem::new(FORM))?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| Problem::new(FORM))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| Problem::new(FORM))?;
    if !(8..=30).contains(&prefix) {
        return Err(Problem::new(
            "the prefix must be between /8 and /30: the network needs a gateway and one container address",
        ));
    }
    let mask = u32::MAX << (32 - prefix);
    let network = Ipv4Addr::from(u32::from(addr) & mask);
    Ok(BridgeNet {
        network,
        prefix,
        gateway: Ipv4Addr::from(u32::from(network) + 1),
    })
}

/// One `CODER_MOUNTS` item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserMount {
    pub source: PathBuf,
    pub destination: PathBuf,
    pub read_only: bool,
}

/// Parses `src:dst[:ro],src:dst[:ro]`. Options: `ro` or `rw` (the default).
pub(crate) fn parse_mounts(text: &str) -> Parsed<Vec<UserMount>> {
    text.split(',')
        .enumerate()
        .map(|(index, item)| {
            parse_mount_item(item.trim()).map_err(|p| {
                Problem::new(format!(
                    "item {} {item:?}: {}; expected src:dst or src:dst:ro, comma-separated",
                    index + 1,
                    p.0
                ))
            })
        })
        .collect()
}

fn parse_mount_item(item: &str) -> Parsed<UserMount> {
    let parts: Vec<&str> = item.split(':').collect();
    let (source, destination, read_only) = match parts.as_slice() {
        [src, dst] => (*src, *dst, false),
        [src, dst, "ro"] => (*src, *dst, true),
        [src, dst, "rw"] => (*src, *dst, false),
        [_, _, option] => {
            return Err(Problem::new(format!(
                "unknown option {option:?} (only ro or rw)"
            )))
        }
        _ => return Err(Problem::new("wrong number of ':'-separated fields")),
    };
    let source = absolute_clean(source).map_err(|p| Problem::new(format!("source {}", p.0)))?;
    let destination =
        absolute_clean(destination).map_err(|p| Problem::new(format!("destination {}", p.0)))?;
    if let Some(top) = ["/proc", "/sys", "/dev"]
        .iter()
        .find(|t| source.starts_with(t))
    {
        return Err(Problem::new(format!(
            "source under {top} is refused: it would hand the outer container's kernel interfaces to the workspace (use CODER_ADD_TUN, CODER_ADD_FUSE or CODER_ADD_GPU for devices)"
        )));
    }
    if destination == Path::new("/") {
        return Err(Problem::new("destination / would replace the whole image"));
    }
    if let Some(top) = ["/proc", "/sys", "/dev"]
        .iter()
        .find(|t| destination.starts_with(t))
    {
        return Err(Problem::new(format!(
            "destination under {top} is refused: the runtime owns it"
        )));
    }
    Ok(UserMount {
        source,
        destination,
        read_only,
    })
}

/// An absolute path with `.` components and repeated or trailing slashes removed; `..` refused.
pub(crate) fn absolute_clean(text: &str) -> Parsed<PathBuf> {
    if !text.starts_with('/') {
        return Err(Problem::new(format!("{text:?} is not an absolute path")));
    }
    let mut out = PathBuf::from("/");
    for component in Path::new(text).components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                return Err(Problem::new(format!("{text:?} contains '..'")));
            }
            Component::Prefix(_) => return Err(Problem::new(format!("{text:?} is not a path"))),
        }
    }
    Ok(out)
}

/// One `CODER_INNER_ENVS` item: an exact variable name, or a prefix when it ends in `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvPattern {
    Exact(String),
    Prefix(String),
}

impl EnvPattern {
    pub(crate) fn matches(&self, name: &str) -> bool {
        match self {
            EnvPattern::Exact(exact) => name == exact,
            EnvPattern::Prefix(prefix) => name.starts_with(prefix.as_str()),
        }
    }
}

/// Parses a comma list of names; `NAME*` is a prefix match. Blank items (`A,,B`, a trailing
/// comma) are refused, since they usually hide a typo.
pub(crate) fn parse_env_patterns(text: &str) -> Parsed<Vec<EnvPattern>> {
    text.split(',')
        .map(str::trim)
        .map(|item| {
            let (name, prefix) = match item.strip_suffix('*') {
                Some(stem) => (stem, true),
                None => (item, false),
            };
            let valid_name = name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if item.is_empty() || (!prefix && name.is_empty()) || !valid_name {
                return Err(Problem::new(format!(
                    "{item:?} is not a variable name: expected names like FOO or prefixes like KUBERNETES_*, comma-separated"
                )));
            }
            Ok(if prefix {
                EnvPattern::Prefix(name.to_owned())
            } else {
                EnvPattern::Exact(name.to_owned())
            })
        })
        .collect()
}

/// A hostname the kernel and resolvers accept: 1 to 64 bytes of letters, digits, `-`, `_` and
/// `.`, no empty label. (`_` is not RFC 1123 but the Go envbox's default used it, so existing
/// templates may too.)
pub(crate) fn parse_hostname(text: &str) -> Parsed<String> {
    let ok_chars = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if text.is_empty() || text.len() > 64 || !ok_chars || text.split('.').any(str::is_empty) {
        return Err(Problem::new(
            "expected a hostname: 1 to 64 letters, digits, '-', '_' or '.'",
        ));
    }
    Ok(text.to_owned())
}

/// A comma list of `host[:port]` names.
pub(crate) fn parse_hosts(text: &str) -> Parsed<Vec<String>> {
    text.split(',')
        .map(str::trim)
        .map(|host| {
            let valid = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
            if valid {
                Ok(host.to_ascii_lowercase())
            } else {
                Err(Problem::new(format!(
                    "{host:?} is not a registry host: expected host or host:port, comma-separated"
                )))
            }
        })
        .collect()
}

/// The inner `CODER_AGENT_SUBSYSTEM`: the outer comma list plus `envbox`, trimmed, without
/// blanks or duplicates, sorted.
pub(crate) fn agent_subsystem(outer: Option<&str>) -> String {
    let mut items: Vec<&str> = outer
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .chain(std::iter::once("envbox"))
        .collect();
    items.sort_unstable();
    items.dedup();
    items.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_seconds_or_a_unit() {
        use std::time::Duration;
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in [
            "",
            "s",
            "1.5s",
            "-1",
            "10ms",
            "2 m",
            "abc",
            "1w",
            "99999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_take_bytes_or_a_quantity() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("50Gi"), Ok(50 << 30));
        assert_eq!(parse_size("20G"), Ok(20_000_000_000));
        assert_eq!(parse_size("1.5Ki"), Ok(1536));
        for bad in ["", "Gi", "-1", "50 GiB", "1e99"] {
            let err = parse_size(bad).unwrap_err();
            assert!(
                err.0.contains("50Gi") || err.0.contains("too"),
                "{bad}: {}",
                err.0
            );
        }
    }

    #[test]
    fn booleans_take_go_forms_only() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_bool(t), Ok(true), "{t}");
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_bool(f), Ok(false), "{f}");
        }
        for bad in ["yes", "on", "tRUE", " true", "2", ""] {
            assert!(parse_bool(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cpus_accept_numbers_and_quantities() {
        assert_eq!(parse_cpus("2"), Ok(Some(2000)));
        assert_eq!(parse_cpus("1.5"), Ok(Some(1500)));
        assert_eq!(parse_cpus("1500m"), Ok(Some(1500)));
        assert_eq!(parse_cpus("0.25"), Ok(Some(250)));
        assert_eq!(parse_cpus("0"), Ok(None));
        assert_eq!(parse_cpus("0m"), Ok(None));
        assert_eq!(parse_cpus("1e1"), Ok(Some(10_000)));
    }

    #[test]
    fn cpus_reject_garbage_and_impossible_values() {
        for bad in [
            "", "two", "-1", "1.5.1", "2 cpus", "1500mm", "0.0001", "5m", "1x", ".", "1Gi5",
        ] {
            assert!(parse_cpus(bad).is_err(), "{bad:?}");
        }
        assert!(parse_cpus("abc").unwrap_err().0.contains("1500m"));
    }

    /// Found by the `settings` fuzz target: a quantity that fits in u128 but not once scaled to
    /// thousandths overflowed (a panic in debug builds, a wrapped limit in release ones).
    #[test]
    fn cpus_too_large_to_scale_are_refused() {
        for huge in ["99999999999999999999E", "340282366920938463463e18"] {
            assert_eq!(
                parse_cpus(huge),
                Err(Problem::new("value too large")),
                "{huge:?}"
            );
        }
    }

    #[test]
    fn memory_accepts_bytes_and_quantities() {
        assert_eq!(parse_memory("4Gi"), Ok(Some(4 << 30)));
        assert_eq!(parse_memory("512Mi"), Ok(Some(512 << 20)));
        assert_eq!(parse_memory("1G"), Ok(Some(1_000_000_000)));
        assert_eq!(parse_memory("1.5Gi"), Ok(Some(3 << 29)));
        assert_eq!(parse_memory("1073741824"), Ok(Some(1 << 30)));
        assert_eq!(parse_memory("0"), Ok(None));
        assert_eq!(parse_memory("6291456.5"), Ok(Some(6291457)), "rounded up");
    }

    #[test]
    fn memory_rejects_garbage_and_tiny_limits() {
        for bad in ["4GB", "4gi", "lots", "-1", "1Mi", "100"] {
            assert!(parse_memory(bad).is_err(), "{bad:?}");
        }
        assert!(parse_memory("99999999999Ei").is_err());
    }

    #[test]
    fn cidr_gives_network_and_gateway() {
        let net = parse_cidr("172.19.0.1/30").unwrap();
        assert_eq!(net.network, Ipv4Addr::new(172, 19, 0, 0));
        assert_eq!(net.gateway, Ipv4Addr::new(172, 19, 0, 1));
        assert_eq!(net.first_lease(), Ipv4Addr::new(172, 19, 0, 2));
        assert_eq!(net.to_string(), "172.19.0.0/30");
        let wide = parse_cidr("10.20.30.40/16").unwrap();
        assert_eq!(wide.gateway, Ipv4Addr::new(10, 20, 0, 1));
    }

    #[test]
    fn cidr_rejects_bad_input() {
        for bad in [
            "172.19.0.1",
            "172.19.0.1/31",
            "172.19.0.1/33",
            "300.1.1.1/24",
            "fd00::1/64",
            "x/24",
            "10.0.0.0/4",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mounts_parse_ro_and_rw() {
        let mounts =
            parse_mounts("/home/coder:/home/coder,/var/data:/data:ro,/a//b/:/c/./d:rw").unwrap();
        assert_eq!(
            mounts,
            vec![
                UserMount {
                    source: "/home/coder".into(),
                    destination: "/home/coder".into(),
                    read_only: false
                },
                UserMount {
                    source: "/var/data".into(),
                    destination: "/data".into(),
                    read_only: true
                },
                UserMount {
                    source: "/a/b".into(),
                    destination: "/c/d".into(),
                    read_only: false
                },
            ]
        );
    }

    #[test]
    fn mounts_reject_malformed_items() {
        let cases = [
            ("/a", "fields"),
            ("/a:/b:rx", "unknown option \"rx\""),
            ("/a:/b:ro:x", "fields"),
            ("a:/b", "not an absolute path"),
            ("/a:b", "not an absolute path"),
            ("/a:/b,", "item 2"),
            ("/a/../etc:/b", "'..'"),
            ("/proc:/host/proc", "/proc"),
            ("/sys/fs:/x", "/sys"),
            ("/data:/proc/x", "runtime owns"),
            ("/data:/", "whole image"),
        ];
        for (input, needle) in cases {
            let err = parse_mounts(input).unwrap_err().0;
            assert!(err.contains(needle), "{input:?}: {err}");
        }
    }

    #[test]
    fn env_patterns() {
        let pats = parse_env_patterns("FOO, KUBERNETES_*,BAR_2").unwrap();
        assert_eq!(
            pats,
            vec![
                EnvPattern::Exact("FOO".into()),
                EnvPattern::Prefix("KUBERNETES_".into()),
                EnvPattern::Exact("BAR_2".into()),
            ]
        );
        assert!(pats[1].matches("KUBERNETES_SERVICE_HOST"));
        assert!(!pats[1].matches("kubernetes_x"), "case-sensitive");
        assert!(!pats[0].matches("FOOD"));
        assert!(parse_env_patterns("*").unwrap()[0].matches("ANYTHING"));
        for bad in ["FOO,,BAR", "FOO,", "F*O", "1ABC", "A-B", "FOO BAR"] {
            assert!(parse_env_patterns(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hostnames() {
        assert!(parse_hostname("workspace-1").is_ok());
        assert!(parse_hostname("workspace_cvm").is_ok());
        assert!(parse_hostname("a.b.c").is_ok());
        for bad in ["", "a b", "a..b", ".a", "a/b", &"x".repeat(65)] {
            assert!(parse_hostname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn agent_subsystem_is_merged_sorted_unique() {
        assert_eq!(agent_subsystem(None), "envbox");
        assert_eq!(agent_subsystem(Some("")), "envbox");
        assert_eq!(agent_subsystem(Some("exectrace")), "envbox,exectrace");
        assert_eq!(
            agent_subsystem(Some(" zeta , envbox,alpha,,alpha")),
            "alpha,envbox,zeta"
        );
    }
}
