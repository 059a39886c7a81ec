//! An exec'd process's stdio: FIFOs envbox creates, the shim opens, and threads here feed and
//! drain.
//!
//! The shim opens the FIFOs only when the process starts, so every open here blocks in its own
//! thread; [`ExecIo::release`] unblocks them when the process never started.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::stat::Mode;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::RuntimeError;

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// Receives each line a process writes (without its newline; invalid UTF-8 replaced).
pub(crate) type OutputSink = Arc<dyn Fn(Stream, &str) + Send + Sync>;

/// The FIFOs of one exec.
#[derive(Debug)]
pub(super) struct ExecIo {
    pub stdin: Option<PathBuf>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl ExecIo {
    /// Makes fresh FIFOs (0600) in `dir` for `exec_id`.
    pub(crate) fn create(
        dir: &Path,
        exec_id: &str,
        with_stdin: bool,
    ) -> Result<ExecIo, RuntimeError> {
        std::fs::create_dir_all(dir).map_err(RuntimeError::io("creating", dir))?;
        let fifo = |name: &str| -> Result<PathBuf, RuntimeError> {
            let path = dir.join(format!("{exec_id}.{name}"));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(RuntimeError::io("removing the stale FIFO", &path)(e)),
            }
            nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600))
                .map_err(|e| RuntimeError::io("creating the FIFO", &path)(e.into()))?;
            Ok(path)
        };
        Ok(ExecIo {
            stdin: if with_stdin {
                Some(fifo("stdin")?)
            } else {
                None
            },
            stdout: fifo("stdout")?,
            stderr: fifo("stderr")?,
        })
    }

    /// The paths as the shim takes them.
    pub(crate) fn uris(&self) -> (String, String, String) {
        let text = |p: &Path| p.display().to_string();
        (
            self.stdin.as_deref().map(text).unwrap_or_default(),
            text(&self.stdout),
            text(&self.stderr),
        )
    }

    /// Writes `data` into the stdin FIFO once the shim opens it and `gate` opens, then closes
    /// it. A gate dropped unopened closes the FIFO with nothing written.
    pub(crate) fn feed_stdin(
        &self,
        data: Vec<u8>,
        gate: oneshot::Receiver<()>,
    ) -> Option<JoinHandle<std::io::Result<()>>> {
        let path = self.stdin.clone()?;
        Some(tokio::task::spawn_blocking(move || {
            let mut fifo = OpenOptions::new().write(true).open(&path)?;
            match gate.blocking_recv() {
                Ok(()) => fifo.write_all(&data),
                Err(_) => Ok(()),
            }
        }))
    }

    /// Forwards every line of stdout and stderr to `sink` until the process's end closes them.
    pub(crate) fn drain(&self, sink: &OutputSink) -> Vec<JoinHandle<std::io::Result<()>>> {
        [
            (Stream::Stdout, &self.stdout),
            (Stream::Stderr, &self.stderr),
        ]
        .into_iter()
        .map(|(stream, path)| {
            let path = path.clone();
            let sink = Arc::clone(sink);
            tokio::task::spawn_blocking(move || {
                let mut reader = BufReader::new(File::open(&path)?);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    if reader.read_until(b'\n', &mut line)? == 0 {
                        return Ok(());
                    }
                    let text = String::from_utf8_lossy(&line);
                    sink(stream, text.trim_end_matches(['\n', '\r']));
                }
            })
        })
        .collect()
    }

    /// Opens the other end of each FIFO for a moment, so threads blocked opening them go on
    /// (readers see end of file, the writer a broken pipe).
    pub(crate) fn release(&self) {
        let nonblocking = libc::O_NONBLOCK;
        if let Some(stdin) = &self.stdin {
            let _ = OpenOptions::new()
                .read(true)
                .custom_flags(nonblocking)
                .open(stdin);
        }
        for path in [&self.stdout, &self.stderr] {
            let _ = OpenOptions::new()
                .write(true)
                .custom_flags(nonblocking)
                .open(path);
        }
    }

    /// Removes the FIFOs.
    pub(crate) fn remove(&self) {
        for path in self.stdin.iter().chain([&self.stdout, &self.stderr]) {
            let _ = std::fs::remove_file(path);
        }
    }
}
