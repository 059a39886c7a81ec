//! Unit tests of the parts that need no server; the sender against a stand-in Coder is in
//! `tests/agentlog.rs`.

use super::*;
use crate::config::Secret;

#[test]
fn the_target_needs_both_the_url_and_the_token() {
    let mut raw = crate::config::RawSettings {
        image: Some("alpine".into()),
        username: Some("coder".into()),
        ..Default::default()
    };
    let settings = |raw: &crate::config::RawSettings| {
        Settings::from_raw(raw, None, crate::config::Purpose::Docker).unwrap()
    };
    assert!(Target::from_settings(&settings(&raw)).unwrap().is_none());
    raw.agent_url = Some("https://coder.example.com/".into());
    assert!(Target::from_settings(&settings(&raw)).unwrap().is_none());
    raw.agent_token = Some(Secret::new("tok"));
    let target = Target::from_settings(&settings(&raw)).unwrap().unwrap();
    assert_eq!(target.base, "https://coder.example.com");
}

#[test]
fn uuids_are_version_4_and_differ() {
    let (a, b) = (random_uuid(), random_uuid());
    assert_ne!(a, b);
    assert_eq!(&a[14..15], "4");
    assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
}
