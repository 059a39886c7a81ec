//! Planning the GPU libraries of the host usr-lib tree and their symlink chains.
//!
//! Owns: choosing which usr-lib entries the inner container gets and in what form. A matching
//! entry's symlink chain is followed hop by hop, lexically: hops inside the usr-lib dir become
//! symlinks in the inner lib dir (relative structure preserved, relative link text kept), the
//! regular file at the end becomes a read-only bind, and a hop out of the dir is kept only when
//! it lands under a GPU mount-table bind (it then resolves inside the inner container too).
//! Anything else is skipped with a warning. It never reads the filesystem: the chain is
//! followed through the inventory, so a plan is the same wherever it is computed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::mountinfo::MountTable;

use super::names::is_gpu_library_name;
use super::paths::{link_destination, normalize, rebase};
use super::{GpuMount, GpuSymlink, LibEntry, LibEntryKind};

/// The most symlinks followed in one chain (the kernel's limit).
const MAX_HOPS: usize = 40;

/// Inputs of library planning. Paths are normalised by the caller.
pub(super) struct Context<'a> {
    pub usr_lib_dir: &'a Path,
    pub inner_lib_dir: &'a Path,
    pub entries: &'a [LibEntry],
    pub mounts: &'a MountTable,
    /// Destinations of the GPU mount-table binds.
    pub bound: &'a [PathBuf],
}

/// The library part of the plan, each list sorted by destination.
#[derive(Debug, Default)]
pub(super) struct LibPlan {
    pub mounts: Vec<GpuMount>,
    pub symlinks: Vec<GpuSymlink>,
    pub warnings: Vec<String>,
}

/// One thing to create in the inner container.
#[derive(Debug, Clone)]
enum Step {
    Bind(GpuMount),
    Link(GpuSymlink),
}

impl Step {
    fn destination(&self) -> &Path {
        match self {
            Step::Bind(mount) => &mount.destination,
            Step::Link(link) => &link.path,
        }
    }
}

pub(super) fn plan(context: &Context<'_>) -> LibPlan {
    let planner = Planner::new(context);
    let mut steps: BTreeMap<PathBuf, Step> = BTreeMap::new();
    let mut warnings = Vec::new();
    for entry in context.entries.iter().filter(|e| is_candidate(e)) {
        match planner.chain(&normalize(&entry.path)) {
            Ok(chain) => planner.keep(chain, &mut steps, &mut warnings),
            Err(reason) => warnings.push(format!(
                "GPU library {} skipped: {reason}",
                entry.path.display()
            )),
        }
    }
    split(steps, warnings)
}

/// A file or symlink whose file name matches the library pattern.
fn is_candidate(entry: &LibEntry) -> bool {
    let name = entry.path.file_name().map(|n| n.to_string_lossy());
    entry.kind != LibEntryKind::Dir && name.is_some_and(|n| is_gpu_library_name(&n))
}

fn split(steps: BTreeMap<PathBuf, Step>, warnings: Vec<String>) -> LibPlan {
    let mut seen = HashSet::new();
    let mut plan = LibPlan {
        warnings: warnings
            .into_iter()
            .filter(|w| seen.insert(w.clone()))
            .collect(),
        ..LibPlan::default()
    };
    for step in steps.into_values() {
        match step {
            Step::Bind(mount) => plan.mounts.push(mount),
            Step::Link(link) => plan.symlinks.push(link),
        }
    }
    plan
}

struct Planner<'a> {
    context: &'a Context<'a>,
    kinds: HashMap<PathBuf, &'a LibEntryKind>,
}

impl<'a> Planner<'a> {
    fn new(context: &'a Context<'a>) -> Self {
        let kinds = context
            .entries
            .iter()
            .map(|entry| (normalize(&entry.path), &entry.kind))
            .collect();
        Self { context, kinds }
    }

