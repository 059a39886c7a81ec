//! The command line: `envbox docker` (alias `run`), `spec`, `pull`, `prepare`, `cache ls|prune`.
//!
//! Owns: the shape of the commands and their flags. The settings come in groups defined once in
//! [`crate::config`]; each command flattens the groups it reads (so its `--help` lists those
//! only, and their variables only are read) and says here which of them it requires. This module
//! adds the per-command flags. It parses nothing beyond text.

use std::path::PathBuf;

use clap::{Arg, Args, Parser, Subcommand};

use crate::config::{
    EntrypointSettings, ImageSettings, KeepSettings, RawSettings, StateSettings, WorkspaceSettings,
};

/// `arg` with `note` (what this command requires of it) as the last sentence of its help. Like
/// clap's own last sentences, the note has no final period.
fn note(arg: Arg, note: &str) -> Arg {
    let help = match arg.get_help().map(ToString::to_string) {
        Some(help) if help.ends_with('.') => format!("{help} {note}"),
        Some(help) => format!("{help}. {note}"),
        None => note.to_owned(),
    };
    arg.help(help)
}

/// Marks, in the help, the arguments `ids` as required by this command (checked by
/// `Settings::from_raw`: an empty variable counts as unset, so clap's own `required` cannot).
fn required(ids: &'static [&'static str]) -> impl FnMut(Arg) -> Arg {
    move |arg| {
        if ids.contains(&arg.get_id().as_str()) {
            note(arg, "Required")
        } else {
            arg
        }
    }
}

/// The parsed command line.
#[derive(Debug, Parser)]
#[command(
    name = "envbox",
    version,
    about = "Runs one unprivileged system container (sysbox) as a Kubernetes pod's entrypoint, without dockerd",
    propagate_version = true
)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the workspace container (the pod's entrypoint; compatible with the Go envbox).
    #[command(visible_alias = "run", after_help = docker_env_only_help())]
    Docker(DockerArgs),
    /// Print the OCI runtime spec `envbox docker` would hand to the runtime. No side effects.
    Spec(SpecArgs),
    /// Pull an image into the cache on the volume (ahead of time, to warm it); prints its digest.
    /// Also imports from oci:DIR, oci-archive:FILE and docker-archive:FILE (see prepare --help).
    Pull(PullArgs),
    /// Pull (or import from a local layout or archive) and unpack the image into the cache on the
    /// volume, so `envbox docker` starts without network; with --output, also write an OCI
    /// runtime bundle `runc run` can start.
    #[command(after_help = PREPARE_HELP)]
    Prepare(PrepareArgs),
    /// Inspect or clean the image cache.
    #[command(subcommand)]
    Cache(CacheCommand),
}

/// The end of `envbox docker --help`: the variables it reads that have no flag (deployment
/// checks read the whole list of variables from this help).
fn docker_env_only_help() -> String {
    format!(
        "Read from the environment only:\n  \
         {:<22} the agent's subsystems; the workspace gets this list with envbox added\n  \
         {:<22} diagnostics in the progress log: off, error, warn, info, debug, trace\n  \
         {:<22} [default: warn; at least debug with --debug]",
        crate::config::names::AGENT_SUBSYSTEM.env,
        crate::logging::VARIABLE,
        "",
    )
}

