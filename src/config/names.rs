//! The name of every setting: its flag and its environment variable.
//!
//! Owns: the one table both the command line (`cli`) and error messages use, so an error always
//! names the variable a user actually set. It holds no values and no logic.

/// A setting's flag (without `--`) and environment variable; either may be empty (a setting
/// read from the environment only, or a flag without a variable, as in the Go envbox).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Name {
    pub flag: &'static str,
    pub env: &'static str,
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.flag.is_empty() {
            f.write_str(self.env)
        } else if self.env.is_empty() {
            write!(f, "--{}", self.flag)
        } else {
            write!(f, "{} (--{})", self.env, self.flag)
        }
    }
}

macro_rules! names {
    ($($konst:ident = $flag:literal, $env:literal;)*) => {
        $(pub const $konst: Name = Name { flag: $flag, env: $env };)*
    };
}

names! {
    IMAGE = "image", "CODER_INNER_IMAGE";
    USERNAME = "username", "CODER_INNER_USERNAME";
    AGENT_TOKEN = "agent-token", "CODER_AGENT_TOKEN";
    AGENT_URL = "coder-url", "CODER_AGENT_URL";
    INNER_ENVS = "envs", "CODER_INNER_ENVS";
    HOSTNAME = "hostname", "CODER_INNER_HOSTNAME";
    WORK_DIR = "work-dir", "CODER_INNER_WORK_DIR";
    IMAGE_SECRET = "image-secret", "CODER_IMAGE_PULL_SECRET";
    DOCKER_CONFIG = "docker-config", "CODER_DOCKER_CONFIG";
    EXTRA_CERTS_PATH = "extra-certs-path", "CODER_EXTRA_CERTS_PATH";
    BRIDGE_CIDR = "bridge-cidr", "CODER_DOCKER_BRIDGE_CIDR";
    BOOTSTRAP_SCRIPT = "bootstrap-script", "CODER_BOOTSTRAP_SCRIPT";
    MOUNTS = "mounts", "CODER_MOUNTS";
    ADD_TUN = "add-tun", "CODER_ADD_TUN";
    ADD_FUSE = "add-fuse", "CODER_ADD_FUSE";
    ADD_GPU = "add-gpu", "CODER_ADD_GPU";
    USR_LIB_DIR = "usr-lib-dir", "CODER_USR_LIB_DIR";
    INNER_USR_LIB_DIR = "inner-usr-lib-dir", "CODER_INNER_USR_LIB_DIR";
    CPUS = "cpus", "CODER_CPUS";
    MEMORY = "memory", "CODER_MEMORY";
    DISABLE_IDMAPPED_MOUNT = "disable-idmapped-mount", "CODER_DISABLE_IDMAPPED_MOUNT";
    AGENT_SUBSYSTEM = "", "CODER_AGENT_SUBSYSTEM";
    ETHLINK = "ethlink", "ENVBOX_ETHLINK";
    RUNTIME = "runtime", "ENVBOX_RUNTIME";
    STATE_DIR = "state-dir", "ENVBOX_STATE_DIR";
    KEEP_IMAGES = "keep-images", "ENVBOX_KEEP_IMAGES";
    NODE_CACHE = "node-cache", "ENVBOX_NODE_CACHE";
    NODE_CACHE_TTL = "node-cache-ttl", "ENVBOX_NODE_CACHE_TTL";
    NODE_CACHE_SIZE = "node-cache-size", "ENVBOX_NODE_CACHE_SIZE";
    RUN_DIR = "run-dir", "ENVBOX_RUN_DIR";
    STOP_TIMEOUT = "stop-timeout", "ENVBOX_STOP_TIMEOUT";
    INSECURE_REGISTRIES = "insecure-registries", "ENVBOX_INSECURE_REGISTRIES";
    CNI_PATH = "cni-path", "ENVBOX_CNI_PATH";
    DEBUG = "debug", "CODER_DEBUG";
    NO_STARTUP_LOG = "no-startup-log", "";
}
