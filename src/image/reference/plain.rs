//! The common forms of an image reference, parsed without oci-spec's regular expression.
//!
//! Owns: [`parse`], which accepts `[host[:port]/]path[/path...][:tag]` and
//! `...@sha256:<64 hex>` written in ASCII, and builds exactly the [`Reference`] that
//! `Reference::try_from` builds for the same text (Docker Hub's `docker.io` and `library/`
//! defaults, `latest` when neither tag nor digest is given). Why: the first `try_from` in a
//! process compiles oci-spec's reference grammar (a 128-fold repeated Unicode class, built with
//! a 20 MB size limit), about 40 ms of CPU that every `envbox docker` paid before starting
//! containerd (benches/warmstart.rs). It never decides that a reference is invalid: whatever it
//! does not recognise (`None`), or anything the grammar might read differently, is left to
//! `try_from`, so errors and unusual forms are unchanged. The tests compare both on thousands
//! of strings.

use oci_spec::distribution::Reference;

/// Longest repository `try_from` accepts.
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// `[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`.
fn is_host_label(label: &str) -> bool {
    let b = label.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// `label(.label)*(:[0-9]+)?`: a registry host, as the grammar allows it before the first `/`.
fn is_domain(component: &str) -> bool {
    let (host, port) = match component.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (component, None),
    };
    host.split('.').all(is_host_label)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`: one path component of a repository.
fn is_path_component(component: &str) -> bool {
    let is_alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let b = component.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    // Every run of separators between two alphanumeric runs is `.`, `_`, `__` or dashes.
    b.split(|c| is_alnum(*c)).all(|separator| {
        matches!(separator, b"" | b"." | b"_" | b"__") || separator.iter().all(|c| *c == b'-')
    })
}

/// The grammar's name: an optional domain component, then at least one path component.
fn is_name(name: &str) -> bool {
    let components: Vec<&str> = name.split('/').collect();
    let path_from = |first: usize| components[first..].iter().all(|c| is_path_component(c));
    path_from(0) || (components.len() > 1 && is_domain(components[0]) && path_from(1))
}

/// `[\w][\w.-]{0,127}`, ASCII only (the grammar's `\w` is Unicode: others go to `try_from`).
fn is_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    let word = |c: &u8| c.is_ascii_alphanumeric() || *c == b'_';
    (1..=128).contains(&b.len())
        && word(&b[0])
        && b.iter().all(|c| word(c) || *c == b'.' || *c == b'-')
}

/// `sha256:` and 64 hex digits (the one digest form handled here).
fn is_sha256_digest(digest: &str) -> bool {
    digest
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// Docker's split of a name into registry and repository (distribution's `splitDomain`, as
/// oci-spec implements it).
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut remainder) = match name.split_once('/') {
        Some((left, right)) if left.contains('.') || left.contains(':') || left == "localhost" => {
            (left.to_owned(), right.to_owned())
        }
        _ => ("docker.io".to_owned(), name.to_owned()),
    };
    if domain == "index.docker.io" {
        domain = "docker.io".to_owned();
    }
    if domain == "docker.io" && !remainder.contains('/') {
        remainder = format!("library/{remainder}");
    }
    (domain, remainder)
}

/// The reference for `text` when it has one of the common forms, else `None`.
pub(crate) fn parse(text: &str) -> Option<Reference> {
    let (rest, digest) = match text.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (text, None),
    };
    // A tag follows the last `:` after the last `/` (a `:` before it is a port).
    let (name, tag) = match rest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (rest, None),
    };
    if !is_name(name)
        || !tag.is_none_or(is_tag)
        || !digest.is_none_or(is_sha256_digest)
        || (tag.is_some() && digest.is_some())
    {
        return None;
    }
    let (registry, repository) = split_domain(name);
    if repository.len() > NAME_TOTAL_LENGTH_MAX {
        return None;
    }
    Some(match (tag, digest) {
        (_, Some(digest)) => Reference::with_digest(registry, repository, digest.to_owned()),
        (tag, None) => {
            Reference::with_tag(registry, repository, tag.unwrap_or("latest").to_owned())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every string the fast path accepts, `try_from` accepts too, with the same result.
    fn agrees(text: &str) -> bool {
        match parse(text) {
            None => true,
            Some(fast) => match Reference::try_from(text) {
                Ok(slow) => {
                    assert_eq!(fast, slow, "{text:?}");
                    true
                }
                Err(e) => panic!("{text:?}: the fast path accepted what try_from refuses ({e})"),
            },
        }
    }

    #[test]
    fn the_common_forms_are_parsed_like_try_from_does() {
        let hex = "0123456789abcdef".repeat(4);
        let common = [
            "ubuntu".to_owned(),
            "ubuntu:22.04".to_owned(),
            "codercom/enterprise-base:ubuntu".to_owned(),
            "docker.io/codercom/enterprise-base:ubuntu".to_owned(),
            "index.docker.io/library/debian:bookworm-slim".to_owned(),
            "ghcr.io/coder/envbox:v1.2_3-rc.4".to_owned(),
            "localhost/x".to_owned(),
            "localhost:5000/team/dev".to_owned(),
            "127.0.0.1:5000/envbox/busybox:v1".to_owned(),
            "my-registry.example.com:443/a/b/c/d".to_owned(),
            "a__b/c.d/e---f:T".to_owned(),
            format!("127.0.0.1:5000/team/dev@sha256:{hex}"),
            format!("ubuntu@sha256:{}", hex.to_uppercase()),
        ];
        for text in &common {
            assert!(parse(text).is_some(), "{text:?} is a common form");
            assert!(agrees(text));
        }
    }

    #[test]
    fn what_it_does_not_recognise_is_left_to_try_from() {
        let hex = "a".repeat(64);
        let others = [
            String::new(),
            "UPPER/case".to_owned(),
            "Upper".to_owned(),
            "a/".to_owned(),
            "/a".to_owned(),
            "a//b".to_owned(),
            "a._b".to_owned(),
            "a-".to_owned(),
            "-a".to_owned(),
            "a:".to_owned(),
            "a:-tag".to_owned(),
            "a:t\u{e9}".to_owned(),
            format!("a:{}", "t".repeat(129)),
            "host:port/a".to_owned(),
            "ho_st.com/a".to_owned(),
            "a@sha256:abc".to_owned(),
            format!("a@sha512:{hex}"),
            format!("a:tag@sha256:{hex}"),
            format!("{}/b", "a".repeat(300)),
        ];
        for text in &others {
            assert!(agrees(text));
        }
        assert!(parse("UPPER/case").is_some_and(|r| r.repository() == "UPPER/case"));
        assert!(parse("a._b").is_none() && parse("a:-tag").is_none());
    }

    #[test]
    fn random_strings_get_the_same_answer_both_ways() {
        // Short strings over the grammar's punctuation, so that many are near-misses.
        let alphabet = b"abcz09AZ.-_:/@";
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut accepted = 0;
        for _ in 0..20_000 {
            let len = 1 + (next() % 14) as usize;
            let text: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize] as char)
                .collect();
            assert!(agrees(&text));
            accepted += usize::from(parse(&text).is_some());
        }
        assert!(
            accepted > 500,
            "only {accepted} random strings took the fast path"
        );
    }
}
