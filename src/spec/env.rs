//! The inner container's environment.
//!
//! Owns: composing the process env the way Docker does for the Go envbox, so workspaces see the
//! same variables: `PATH` (default) and `HOSTNAME`, then the image's `Env`, then ours in the
//! documented order (`CODER_AGENT_TOKEN`, `CODER_AGENT_SUBSYSTEM`, the `CODER_INNER_ENVS`
//! matches, GPU variables), each replacing an earlier entry of the same name in place. It never
//! lets a `SYSBOX_*` variable through (sysbox-runc takes those as its own settings) and never
//! passes the pull secret.

use crate::config::{names, Settings};
use crate::image::ImageConfig;

/// Docker's default `PATH`, used when the image sets none.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The composed environment and what was dropped.
pub(crate) struct Env {
    pub vars: Vec<String>,
    pub warnings: Vec<String>,
}

fn is_sysbox(name: &str) -> bool {
    name.starts_with("SYSBOX_")
}

/// Variables that must never be copied from the outer environment.
fn never_passed(name: &str) -> bool {
    is_sysbox(name) || name == names::IMAGE_SECRET.env || name == names::AGENT_TOKEN.env
}

fn set(vars: &mut Vec<String>, name: &str, value: &str) {
    let entry = format!("{name}={value}");
    match vars
        .iter_mut()
        .find(|v| v.split_once('=').map(|(n, _)| n) == Some(name))
    {
        Some(existing) => *existing = entry,
        None => vars.push(entry),
    }
}

/// Composes the environment. `environ` is the outer environment, `gpu` the GPU variables.
pub(crate) fn compose(
    settings: &Settings,
    image: &ImageConfig,
    environ: &[(String, String)],
    gpu: Option<&[(String, String)]>,
) -> Env {
    let mut vars = Vec::new();
    let mut warnings = Vec::new();
    set(&mut vars, "PATH", DEFAULT_PATH);
    set(&mut vars, "HOSTNAME", &settings.hostname);
    for entry in &image.env {
        match entry.split_once('=') {
            Some((name, _)) if is_sysbox(name) => {
                warnings.push(format!(
                    "dropped the image's {name}: SYSBOX_* variables would reconfigure sysbox-runc"
                ));
            }
            Some((name, value)) if !name.is_empty() => set(&mut vars, name, value),
            _ => warnings.push(format!("ignored the image's malformed Env entry {entry:?}")),
        }
    }
    if let Some(token) = &settings.agent_token {
        set(&mut vars, names::AGENT_TOKEN.env, token.expose());
    }
    set(
        &mut vars,
        names::AGENT_SUBSYSTEM.env,
        &settings.agent_subsystem,
    );
    for (name, value) in environ {
        if settings.inner_envs.iter().any(|p| p.matches(name)) && !never_passed(name) {
            set(&mut vars, name, value);
        }
    }
    for (name, value) in gpu.unwrap_or_default() {
        if !never_passed(name) {
            set(&mut vars, name, value);
        }
    }
    Env { vars, warnings }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Purpose, RawSettings, Secret};

    fn settings(envs: &str) -> Settings {
        let raw = RawSettings {
            username: Some("coder".into()),
            envs: Some(envs.into()),
            ..Default::default()
        };
        Settings::from_raw(&raw, Some("exectrace"), Purpose::Spec).unwrap()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn order_is_defaults_image_then_ours_with_in_place_replacement() {
        let mut s = settings("FOO,KUBERNETES_*");
        s.agent_token = Some(Secret::new("tok"));
        let image = ImageConfig {
            env: vec![
                "PATH=/opt/bin:/usr/bin".into(),
                "LANG=C.UTF-8".into(),
                "FOO=image".into(),
            ],
            ..Default::default()
        };
        let outer = pairs(&[
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
            ("FOO", "a=b=c"),
            ("FOOD", "no"),
            ("kubernetes_lower", "no"),
        ]);
        let env = compose(
            &s,
            &image,
            &outer,
            Some(&pairs(&[("NVIDIA_VISIBLE_DEVICES", "0")])),
        );
        assert_eq!(
            env.vars,
            [
                "PATH=/opt/bin:/usr/bin",
                "HOSTNAME=workspace-cvm",
                "LANG=C.UTF-8",
                "FOO=a=b=c",
                "CODER_AGENT_TOKEN=tok",
                "CODER_AGENT_SUBSYSTEM=envbox,exectrace",
                "KUBERNETES_SERVICE_HOST=10.0.0.1",
                "NVIDIA_VISIBLE_DEVICES=0",
            ]
        );
    }

    #[test]
    fn sysbox_variables_secrets_and_token_are_never_copied() {
        let s = settings("*");
        let image = ImageConfig {
            env: vec!["SYSBOX_HONOR_CAPS=TRUE".into(), "BROKEN".into()],
            ..Default::default()
        };
        let outer = pairs(&[
            ("SYSBOX_IGNORE_SYSFS_CHOWN", "TRUE"),
            ("CODER_IMAGE_PULL_SECRET", "{}"),
            ("CODER_AGENT_TOKEN", "outer"),
            ("OK", "1"),
        ]);
        let env = compose(&s, &image, &outer, None);
        assert!(
            env.vars.iter().all(|v| !v.starts_with("SYSBOX_")),
            "{:?}",
            env.vars
        );
        assert!(env
            .vars
            .iter()
            .all(|v| !v.starts_with("CODER_IMAGE_PULL_SECRET")));
        assert!(
            env.vars.iter().all(|v| !v.starts_with("CODER_AGENT_TOKEN")),
            "no token set, none passed"
        );
        assert!(env.vars.contains(&"OK=1".to_owned()));
        assert_eq!(env.warnings.len(), 2, "{:?}", env.warnings);
    }

    #[test]
    fn default_path_when_the_image_has_none() {
        let env = compose(&settings("X"), &ImageConfig::default(), &[], None);
        assert_eq!(env.vars[0], format!("PATH={DEFAULT_PATH}"));
    }
}
