//! Parsing of `/etc/passwd` text: finds the entry of one user.
//!
//! Owns: the passwd line format (7 colon-separated fields; blank, `#` comment and NIS `+`/`-`
//! lines skipped; the first entry with the name wins). It works on text only and must never
//! open files; a malformed line is an error only when it is the requested user's line.

use std::path::PathBuf;

use super::PasswdEntry;

/// Why the requested user's line could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LineError {
    /// 1-based line number.
    pub(crate) line: usize,
    pub(crate) reason: String,
}

/// Finds `username` in the passwd `text`; `Ok(None)` when absent.
pub(crate) fn find_user(text: &str, username: &str) -> Result<Option<PasswdEntry>, LineError> {
    for (index, line) in text.lines().enumerate() {
        if is_skipped(line) {
            continue;
        }
        let fields: Vec<&str> = line.split(':').collect();
        if fields[0] != username {
            continue;
        }
        return parse_fields(&fields).map(Some).map_err(|reason| LineError {
            line: index + 1,
            reason,
        });
    }
    Ok(None)
}

fn is_skipped(line: &str) -> bool {
    let trimmed = line.trim();
    trimmed.is_empty() || trimmed.starts_with(['#', '+', '-'])
}

fn parse_fields(fields: &[&str]) -> Result<PasswdEntry, String> {
    let [name, _password, uid, gid, _gecos, home, shell] = fields else {
        return Err(format!(
            "expected 7 colon-separated fields, found {}",
            fields.len()
        ));
    };
    let home = if home.is_empty() { "/" } else { home };
    Ok(PasswdEntry {
        name: (*name).to_owned(),
        uid: parse_id("uid", uid)?,
        gid: parse_id("gid", gid)?,
        home: PathBuf::from(home),
        shell: (*shell).to_owned(),
    })
}

fn parse_id(what: &str, value: &str) -> Result<u32, String> {
    value
        .parse::<u32>()
        .map_err(|_| format!("{what} {value:?} is not a number in 0..=4294967295"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# comment
root:x:0:0:root:/root:/bin/bash

+nisuser::::::
-nisuser2::::::
broken:x:abc:1:::/bin/sh
coder:x:1000:1001:Coder,,,:/home/coder:/bin/zsh
coder:x:2000:2000::/other:/bin/sh
nohome:x:5:6:::/bin/sh
short:x:1:1
";

    #[test]
    fn first_entry_wins() {
        let user = find_user(TEXT, "coder").unwrap().unwrap();
        assert_eq!(user.uid, 1000);
        assert_eq!(user.gid, 1001);
        assert_eq!(user.home, PathBuf::from("/home/coder"));
        assert_eq!(user.shell, "/bin/zsh");
    }

    #[test]
    fn malformed_unrelated_line_is_skipped() {
        assert_eq!(find_user(TEXT, "root").unwrap().unwrap().uid, 0);
    }

    #[test]
    fn malformed_user_line_is_an_error_with_its_number() {
        let err = find_user(TEXT, "broken").unwrap_err();
        assert_eq!(err.line, 6);
        assert!(err.reason.contains("uid"), "{}", err.reason);
        assert_eq!(find_user(TEXT, "short").unwrap_err().line, 10);
    }

    #[test]
    fn empty_home_is_root() {
        assert_eq!(
            find_user(TEXT, "nohome").unwrap().unwrap().home,
            PathBuf::from("/")
        );
    }

    #[test]
    fn nis_lines_never_match() {
        assert_eq!(find_user(TEXT, "+nisuser").unwrap(), None);
        assert_eq!(find_user(TEXT, "absent").unwrap(), None);
    }
}
