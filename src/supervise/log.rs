//! A daemon's log file: where its stdout and stderr go, and the tail quoted in errors.
//!
//! Owns: opening the log for one start (the previous run's log kept as `<name>.log.1`, the
//! current one started empty, so a restart after a crash never mixes runs), the header line
//! envbox writes first, and reading the last lines back. It never interprets the daemon's
//! output.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Lines of the log quoted when a daemon dies.
pub(crate) const TAIL_LINES: usize = 20;

/// At most this much of the end of the log is read for the tail.
pub(crate) const TAIL_BYTES: u64 = 16 * 1024;

/// `<log>.1`: where the previous run's log is kept.
pub(crate) fn previous_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Opens `log` for a new run: creates its directory, moves an existing log to `<log>.1`
/// (replacing an older one), creates the file empty and writes `header` as its first line.
/// The returned file is in append mode, to be shared by the daemon's stdout and stderr.
pub(crate) fn open_for_run(log: &Path, header: &str) -> io::Result<File> {
    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir)?;
    }
    match fs::rename(log, previous_path(log)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .truncate(false)
        .mode(0o640)
        .open(log)?;
    writeln!(file, "{header}")?;
    Ok(file)
}

/// The last `n` lines of `log` (empty when it cannot be read), decoded lossily.
pub(crate) fn tail(log: &Path, n: usize) -> Vec<String> {
    tail_since(log, 0, n).unwrap_or_default()
}

/// The last `n` non-empty lines of what `log` holds from byte `from` on (all of it when the
/// file has shrunk below `from`), read from at most its last [`TAIL_BYTES`].
pub(crate) fn tail_since(log: &Path, from: u64, n: usize) -> io::Result<Vec<String>> {
    read_end(log, from).map(|bytes| tail_lines(&bytes, n))
}

fn read_end(log: &Path, from: u64) -> io::Result<Vec<u8>> {
    let mut file = File::open(log)?;
    let len = file.metadata()?.len();
    let from = if len < from { 0 } else { from };
    let start = from.max(len.saturating_sub(TAIL_BYTES));
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(TAIL_BYTES).read_to_end(&mut bytes)?;
    if start > from {
        // The first line is cut: drop it.
        let cut = bytes.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
        bytes.drain(..cut);
    }
    Ok(bytes)
}

/// The last `n` non-empty lines of `bytes`, without their line ends.
pub(crate) fn tail_lines(bytes: &[u8], n: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| (*l).to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_non_empty_lines() {
        let text = b"one\ntwo\r\n\nthree\nfour";
        assert_eq!(tail_lines(text, 2), ["three", "four"]);
        assert_eq!(tail_lines(text, 10), ["one", "two", "three", "four"]);
        assert!(tail_lines(b"", 3).is_empty());
        assert_eq!(tail_lines(b"bad \xff byte\n", 1), ["bad \u{fffd} byte"]);
    }

    #[test]
    fn a_new_run_starts_empty_and_keeps_the_previous_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("logs/d.log");
        let mut first = open_for_run(&log, "header 1").unwrap();
        writeln!(first, "from run 1").unwrap();
        drop(first);
        let mut second = open_for_run(&log, "header 2").unwrap();
        writeln!(second, "from run 2").unwrap();
        assert_eq!(fs::read_to_string(&log).unwrap(), "header 2\nfrom run 2\n");
        assert_eq!(
            fs::read_to_string(previous_path(&log)).unwrap(),
            "header 1\nfrom run 1\n"
        );
        assert_eq!(tail(&log, 1), ["from run 2"]);
    }

    #[test]
    fn tail_of_a_long_log_reads_only_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("big.log");
        let mut text = String::new();
        for i in 0..10_000 {
            text.push_str(&format!("line {i}\n"));
        }
        fs::write(&log, text).unwrap();
        assert_eq!(tail(&log, 2), ["line 9998", "line 9999"]);
        assert!(tail(&dir.path().join("missing.log"), 2).is_empty());
    }
}
