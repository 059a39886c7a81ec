//! The name patterns of GPU passthrough (behaviour doc §5), as plain string tests.
//!
//! Owns: deciding whether a mount point, a library file name or a variable name is GPU-related.
//! Library matching looks at the FILE NAME only, never the directory (matching the full path
//! once leaked `libglib` into RHEL images). It never touches the filesystem.

use std::path::Path;

/// Words that make a mount point GPU-related: `(?i)(nvidia|vulkan|cuda)`.
const GPU_WORDS: [&str; 3] = ["nvidia", "vulkan", "cuda"];

/// Extra library name prefixes: the `libgl(e|sx|\.)` part of the library pattern, lower-case.
const GL_WORDS: [&str; 3] = ["libgle", "libglsx", "libgl."];

/// File-name prefix of ICU (`libicudata.so.74`): `icudata` contains `cuda`, a false positive of
/// the Go pattern that would bind the host's ICU over the image's.
const ICU_PREFIX: &str = "libicu";

/// `(?i)(nvidia|vulkan|cuda)` anywhere in the path (mount-table entries).
pub(super) fn is_gpu_mount_point(path: &Path) -> bool {
    let lower = path.to_string_lossy().to_ascii_lowercase();
    GPU_WORDS.iter().any(|word| lower.contains(word))
}

/// `(?i)nvidia` in a variable name.
pub(super) fn is_gpu_env_name(name: &str) -> bool {
    name.to_ascii_lowercase().contains("nvidia")
}

/// A GPU shared library by file name: `(?i)(libgl(e|sx|\.)|nvidia|vulkan|cuda)` and
/// `\.so(\.[0-9.]+)?$`, minus ICU (see [`ICU_PREFIX`]).
pub(super) fn is_gpu_library_name(file_name: &str) -> bool {
    let lower = file_name.to_ascii_lowercase();
    let gpu_word = GPU_WORDS.iter().chain(&GL_WORDS).any(|w| lower.contains(w));
    gpu_word && !lower.starts_with(ICU_PREFIX) && is_shared_object_name(file_name)
}

/// `\.so(\.[0-9.]+)?$` (case-sensitive): some `.so` followed by nothing or by a dot and only
/// digits and dots.
fn is_shared_object_name(file_name: &str) -> bool {
    file_name.match_indices(".so").any(|(at, _)| {
        let rest = &file_name[at + ".so".len()..];
        rest.is_empty() || is_version_suffix(rest)
    })
}

/// `\.[0-9.]+` as a whole string.
fn is_version_suffix(rest: &str) -> bool {
    rest.strip_prefix('.').is_some_and(|tail| {
        !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_names() {
        let matched = [
            "libGL.so.1",
            "libGLX_nvidia.so.0",
            "libGLESv2.so.2",
            "libglsx.so",
            "libvulkan.so.1",
            "libnvidia-ml.so.535.104.05",
            "libcuda.so",
            "libcudadebugger.so.1",
            "libEGL_nvidia.so.0",
            "libnvidia-x.so..",
            "nvidia.so.1.so",
        ];
        let not_matched = [
            "libglib-2.0.so.0",
            "libGLdispatch.so.0",
            "libcudart.a",
            "nvidia-smi",
            "libnvidia-ml.so.1a",
            "libnvidia-ml.SO.1",
            "libnvidia-ml.so.",
            "libnvidia.sox",
            "libicudata.so.74.2",
            "libicudata.so.74",
            "libc.so.6",
            "libfoo.so",
        ];
        for name in matched {
            assert!(is_gpu_library_name(name), "{name}");
        }
        for name in not_matched {
            assert!(!is_gpu_library_name(name), "{name}");
        }
    }

    #[test]
    fn mount_points_and_variables() {
        assert!(is_gpu_mount_point(Path::new("/usr/local/NVIDIA")));
        assert!(is_gpu_mount_point(Path::new("/etc/vulkan/icd.d")));
        assert!(is_gpu_mount_point(Path::new("/usr/local/cuda-12")));
        assert!(!is_gpu_mount_point(Path::new("/usr/lib")));
        assert!(is_gpu_env_name("NVIDIA_VISIBLE_DEVICES"));
        assert!(is_gpu_env_name("my_nvidia"));
        assert!(!is_gpu_env_name("LD_LIBRARY_PATH"));
        assert!(!is_gpu_env_name("CUDA_HOME"));
    }
}
