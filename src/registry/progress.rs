//! Download progress: counters per blob, and a reporter that shows them.
//!
//! Owns: bytes done/total per blob and overall, updated by transfers; the reporter writes a
//! progress line (behaviour doc §3 format, `type: info`) at most every interval when anything
//! changed, or redraws a live bar when stderr is a terminal. It never affects a transfer.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::digest::Digest;
use crate::progress::{self as lines, mb, Kind};

#[derive(Debug, Clone)]
struct Blob {
    digest: Digest,
    done: u64,
    total: u64,
}

/// Shared counters. Cloning shares them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Progress {
    blobs: Arc<Mutex<Vec<Blob>>>,
}

impl Progress {
    pub(crate) fn new(blobs: impl IntoIterator<Item = (Digest, u64)>) -> Progress {
        let blobs = blobs
            .into_iter()
            .map(|(digest, total)| Blob {
                digest,
                done: 0,
                total,
            })
            .collect();
        Progress {
            blobs: Arc::new(Mutex::new(blobs)),
        }
    }

    fn update(&self, digest: &Digest, change: impl FnOnce(&mut Blob)) {
        if let Ok(mut blobs) = self.blobs.lock() {
            if let Some(blob) = blobs.iter_mut().find(|b| &b.digest == digest) {
                change(blob);
            }
        }
    }

    pub(crate) fn advance(&self, digest: &Digest, bytes: u64) {
        self.update(digest, |b| b.done = (b.done + bytes).min(b.total));
    }

    pub(crate) fn restart(&self, digest: &Digest) {
        self.update(digest, |b| b.done = 0);
    }

    pub(crate) fn cached(&self, digest: &Digest) {
        self.update(digest, |b| b.done = b.total);
    }

    /// (done, total) over all blobs.
    pub(crate) fn totals(&self) -> (u64, u64) {
        self.blobs
            .lock()
            .map(|b| {
                b.iter()
                    .fold((0, 0), |(d, t), blob| (d + blob.done, t + blob.total))
            })
            .unwrap_or_default()
    }

    /// One line: overall, then each unfinished blob.
    pub(crate) fn line(&self, reference: &str) -> String {
        let (done, total) = self.totals();
        let percent = (done * 100).checked_div(total).unwrap_or(100);
        let mut text = format!(
            "Pulling {reference}: {} / {} ({percent}%)",
            mb(done),
            mb(total)
        );
        if let Ok(blobs) = self.blobs.lock() {
            for blob in blobs.iter().filter(|b| b.done < b.total) {
                text.push_str(&format!(
                    "; {}: {} / {}",
                    &blob.digest.to_string()[..19],
                    mb(blob.done),
                    mb(blob.total)
                ));
            }
        }
        text
    }
}

/// Shows progress until dropped (aborts its task).
pub(crate) struct Reporter {
    task: tokio::task::JoinHandle<()>,
    terminal: bool,
    progress: Progress,
    reference: String,
}

impl Reporter {
    pub(crate) fn start(progress: Progress, reference: String, interval: Duration) -> Reporter {
        let terminal = std::io::stderr().is_terminal();
        let (shown, name) = (progress.clone(), reference.clone());
        let task = tokio::spawn(async move {
            let tick = if terminal {
                Duration::from_millis(250)
            } else {
                interval
            };
            let mut last = None;
            loop {
                tokio::time::sleep(tick).await;
                let totals = progress.totals();
                if terminal {
                    draw_bar(&reference, totals);
                } else if last != Some(totals) {
                    lines::emit(Kind::Info, &progress.line(&reference));
                }
                last = Some(totals);
            }
        });
        Reporter {
            task,
            terminal,
            progress: shown,
            reference: name,
        }
    }
}

fn draw_bar(reference: &str, (done, total): (u64, u64)) {
    const WIDTH: u64 = 30;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
    let bar: String = (0..WIDTH)
        .map(|i| if i < filled { '=' } else { ' ' })
        .collect();
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r{reference} [{bar}] {} / {}", mb(done), mb(total));
    let _ = err.flush();
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.task.abort();
        if self.terminal {
            draw_bar(&self.reference, self.progress.totals());
            let _ = writeln!(std::io::stderr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_lines() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let p = Progress::new([(a.clone(), 2_000_000), (b.clone(), 1_000_000)]);
        p.advance(&a, 1_000_000);
        p.cached(&b);
        assert_eq!(p.totals(), (2_000_000, 3_000_000));
        let line = p.line("docker.io/library/x:1");
        assert!(
            line.starts_with("Pulling docker.io/library/x:1: 2.0 MB / 3.0 MB (66%)"),
            "{line}"
        );
        assert!(
            line.contains(&a.to_string()[..19]) && !line.contains(&b.to_string()[..19]),
            "{line}"
        );
        p.restart(&a);
        assert_eq!(p.totals(), (1_000_000, 3_000_000));
        p.advance(&a, 5_000_000);
        assert_eq!(p.totals().0, 3_000_000, "never above the total");
    }
}