const PREPARE_HELP: &str = "\
Image sources (--image / CODER_INNER_IMAGE):
  REF                               a registry reference (docker://REF also works)
  oci:DIR[:NAME]                    an OCI image layout directory
  oci-archive:FILE[:NAME]           a tar of an OCI image layout
  docker-archive:FILE[:NAME]        a `docker save` tar (NAME: one of its repo tags, or @N)
NAME picks one image when the layout or archive holds several (a ref name, a repo tag or a
digest); the error lists them. PATH ends at the first ':'. Archives are read in place and must
be plain tar (decompress a .tar.gz first). A local image is recorded in the cache under --as
REF, else under the full reference it carries (repo tag, io.containerd.image.name, or an OCI
ref name like registry.example.com/team/dev:1.0), so a later `envbox docker --image REF` on the
same volume starts without network.";

/// `envbox docker`'s arguments.
#[derive(Debug, Args)]
#[command(mut_args(required(&["image", "username"])))]
pub struct DockerArgs {
    /// The image and how to fetch it.
    #[command(flatten)]
    pub image: ImageSettings,

    /// What the runtime spec is made of.
    #[command(flatten)]
    pub workspace: WorkspaceSettings,

    /// Where the image cache is.
    #[command(flatten)]
    pub state: StateSettings,

    /// What stays in the image cache.
    #[command(flatten)]
    pub keep: KeepSettings,

    /// How the workspace is started, run and stopped.
    #[command(flatten)]
    pub entrypoint: EntrypointSettings,
}

impl DockerArgs {
    /// The settings this command reads; the others are unset.
    pub fn settings(&self) -> RawSettings {
        RawSettings::of(&[
            &self.image,
            &self.workspace,
            &self.state,
            &self.keep,
            &self.entrypoint,
        ])
    }
}

/// `envbox spec`'s arguments.
#[derive(Debug, Args)]
#[command(mut_args(required(&["username"])))]
pub struct SpecArgs {
    /// The unpacked root filesystem of the image.
    #[arg(long, value_name = "DIR")]
    pub rootfs: PathBuf,

    /// The image configuration JSON (the blob the manifest's `config` points to).
    #[arg(long, value_name = "FILE")]
    pub image_config: Option<PathBuf>,

    /// Print secret values (the agent token) instead of `<redacted>`.
    #[arg(long)]
    pub show_secrets: bool,

    /// Also print, on stderr, the host setup actions the spec relies on.
    #[arg(long)]
    pub show_actions: bool,

    /// What the runtime spec is made of.
    #[command(flatten)]
    pub workspace: WorkspaceSettings,
}

impl SpecArgs {
    /// The settings this command reads; the others are unset.
    pub(crate) fn settings(&self) -> RawSettings {
        RawSettings::of(&[&self.workspace])
    }
}

/// `envbox pull`'s arguments.
#[derive(Debug, Args)]
#[command(mut_arg("image", |a| note(a, "Used when IMAGE is not given")))]
pub struct PullArgs {
    /// The image [default: --image / CODER_INNER_IMAGE].
    #[arg(value_name = "IMAGE")]
    pub reference: Option<String>,

    /// The image and how to fetch it.
    #[command(flatten)]
    pub image: ImageSettings,

    /// Where the image cache is.
    #[command(flatten)]
    pub state: StateSettings,

    /// What stays in the image cache.
    #[command(flatten)]
    pub keep: KeepSettings,
}

impl PullArgs {
    /// The settings this command reads; the others are unset.
    pub(crate) fn settings(&self) -> RawSettings {
        RawSettings::of(&[&self.image, &self.state, &self.keep])
    }
}

/// `envbox prepare`'s arguments.
#[derive(Debug, Args)]
#[command(
    mut_args(required(&["image"])),
    mut_arg("username", |a| note(a, "Required with --output"))
)]
pub struct PrepareArgs {
    /// Record an image from oci:, oci-archive: or docker-archive: in the cache under this
    /// reference (a tag), so that `envbox docker --image REF` finds it offline
    /// [default: the full reference the layout or archive carries].
    #[arg(long = "as", value_name = "REF")]
    pub pin_as: Option<String>,

    /// Also write an OCI runtime bundle (config.json + flattened rootfs/) into this directory
    /// (absent or empty), and apply the host setup its spec relies on.
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,

    /// Exit without waiting for the fetched blobs and unpacked layers to reach the disk (as
    /// `envbox docker` prepares: the kernel writes them back soon after). Safe against
    /// crashes: a blob a machine restart may have torn is fetched again, a layer unpacked
    /// again. For a volume used on this machine only: on another machine every such blob and
    /// layer is fetched or unpacked again.
    #[arg(long)]
    pub no_sync: bool,

    /// The image and how to fetch it.
    #[command(flatten)]
    pub image: ImageSettings,

    /// Where the image cache is.
    #[command(flatten)]
    pub state: StateSettings,

    /// What stays in the image cache.
    #[command(flatten)]
    pub keep: KeepSettings,

    /// The spec of the bundle: read with --output only.
    #[command(flatten, next_help_heading = "Bundle options (with --output)")]
    pub workspace: WorkspaceSettings,
}

impl PrepareArgs {
    /// The settings this command reads; the others are unset.
    pub(crate) fn settings(&self) -> RawSettings {
        RawSettings::of(&[&self.image, &self.state, &self.keep, &self.workspace])
    }
}

/// `envbox cache`'s subcommands.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List cached blobs and which references they were pulled for.
    Ls(LsArgs),
    /// Remove the blobs and unpacked layers of every image but the current one (--image /
    /// CODER_INNER_IMAGE; without it, the most recently used) and the --keep-images most
    /// recently used before it. What a mounted workspace uses stays.
    Prune(PruneArgs),
}

/// `envbox cache ls`'s arguments.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Where the image cache is.
    #[command(flatten)]
    pub state: StateSettings,
}

impl LsArgs {
    /// The settings this command reads; the others are unset.
    pub(crate) fn settings(&self) -> RawSettings {
        RawSettings::of(&[&self.state])
    }
}

/// `envbox cache prune`'s arguments.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// The image and how to fetch it.
    #[command(flatten)]
    pub image: ImageSettings,

    /// Where the image cache is.
    #[command(flatten)]
    pub state: StateSettings,

    /// What stays in the image cache.
    #[command(flatten)]
    pub keep: KeepSettings,
}

impl PruneArgs {
    /// The settings this command reads; the others are unset.
    pub(crate) fn settings(&self) -> RawSettings {
        RawSettings::of(&[&self.image, &self.state, &self.keep])
    }
}
