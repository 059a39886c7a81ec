//! Saying why the workspace's init ended: which init, its exit status, whether that was right
//! after start, its last output lines, and, for systemd under runc, that such images need
//! sysbox-runc.
//!
//! Owns: [`InitWatch`], what is known of the init from its start (its path, where the shim
//! appends its output, where that output began) and the [`InitEnded`] report built from it.
//! The init's output is read back from its log file, only its tail (`supervise::log`, as
//! daemon logs are). It never signals, waits for or deletes the task (the launcher does).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::Runtime;
use crate::rootfs;
use crate::runtime::ExitStatus;

/// How many of the init's last output lines a report carries.
pub(super) const TAIL_LINES: usize = 20;

/// A longer line is cut to this many characters.
const LINE_CHARS: usize = 240;

/// An init that ends within this long after its start ended "right after start".
const RIGHT_AFTER_START: Duration = Duration::from_secs(10);

/// What runc users with a systemd image are told.
pub(super) const SYSTEMD_NEEDS_SYSBOX: &str = "systemd images need sysbox-runc \
     (ENVBOX_RUNTIME=sysbox-runc): runc cannot boot systemd in an unprivileged container";

/// The init as started.
#[derive(Debug)]
pub(super) struct InitWatch {
    /// `process.args` of the init (`/sbin/init`, or `sleep infinity`).
    pub args: Vec<String>,
    /// The assembled rootfs the init runs in.
    pub rootfs: PathBuf,
    pub runtime: Runtime,
    /// The init's output, from where this start's began.
    pub log: InitLog,
    /// When the task was started (`None` before).
    pub started: Option<Instant>,
}

impl InitWatch {
    /// The report on the init's end with `status`. `before_bootstrap`: the bootstrap script
    /// could not start because of it. Waits a moment for the shim to finish copying the
    /// init's last output.
    pub(crate) async fn ended(&self, status: ExitStatus, before_bootstrap: bool) -> InitEnded {
        let log = self.log.clone();
        let last_output = tokio::task::spawn_blocking(move || {
            log.settle();
            log.last_lines(TAIL_LINES)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        let init = self.args.first().map(String::as_str).unwrap_or_default();
        InitEnded {
            init: self.args.join(" "),
            status,
            right_after_start: before_bootstrap
                || self
                    .started
                    .is_some_and(|t| t.elapsed() < RIGHT_AFTER_START),
            before_bootstrap,
            hint: systemd_hint(self.runtime, rootfs::init_is_systemd(&self.rootfs, init)),
            log: self.log.path.clone(),
            last_output: last_output.map_err(|e| e.to_string()),
        }
    }
}

/// The hint for an init that ended: systemd cannot boot under runc.
pub(super) fn systemd_hint(runtime: Runtime, init_is_systemd: bool) -> Option<&'static str> {
    (init_is_systemd && runtime == Runtime::Runc).then_some(SYSTEMD_NEEDS_SYSBOX)
}

/// The init's output file and the offset this start's output begins at.
#[derive(Debug, Clone)]
pub(super) struct InitLog {
    pub path: PathBuf,
    pub from: u64,
}

impl InitLog {
    /// Marks the current end of `path` (absent: 0): the init started next writes after it.
    pub(crate) fn mark(path: &Path) -> InitLog {
        InitLog {
            path: path.to_owned(),
            from: std::fs::metadata(path).map_or(0, |m| m.len()),
        }
    }