    /// The steps that give the inner container `start` and every hop of its chain, or why not.
    fn chain(&self, start: &Path) -> Result<Vec<Step>, String> {
        let mut steps = Vec::new();
        let mut seen = HashSet::from([start.to_path_buf()]);
        let mut current = start.to_path_buf();
        loop {
            let destination = self.inner_path(&current)?;
            let target = match self.kinds.get(&current) {
                Some(LibEntryKind::File) => {
                    steps.push(Step::Bind(self.bind(&current, destination)));
                    return Ok(steps);
                }
                Some(LibEntryKind::Dir) => {
                    return Err(format!("{} is a directory", current.display()))
                }
                Some(LibEntryKind::Symlink(target)) => target,
                None => return Err(self.not_in_tree(&current)),
            };
            if steps.len() == MAX_HOPS {
                let start = start.display();
                return Err(format!("more than {MAX_HOPS} symlinks from {start}"));
            }
            match self.hop(&current, target, destination)? {
                Hop::Inside { link, next } => {
                    steps.push(Step::Link(link));
                    if !seen.insert(next.clone()) {
                        return Err(describe_hop(&current, target, "symlink loop"));
                    }
                    current = next;
                }
                Hop::IntoGpuMount(link) => {
                    steps.push(Step::Link(link));
                    return Ok(steps);
                }
            }
        }
    }

    /// The inner symlink for the outer symlink `link -> target`, placed at `destination`.
    fn hop(&self, link: &Path, target: &Path, destination: PathBuf) -> Result<Hop, String> {
        let next = link_destination(link, target);
        if let Some(inner_next) =
            rebase(&next, self.context.usr_lib_dir, self.context.inner_lib_dir)
        {
            let target = inner_link_target(&destination, target, inner_next);
            let link = GpuSymlink {
                path: destination,
                target,
            };
            Ok(Hop::Inside { link, next })
        } else if self.is_bound(&next) {
            let link = GpuSymlink {
                path: destination,
                target: next,
            };
            Ok(Hop::IntoGpuMount(link))
        } else {
            let why = format!(
                "{} is outside {} and not under a GPU mount",
                next.display(),
                self.context.usr_lib_dir.display()
            );
            Err(describe_hop(link, target, &why))
        }
    }

    /// Where an outer usr-lib path goes inside.
    fn inner_path(&self, outer: &Path) -> Result<PathBuf, String> {
        rebase(outer, self.context.usr_lib_dir, self.context.inner_lib_dir).ok_or_else(|| {
            format!(
                "{} is outside {}",
                outer.display(),
                self.context.usr_lib_dir.display()
            )
        })
    }

    fn not_in_tree(&self, path: &Path) -> String {
        format!(
            "{} is not an entry of {} (dangling, or through a symlinked directory)",
            path.display(),
            self.context.usr_lib_dir.display()
        )
    }

    /// A read-only bind of a library file, repeating the flags its mount locks.
    fn bind(&self, source: &Path, destination: PathBuf) -> GpuMount {
        let mut options = vec!["rbind".to_string(), "ro".to_string()];
        if let Some(mount) = self.context.mounts.containing(source) {
            options.extend(mount.locked_flags().into_iter().map(str::to_string));
        }
        GpuMount {
            source: source.to_path_buf(),
            destination,
            options,
        }
    }

    /// True when `path` is a GPU mount-table bind destination or inside one.
    fn is_bound(&self, path: &Path) -> bool {
        self.context.bound.iter().any(|bind| path.starts_with(bind))
    }

    /// Adds a successful chain's steps, each destination once, none where a mount-table bind
    /// already puts something.
    fn keep(
        &self,
        chain: Vec<Step>,
        steps: &mut BTreeMap<PathBuf, Step>,
        warnings: &mut Vec<String>,
    ) {
        for step in chain {
            let destination = step.destination();
            if self.context.bound.iter().any(|bind| bind == destination) {
                continue;
            }
            if self.is_bound(destination) {
                warnings.push(format!(
                    "GPU library destination {} is inside a GPU mount; not created",
                    destination.display()
                ));
                continue;
            }
            steps.entry(destination.to_path_buf()).or_insert(step);
        }
    }
}

/// Where one symlink of a chain leads.
enum Hop {
    /// To `next`, another entry of the usr-lib dir: the chain goes on.
    Inside { link: GpuSymlink, next: PathBuf },
    /// Under a GPU mount-table bind: the chain ends, it resolves inside the container too.
    IntoGpuMount(GpuSymlink),
}

fn describe_hop(link: &Path, target: &Path, why: &str) -> String {
    format!("{} -> {}: {why}", link.display(), target.display())
}

/// The target of an inner symlink whose next hop is `inner_next`: the original text when it is
/// relative and still resolves to `inner_next` from the link's inner place, else `inner_next`.
fn inner_link_target(link: &Path, text: &Path, inner_next: PathBuf) -> PathBuf {
    if text.is_relative() && link_destination(link, text) == inner_next {
        text.to_path_buf()
    } else {
        inner_next
    }
}
