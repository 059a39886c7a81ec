//! The protobuf payloads containerd takes as `Any`: the runtime spec, an exec's process, and the
//! runc shim's options.
//!
//! Owns: type URLs and encodings. containerd-client does not generate the runc shim's
//! `containerd.runc.v1.Options`, so it is defined here (field numbers from containerd's
//! `runtime/v2/runc/options/oci.proto`); its type URL must be the bare name, since containerd
//! 1.6 rejects the `type.googleapis.com/` prefix prost would add. Never does I/O.

use std::path::Path;

use oci_spec::runtime::{Process, Spec};
use prost::Message;
use prost_types::Any;

/// Type URL of a runtime spec carried in `Container.spec`.
pub(crate) const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// Type URL of an exec's process carried in `ExecProcessRequest.spec`.
pub(crate) const PROCESS_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// Type URL of [`RuncOptions`] (bare: see the module doc).
pub(crate) const RUNC_OPTIONS_TYPE_URL: &str = "containerd.runc.v1.Options";

/// The runc shim's options (`containerd.runc.v1.Options`), the fields envbox sets.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct RuncOptions {
    /// The OCI runtime executable the shim runs (`runc`, `sysbox-runc`).
    #[prost(string, tag = "6")]
    pub binary_name: String,
    /// The OCI runtime's state root (`--root`).
    #[prost(string, tag = "7")]
    pub root: String,
    /// Whether the runtime uses the systemd cgroup driver.
    #[prost(bool, tag = "9")]
    pub systemd_cgroup: bool,
}

/// The shim options selecting `binary` with its state under `root`.
pub(crate) fn runc_options(binary: &str, root: &Path) -> Any {
    let options = RuncOptions {
        binary_name: binary.to_owned(),
        root: root.display().to_string(),
        systemd_cgroup: false,
    };
    Any {
        type_url: RUNC_OPTIONS_TYPE_URL.to_owned(),
        value: options.encode_to_vec(),
    }
}

/// The runtime spec as containerd stores it (its JSON, secrets included: it goes to containerd
/// only, never to a log).
pub(crate) fn spec_any(spec: &Spec) -> Result<Any, serde_json::Error> {
    Ok(Any {
        type_url: SPEC_TYPE_URL.to_owned(),
        value: serde_json::to_vec(spec)?,
    })
}

/// An exec's process spec.
pub(crate) fn process_any(process: &Process) -> Result<Any, serde_json::Error> {
    Ok(Any {
        type_url: PROCESS_TYPE_URL.to_owned(),
        value: serde_json::to_vec(process)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_options_use_the_shim_field_numbers_and_the_bare_type_url() {
        let any = runc_options("sysbox-runc", Path::new("/run/envbox/runc"));
        assert_eq!(any.type_url, "containerd.runc.v1.Options");
        // Field 6, wire type 2 (length-delimited) = 0x32; field 7 = 0x3a.
        let mut expected = vec![0x32, 11];
        expected.extend_from_slice(b"sysbox-runc");
        expected.extend_from_slice(&[0x3a, 16]);
        expected.extend_from_slice(b"/run/envbox/runc");
        assert_eq!(any.value, expected);
        let decoded = RuncOptions::decode(any.value.as_slice()).unwrap();
        assert_eq!(decoded.binary_name, "sysbox-runc");
        assert!(!decoded.systemd_cgroup);
    }

    #[test]
    fn spec_any_carries_the_spec_json() {
        let spec = Spec::default();
        let any = spec_any(&spec).unwrap();
        assert_eq!(any.type_url, SPEC_TYPE_URL);
        let back: Spec = serde_json::from_slice(&any.value).unwrap();
        assert_eq!(back, spec);
    }
}
