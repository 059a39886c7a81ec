//! Tests of the whole GPU stage: the H100 host capture, synthetic usr-lib trees scanned from
//! a temporary directory, and mount-table handling. They need no privileges.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::h100_fixture::{fixture_inventory, fixture_mounts, OUTER_USR_LIB};
use super::*;
use crate::mountinfo::MountTable;

const UBUNTU_LIB: &str = "/usr/lib/x86_64-linux-gnu";

fn mounts(text: &str) -> MountTable {
    MountTable::parse(text).expect("mount table")
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn symlink_at<'a>(plan: &'a GpuPlan, path: &str) -> Option<&'a GpuSymlink> {
    plan.symlinks.iter().find(|s| s.path == Path::new(path))
}

fn mount_at<'a>(plan: &'a GpuPlan, destination: &str) -> Option<&'a GpuMount> {
    plan.mounts
        .iter()
        .find(|m| m.destination == Path::new(destination))
}

// ---------------------------------------------------------------- the H100 capture

fn h100_plan() -> GpuPlan {
    let ubuntu = OsRelease {
        id: "ubuntu".into(),
        id_like: vec!["debian".into()],
    };
    let inner = inner_lib_dir(Some(&ubuntu), "x86_64");
    assert_eq!(inner, Path::new(UBUNTU_LIB));
    plan(&fixture_inventory(), &fixture_mounts(), &inner)
}

#[test]
fn h100_devices() {
    let plan = h100_plan();
    let devices: Vec<(&str, u64, u64)> = plan
        .devices
        .iter()
        .map(|d| (d.path.to_str().unwrap(), d.major, d.minor))
        .collect();
    // Six character devices: dev-stat.txt's seventh line is the nvidia-caps directory.
    assert_eq!(
        devices,
        [
            ("/dev/nvidia-caps/nvidia-cap1", 241, 1),
            ("/dev/nvidia-caps/nvidia-cap2", 241, 2),
            ("/dev/nvidia-uvm", 238, 0),
            ("/dev/nvidia-uvm-tools", 238, 1),
            ("/dev/nvidia0", 195, 0),
            ("/dev/nvidiactl", 195, 255),
        ]
    );
}

#[test]
fn h100_driver_tree_is_bound_read_only_with_its_locked_flags() {
    let plan = h100_plan();
    assert_eq!(
        plan.mounts,
        vec![GpuMount {
            source: "/usr/local/nvidia".into(),
            destination: "/usr/local/nvidia".into(),
            options: strings(&["rbind", "ro", "nosuid", "nodev"]),
        }]
    );
    assert!(plan.proc_unmounts.is_empty());
}

#[test]
fn h100_libraries_become_symlinks_into_the_driver_tree() {
    let plan = h100_plan();
    assert_eq!(
        symlink_at(&plan, "/usr/lib/x86_64-linux-gnu/libcuda.so.1"),
        Some(&GpuSymlink {
            path: "/usr/lib/x86_64-linux-gnu/libcuda.so.1".into(),
            target: "/usr/local/nvidia/lib64/libcuda.so.1".into(),
        })
    );
    // Every host symlink except the two ICU entries, each into /usr/local/nvidia/lib64.
    assert_eq!(plan.symlinks.len(), 40);
    for link in &plan.symlinks {
        let name = link.path.file_name().unwrap();
        assert_eq!(link.path, Path::new(UBUNTU_LIB).join(name));
        assert_eq!(link.target, Path::new("/usr/local/nvidia/lib64").join(name));
    }
    let all = format!("{:?}", plan);
    assert!(!all.contains("icudata"), "libicudata leaked: {all}");
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
}

#[test]
fn h100_environment() {
    let names: Vec<String> = h100_plan().env.into_iter().map(|(k, _)| k).collect();
    // OCL_ICD_FILENAMES only has nvidia in its value; LD_LIBRARY_PATH not at all.
    assert_eq!(
        names,
        [
            "NVIDIA_VISIBLE_DEVICES",
            "NVIDIA_REQUIRE_CUDA",
            "NVIDIA_DRIVER_CAPABILITIES",
            "NVIDIA_PRODUCT_NAME",
        ]
    );
}

#[test]
fn h100_plan_is_deterministic() {
    assert_eq!(h100_plan(), h100_plan());
}

// ---------------------------------------------------------------- synthetic usr-lib trees

/// A temporary outer container: an empty `/dev`, and a usr-lib dir at `lib_subdir`.
struct Outer {
    root: tempfile::TempDir,
    lib: PathBuf,
}

