//! Parsing of os-release text (`KEY=value` lines, shell-like quoting) into [`OsRelease`].
//!
//! Owns: the os-release line format: optional single quotes (literal) or double quotes (with
//! backslash escapes), `#` comments, `ID` lower-cased (default `linux` as the os-release spec
//! says), `ID_LIKE` split on whitespace. It works on text only and must never open files.

use super::OsRelease;

/// The `ID` the os-release specification tells readers to assume when it is missing.
const DEFAULT_ID: &str = "linux";

/// Parses os-release `text`. Lines that are not `KEY=value` are ignored.
pub(crate) fn parse(text: &str) -> OsRelease {
    let mut id = None;
    let mut id_like = Vec::new();
    for (key, value) in text.lines().filter_map(parse_line) {
        match key {
            "ID" => id = Some(value.to_lowercase()),
            "ID_LIKE" => {
                id_like = value.split_whitespace().map(str::to_lowercase).collect();
            }
            _ => {}
        }
    }
    OsRelease {
        id: id.unwrap_or_else(|| DEFAULT_ID.to_owned()),
        id_like,
    }
}

fn parse_line(line: &str) -> Option<(&str, String)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (key, raw) = line.split_once('=')?;
    Some((key.trim(), unquote(raw.trim())))
}

fn unquote(raw: &str) -> String {
    if let Some(inner) = strip_quotes(raw, '\'') {
        inner.to_owned()
    } else if let Some(inner) = strip_quotes(raw, '"') {
        unescape(inner)
    } else {
        raw.to_owned()
    }
}

fn strip_quotes(raw: &str, quote: char) -> Option<&str> {
    raw.strip_prefix(quote)?.strip_suffix(quote)
}

/// Removes backslash escapes as a shell does inside double quotes.
fn unescape(inner: &str) -> String {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(next @ ('"' | '\\' | '$' | '`')) => out.push(next),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unquoted_values() {
        let os = parse("NAME=Debian\nID=debian\nVERSION_ID=12\n");
        assert_eq!(os.id, "debian");
        assert!(os.id_like.is_empty());
    }

    #[test]
    fn double_quotes_with_escapes() {
        let os = parse("ID=\"Ubu\\\"ntu\"\nID_LIKE=\"Debian  \\$x\"\n");
        assert_eq!(os.id, "ubu\"ntu");
        assert_eq!(os.id_like, ["debian", "$x"]);
    }

    #[test]
    fn single_quotes_are_literal() {
        let os = parse("ID='rhel'\nID_LIKE='fedora \\x'\n");
        assert_eq!(os.id, "rhel");
        assert_eq!(os.id_like, ["fedora", "\\x"]);
    }

    #[test]
    fn comments_blank_and_junk_lines_ignored_and_id_defaults_to_linux() {
        let os = parse("# ID=fake\n\nnot a pair\n ID_LIKE = arch \n");
        assert_eq!(os.id, "linux");
        assert_eq!(os.id_like, ["arch"]);
    }

    #[test]
    fn rhel_like() {
        let text = "NAME=\"Rocky Linux\"\nID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n";
        let os = parse(text);
        assert_eq!(os.id, "rocky");
        assert_eq!(os.id_like, ["rhel", "centos", "fedora"]);
    }
}