    /// Waits (at most a second) until the file stops growing: the shim copies the init's
    /// output from a pipe, possibly still after the exit was reported.
    fn settle(&self) {
        let len = || std::fs::metadata(&self.path).map_or(0, |m| m.len());
        let mut last = len();
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(100));
            let now = len();
            if now == last {
                return;
            }
            last = now;
        }
    }

    /// The last `n` non-empty lines written since the mark, read as daemon logs are (at most
    /// [`crate::supervise::log::TAIL_BYTES`] of the end), each cut to [`LINE_CHARS`].
    pub(crate) fn last_lines(&self, n: usize) -> std::io::Result<Vec<String>> {
        match crate::supervise::log::tail_since(&self.path, self.from, n) {
            Ok(lines) => Ok(lines.iter().map(|l| cut(l)).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

/// `line` cut to [`LINE_CHARS`] characters.
fn cut(line: &str) -> String {
    match line.char_indices().nth(LINE_CHARS) {
        Some((at, _)) => format!("{}...", &line[..at]),
        None => line.to_owned(),
    }
}

/// Why the workspace ended: its init exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InitEnded {
    /// The init's command line (`/sbin/init`).
    pub init: String,
    pub status: ExitStatus,
    /// Within moments of its start.
    pub right_after_start: bool,
    /// Before the bootstrap script could start.
    pub before_bootstrap: bool,
    /// What to do about it, when known.
    pub hint: Option<&'static str>,
    /// The init's output file.
    pub log: PathBuf,
    /// Its last lines, or why they could not be read.
    pub last_output: Result<Vec<String>, String>,
}

impl fmt::Display for InitEnded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the workspace's init ({}) ", self.init)?;
        match self.status.0 {
            code @ 129..=192 => write!(f, "was killed by signal {}", code - 128)?,
            code => write!(f, "exited with status {code}")?,
        }
        if self.right_after_start {
            f.write_str(" right after start")?;
        }
        if self.before_bootstrap {
            f.write_str(", before the bootstrap script could run")?;
        } else {
            f.write_str("; the workspace was stopped")?;
        }
        if let Some(hint) = self.hint {
            write!(f, "; {hint}")?;
        }
        match &self.last_output {
            Ok(lines) if lines.is_empty() => {
                write!(f, "; it wrote no output ({})", self.log.display())
            }
            Ok(lines) => {
                write!(f, "; its last output ({}):", self.log.display())?;
                lines.iter().try_for_each(|line| write!(f, "\n  {line}"))
            }
            Err(e) => write!(
                f,
                "; its output could not be read ({}: {e})",
                self.log.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn ended(status: u32, hint: Option<&'static str>, lines: &[&str]) -> InitEnded {
        InitEnded {
            init: "/sbin/init".into(),
            status: ExitStatus(status),
            right_after_start: true,
            before_bootstrap: true,
            hint,
            log: "/run/envbox/init.log".into(),
            last_output: Ok(lines.iter().map(|l| l.to_string()).collect()),
        }
    }

    #[test]
    fn the_report_names_the_init_its_status_and_its_last_output() {
        let text = ended(
            255,
            None,
            &["Failed to mount cgroup", "Freezing execution."],
        )
        .to_string();
        assert_eq!(
            text,
            "the workspace's init (/sbin/init) exited with status 255 right after start, before \
             the bootstrap script could run; its last output (/run/envbox/init.log):\n  Failed \
             to mount cgroup\n  Freezing execution."
        );
    }

    #[test]
    fn a_later_end_by_a_signal_says_so_and_carries_the_hint() {
        let mut report = ended(137, Some(SYSTEMD_NEEDS_SYSBOX), &[]);
        report.right_after_start = false;
        report.before_bootstrap = false;
        let text = report.to_string();
        assert!(
            text.starts_with(
                "the workspace's init (/sbin/init) was killed by signal 9; the workspace was \
                 stopped; systemd images need sysbox-runc (ENVBOX_RUNTIME=sysbox-runc)"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("it wrote no output (/run/envbox/init.log)"),
            "{text}"
        );
    }

    /// A fake rootfs whose `/sbin/init` links to systemd.
    fn systemd_rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("lib/systemd")).unwrap();
        std::fs::create_dir_all(dir.path().join("sbin")).unwrap();
        std::fs::write(dir.path().join("lib/systemd/systemd"), "#!elf").unwrap();
        symlink("/lib/systemd/systemd", dir.path().join("sbin/init")).unwrap();
        dir
    }

    fn watch(rootfs: &Path, runtime: Runtime, args: &[&str]) -> InitWatch {
        InitWatch {
            args: args.iter().map(|a| a.to_string()).collect(),
            rootfs: rootfs.to_owned(),
            runtime,
            log: InitLog::mark(&rootfs.join("no-init.log")),
            started: Some(Instant::now()),
        }
    }

    #[tokio::test]
    async fn systemd_under_runc_gets_the_sysbox_hint() {
        let root = systemd_rootfs();
        let report = watch(root.path(), Runtime::Runc, &["/sbin/init"])
            .ended(ExitStatus(255), true)
            .await;
        assert_eq!(report.hint, Some(SYSTEMD_NEEDS_SYSBOX));
        assert!(report.right_after_start);
    }

    #[tokio::test]
    async fn systemd_under_sysbox_runc_or_another_init_gets_none() {
        let root = systemd_rootfs();
        let report = watch(root.path(), Runtime::SysboxRunc, &["/sbin/init"])
            .ended(ExitStatus(255), true)
            .await;
        assert_eq!(report.hint, None);
        let report = watch(root.path(), Runtime::Runc, &["sleep", "infinity"])
            .ended(ExitStatus(1), false)
            .await;
        assert_eq!(report.hint, None);
        assert_eq!(report.init, "sleep infinity");
    }

    #[test]
    fn the_hint_is_for_systemd_under_runc_only() {
        assert_eq!(
            systemd_hint(Runtime::Runc, true),
            Some(SYSTEMD_NEEDS_SYSBOX)
        );
        assert_eq!(systemd_hint(Runtime::SysboxRunc, true), None);
        assert_eq!(systemd_hint(Runtime::Runc, false), None);
    }

    #[test]
    fn only_this_starts_output_is_read_and_only_its_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("init.log");
        std::fs::write(&path, "an earlier start's line\n").unwrap();
        let log = InitLog::mark(&path);
        assert_eq!(log.last_lines(5).unwrap(), Vec::<String>::new());
        let text: String = (1..=30).map(|i| format!("line {i}\n\n")).collect();
        std::fs::write(&path, format!("an earlier start's line\n{text}")).unwrap();
        let lines = log.last_lines(TAIL_LINES).unwrap();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines.first().unwrap(), "line 11");
        assert_eq!(lines.last().unwrap(), "line 30");
    }

    #[test]
    fn a_huge_output_is_read_from_its_tail_only_with_long_lines_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("init.log");
        let log = InitLog::mark(&path);
        assert_eq!(log.from, 0);
        let long = "x".repeat(crate::supervise::log::TAIL_BYTES as usize * 4);
        std::fs::write(
            &path,
            format!("{long}\nsecond to last\n{}\n", "é".repeat(500)),
        )
        .unwrap();
        let lines = log.last_lines(TAIL_LINES).unwrap();
        assert_eq!(lines.len(), 2, "the line cut by the byte limit is left out");
        assert_eq!(lines[0], "second to last");
        assert_eq!(lines[1], format!("{}...", "é".repeat(LINE_CHARS)));
    }
}