impl Outer {
    fn new(lib_subdir: &str) -> Self {
        let root = tempfile::tempdir().unwrap();
        let lib = root.path().join(lib_subdir);
        fs::create_dir_all(&lib).unwrap();
        fs::create_dir_all(root.path().join("dev")).unwrap();
        Outer { root, lib }
    }

    fn file(&self, rel: &str) -> &Self {
        let path = self.lib.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, "").unwrap();
        self
    }

    fn link(&self, rel: &str, target: &str) -> &Self {
        symlink(target, self.lib.join(rel)).unwrap();
        self
    }

    fn scan(&self) -> GpuInventory {
        scan(&self.root.path().join("dev"), &self.lib, &[]).unwrap()
    }

    fn plan(&self, table: &MountTable, inner: &str) -> GpuPlan {
        plan(&self.scan(), table, Path::new(inner))
    }

    fn outer(&self, rel: &str) -> PathBuf {
        self.lib.join(rel)
    }
}

fn ro_bind(source: PathBuf, destination: &str) -> GpuMount {
    GpuMount {
        source,
        destination: destination.into(),
        options: strings(&["rbind", "ro"]),
    }
}

fn link(path: &str, target: &str) -> GpuSymlink {
    GpuSymlink {
        path: path.into(),
        target: target.into(),
    }
}

const DRIVER_MOUNT: &str =
    "29 27 254:16 / /usr/local/nvidia ro,nosuid,nodev,relatime - squashfs /dev/vdb ro\n";

#[test]
fn empty_usr_lib_dir_gives_an_empty_plan() {
    let outer = Outer::new("usr/lib");
    let inventory = outer.scan();
    assert!(inventory.devices.is_empty() && inventory.usr_lib.is_empty());
    assert_eq!(
        outer.plan(&MountTable::default(), UBUNTU_LIB),
        GpuPlan::default()
    );
}

#[test]
fn a_missing_usr_lib_dir_is_an_error() {
    let outer = Outer::new("usr/lib");
    let missing = outer.root.path().join("nope");
    let err = scan(&outer.root.path().join("dev"), &missing, &[]).unwrap_err();
    assert!(matches!(err, GpuError::UsrLibDir { path, .. } if path == missing));
}

#[test]
fn a_regular_file_named_like_a_device_is_ignored() {
    let outer = Outer::new("usr/lib");
    fs::write(outer.root.path().join("dev/nvidia0"), "").unwrap();
    assert!(outer.scan().devices.is_empty());
}

#[test]
fn a_chain_inside_the_dir_is_one_bind_and_symlinks() {
    let outer = Outer::new("usr/lib");
    outer
        .file("libcuda.so.535.1")
        .link("libcuda.so.1", "libcuda.so.535.1")
        .link("libcuda.so", "libcuda.so.1");
    for (inner, lib) in [(UBUNTU_LIB, UBUNTU_LIB), ("/usr/lib64", "/usr/lib64")] {
        let plan = outer.plan(&MountTable::default(), inner);
        assert_eq!(
            plan.mounts,
            vec![ro_bind(
                outer.outer("libcuda.so.535.1"),
                &format!("{lib}/libcuda.so.535.1")
            )]
        );
        assert_eq!(
            plan.symlinks,
            vec![
                link(&format!("{lib}/libcuda.so"), "libcuda.so.1"),
                link(&format!("{lib}/libcuda.so.1"), "libcuda.so.535.1"),
            ]
        );
        assert!(plan.warnings.is_empty());
    }
}

#[test]
fn inner_lib_dirs_for_ubuntu_and_red_hat_images() {
    let release = |id: &str, like: &[&str]| OsRelease {
        id: id.into(),
        id_like: strings(like),
    };
    let dir = |r: OsRelease| inner_lib_dir(Some(&r), "x86_64");
    assert_eq!(dir(release("ubuntu", &["debian"])), Path::new(UBUNTU_LIB));
    assert_eq!(dir(release("rhel", &["fedora"])), Path::new("/usr/lib64"));
    assert_eq!(
        dir(release("rocky", &["rhel", "centos", "fedora"])),
        Path::new("/usr/lib64")
    );

    let outer = Outer::new("usr/lib");
    outer.file("libnvidia-ml.so.535.104.05");
    let plan = outer.plan(&MountTable::default(), "/usr/lib64");
    assert_eq!(
        plan.mounts[0].destination,
        Path::new("/usr/lib64/libnvidia-ml.so.535.104.05")
    );
}

#[test]
fn absolute_links_inside_the_dir_are_translated() {
    let outer = Outer::new("usr/lib");
    outer.file("libnvidia-ml.so.1");
    let target = outer.outer("libnvidia-ml.so.1");
    outer.link("libnvidia-ml.so", target.to_str().unwrap());
    let plan = outer.plan(&MountTable::default(), "/usr/lib64");
    assert_eq!(
        plan.symlinks,
        vec![link(
            "/usr/lib64/libnvidia-ml.so",
            "/usr/lib64/libnvidia-ml.so.1"
        )]
    );
}

#[test]
fn relative_links_that_climb_out_and_back_are_made_absolute() {
    let outer = Outer::new("usr/lib");
    outer
        .file("libnvidia-x.so.1")
        .link("libnvidia-x.so", "../lib/libnvidia-x.so.1");
    let plan = outer.plan(&MountTable::default(), "/usr/lib64");
    // `../lib/...` from /usr/lib64 would name /usr/lib: the inner link must not.
    assert_eq!(
        plan.symlinks,
        vec![link(
            "/usr/lib64/libnvidia-x.so",
            "/usr/lib64/libnvidia-x.so.1"
        )]
    );
}

#[test]
fn the_whole_chain_is_kept_even_when_a_hop_does_not_match() {
    let outer = Outer::new("usr/lib");
    outer
        .file("real/libgpu-impl.so.7")
        .link("libvulkan.so.1", "real/libgpu-impl.so.7");
    let plan = outer.plan(&MountTable::default(), UBUNTU_LIB);
    assert_eq!(
        plan.mounts,
        vec![ro_bind(
            outer.outer("real/libgpu-impl.so.7"),
            &format!("{UBUNTU_LIB}/real/libgpu-impl.so.7")
        )]
    );
    assert_eq!(
        plan.symlinks,
        vec![link(
            &format!("{UBUNTU_LIB}/libvulkan.so.1"),
            "real/libgpu-impl.so.7"
        )]
    );
}

#[test]
fn a_chain_leaving_to_an_unbound_path_is_skipped_with_a_warning() {
    let outer = Outer::new("usr/lib");
    outer.link("libnvidia-x.so.1", "/opt/elsewhere/libnvidia-x.so.1");
    let plan = outer.plan(&mounts(DRIVER_MOUNT), UBUNTU_LIB);
    assert!(plan.symlinks.is_empty());
    assert_eq!(plan.mounts.len(), 1, "only the driver tree");
    assert_eq!(plan.warnings.len(), 1);
    let warning = &plan.warnings[0];
    assert!(
        warning.contains(outer.outer("libnvidia-x.so.1").to_str().unwrap()),
        "{warning}"
    );
    assert!(
        warning.contains("/opt/elsewhere/libnvidia-x.so.1"),
        "{warning}"
    );
    assert!(warning.contains("not under a GPU mount"), "{warning}");
}

#[test]
fn a_chain_leaving_to_a_bound_gpu_mount_is_kept() {
    let outer = Outer::new("usr/lib");
    outer
        .link("libcuda.so.1", "/usr/local/nvidia/lib64/libcuda.so.1")
        .link("libcuda.so", "libcuda.so.1");
    let plan = outer.plan(&mounts(DRIVER_MOUNT), UBUNTU_LIB);
    assert_eq!(
        plan.symlinks,
        vec![
            link(&format!("{UBUNTU_LIB}/libcuda.so"), "libcuda.so.1"),
            link(
                &format!("{UBUNTU_LIB}/libcuda.so.1"),
                "/usr/local/nvidia/lib64/libcuda.so.1"
            ),
        ]
    );
    assert!(plan.warnings.is_empty());
}

#[test]
fn a_usr_lib_dir_whose_path_says_nvidia_does_not_match_everything() {
    let outer = Outer::new("nvidia-host/usr/lib");
    outer.file("libfoo.so").file("libc.so.6");
    assert_eq!(outer.scan().usr_lib.len(), 2);
    assert_eq!(
        outer.plan(&MountTable::default(), UBUNTU_LIB),
        GpuPlan::default()
    );
}

#[test]
fn only_gpu_shared_objects_match_by_file_name() {
    let outer = Outer::new("usr/lib");
    for name in [
        "libglib-2.0.so.0",
        "libGL.so.1",
        "libGLX_nvidia.so.0",
        "libvulkan.so.1",
        "libnvidia-ml.so.535.104.05",
        "libcudart.a",
        "nvidia-smi",
    ] {
        outer.file(name);
    }
    let plan = outer.plan(&MountTable::default(), UBUNTU_LIB);
    let names: Vec<&str> = plan
        .mounts
        .iter()
        .map(|m| m.destination.file_name().unwrap().to_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "libGL.so.1",
            "libGLX_nvidia.so.0",
            "libnvidia-ml.so.535.104.05",
            "libvulkan.so.1"
        ]
    );
    assert!(plan.symlinks.is_empty() && plan.warnings.is_empty());
}

#[test]
fn subdirectories_are_preserved() {
    let outer = Outer::new("usr/lib");
    outer.file("nvidia/libfoo_nvidia.so.1");
    let plan = outer.plan(&MountTable::default(), "/usr/lib64");
    assert_eq!(
        plan.mounts,
        vec![ro_bind(
            outer.outer("nvidia/libfoo_nvidia.so.1"),
            "/usr/lib64/nvidia/libfoo_nvidia.so.1"
        )]
    );
}

#[test]
fn symlinked_directories_are_not_descended() {
    let outer = Outer::new("usr/lib");
    outer.file("real/libnvidia-a.so.1").link("alias", "real");
    let plan = outer.plan(&MountTable::default(), UBUNTU_LIB);
    assert_eq!(plan.mounts.len(), 1);
    assert!(!format!("{plan:?}").contains("alias/"));
}

#[test]
fn loops_and_dangling_links_are_skipped_with_warnings() {
    let outer = Outer::new("usr/lib");
    outer
        .link("libnvidia-a.so", "libnvidia-b.so")
        .link("libnvidia-b.so", "libnvidia-a.so")
        .link("libnvidia-d.so", "libnvidia-missing.so.1")
        .link("libvulkan.so", "linked/libvulkan.so.1")
        .link("linked", "real")
        .file("real/libvulkan.so.1");
    let plan = outer.plan(&MountTable::default(), UBUNTU_LIB);
    assert!(plan.symlinks.is_empty(), "{:?}", plan.symlinks);
    assert_eq!(plan.mounts.len(), 1, "only real/libvulkan.so.1");
    assert_eq!(plan.warnings.len(), 4, "{:?}", plan.warnings);
    assert!(
        plan.warnings
            .iter()
            .filter(|w| w.contains("symlink loop"))
            .count()
            == 2
    );
    assert!(plan
        .warnings
        .iter()
        .any(|w| w.contains("libnvidia-missing.so.1")));
    assert!(plan
        .warnings
        .iter()
        .any(|w| w.contains("linked/libvulkan.so.1")));
}

#[test]
fn long_chains_are_cut_at_forty_hops() {
    let outer = Outer::new("usr/lib");
    outer.file("libnvidia-hop41.so");
    for i in 0..41 {
        outer.link(
            &format!("libnvidia-hop{i}.so"),
            &format!("libnvidia-hop{}.so", i + 1),
        );
    }
    let plan = outer.plan(&MountTable::default(), UBUNTU_LIB);
    // hop0 needs 41 symlinks: skipped; hop1..hop40 need at most 40.
    assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
    assert!(plan.warnings[0].contains("libnvidia-hop0.so skipped: more than 40"));
    assert_eq!(plan.symlinks.len(), 40);
    assert_eq!(plan.mounts.len(), 1);
}

// ---------------------------------------------------------------- mount-table entries

const GPU_TABLE: &str = "\
1 0 8:1 / / rw,relatime - ext4 /dev/sda1 rw
2 1 0:5 / /proc rw - proc proc rw
3 2 0:40 / /proc/driver/nvidia rw - tmpfs tmpfs rw
4 3 0:41 / /proc/driver/nvidia/gpus/0000:00:04.0 ro - proc proc rw
5 3 0:42 / /proc/driver/nvidia/params ro - proc proc rw
6 3 0:43 / /proc/driver/nvidia/gpus/0000:00:05.0 ro - proc proc rw
7 1 0:6 / /dev rw - devtmpfs devtmpfs rw
8 7 0:6 /nvidia0 /dev/nvidia0 rw,nosuid - devtmpfs devtmpfs rw
9 1 8:1 /usr/bin/nvidia-smi /usr/bin/nvidia-smi ro,nosuid,nodev - ext4 /dev/sda1 rw
10 1 8:1 /run/x /run/nvidia-persistenced/socket rw,nosuid,noexec,noatime - ext4 /dev/sda1 rw
11 1 8:1 /usr/bin/nvidia-smi /usr/bin/nvidia-smi rw,nosuid - ext4 /dev/sda1 rw
12 1 8:1 /lib /var/coder/usr/lib rw - ext4 /dev/sda1 rw
13 12 8:1 /x /var/coder/usr/lib/nvidia ro - ext4 /dev/sda1 rw
14 1 8:1 /y /etc/vulkan/icd.d/nvidia_icd.json ro,nodev - ext4 /dev/sda1 rw
15 1 8:1 /z /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1 ro,nosuid,nodev - ext4 /dev/sda1 rw
16 1 8:1 /c /usr/local/cuda-12 ro - ext4 /dev/sda1 rw
";

fn table_plan(inventory: &GpuInventory) -> GpuPlan {
    plan(inventory, &mounts(GPU_TABLE), Path::new(UBUNTU_LIB))
}

fn coder_usr_lib(entries: Vec<LibEntry>) -> GpuInventory {
    GpuInventory {
        usr_lib_dir: PathBuf::from(OUTER_USR_LIB),
        usr_lib: entries,
        ..GpuInventory::default()
    }
}

#[test]
fn proc_entries_are_unmounted_deepest_first() {
    let plan = table_plan(&coder_usr_lib(vec![]));
    assert_eq!(
        plan.proc_unmounts,
        [
            "/proc/driver/nvidia/gpus/0000:00:05.0",
            "/proc/driver/nvidia/gpus/0000:00:04.0",
            "/proc/driver/nvidia/params",
            "/proc/driver/nvidia",
        ]
        .map(PathBuf::from)
    );
}

#[test]
fn other_entries_are_bound_at_their_path_once_without_dev_and_usr_lib() {
    let plan = table_plan(&coder_usr_lib(vec![]));
    let binds: Vec<(&str, Vec<String>)> = plan
        .mounts
        .iter()
        .inspect(|m| assert_eq!(m.source, m.destination))
        .map(|m| (m.destination.to_str().unwrap(), m.options.clone()))
        .collect();
    assert_eq!(
        binds,
        [
            (
                "/etc/vulkan/icd.d/nvidia_icd.json",
                strings(&["rbind", "ro", "nodev"])
            ),
            (
                "/run/nvidia-persistenced/socket",
                strings(&["rbind", "nosuid", "noexec", "noatime"])
            ),
            // The later of the two nvidia-smi entries wins.
            ("/usr/bin/nvidia-smi", strings(&["rbind", "nosuid"])),
            (
                "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
                strings(&["rbind", "ro", "nosuid", "nodev"])
            ),
            ("/usr/local/cuda-12", strings(&["rbind", "ro"])),
        ]
    );
}

#[test]
fn a_library_never_lands_where_a_mount_table_bind_does() {
    let lib = |rel: &str, kind| LibEntry {
        path: Path::new(OUTER_USR_LIB).join(rel),
        kind,
    };
    let inventory = coder_usr_lib(vec![
        lib(
            "libnvidia-ml.so",
            LibEntryKind::Symlink("libnvidia-ml.so.1".into()),
        ),
        lib("libnvidia-ml.so.1", LibEntryKind::File),
        lib(
            "libcudart.so.12",
            LibEntryKind::Symlink("/usr/local/cuda-12/lib64/libcudart.so.12".into()),
        ),
    ]);
    let plan = table_plan(&inventory);
    let ml = "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1";
    assert_eq!(
        plan.mounts
            .iter()
            .filter(|m| m.destination == Path::new(ml))
            .count(),
        1
    );
    assert_eq!(
        mount_at(&plan, ml).unwrap().source,
        Path::new(ml),
        "the mount-table bind"
    );
    assert_eq!(
        plan.symlinks,
        vec![
            link(
                "/usr/lib/x86_64-linux-gnu/libcudart.so.12",
                "/usr/local/cuda-12/lib64/libcudart.so.12"
            ),
            link(
                "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so",
                "libnvidia-ml.so.1"
            ),
        ]
    );
}

#[test]
fn library_binds_repeat_the_flags_of_their_source_mount() {
    let outer = Outer::new("usr/lib");
    outer.file("libnvidia-ml.so.1");
    let table = format!(
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n2 1 8:2 / {} ro,nosuid,nodev,noexec - ext4 /dev/sdb rw\n",
        outer.lib.display()
    );
    let plan = outer.plan(&mounts(&table), UBUNTU_LIB);
    assert_eq!(
        plan.mounts[0].options,
        strings(&["rbind", "ro", "nosuid", "nodev", "noexec"])
    );
}
