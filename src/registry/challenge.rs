//! The `WWW-Authenticate` header of a registry's `/v2/`: its challenges, parsed strictly.
//!
//! Owns: [`parse`], a pure function from the header's text to the challenges it holds, by the
//! grammar of RFC 9110 §11 (`#challenge`, each an auth scheme then a `token68` or a list of
//! `name=token` / `name="quoted string"` parameters; names are case-insensitive and appear once
//! per challenge). Anything else is refused with the byte offset where it went wrong: a header
//! this cannot read is a registry to report, not to guess about. It never decides which
//! challenge to answer (`super::auth` does).

/// One challenge: a scheme (lower-case) and its parameters (names lower-case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// The value of parameter `name` (lower-case).
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Why a header does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed WWW-Authenticate header at byte {at}: {what}")]
pub(crate) struct ChallengeError {
    pub at: usize,
    pub what: &'static str,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token68_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn error(&self, what: &'static str) -> ChallengeError {
        ChallengeError { at: self.at, what }
    }

    /// Optional whitespace (spaces and tabs).
    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    fn take_while(&mut self, keep: impl Fn(u8) -> bool) -> &str {
        let start = self.at;
        while self.peek().is_some_and(&keep) {
            self.at += 1;
        }
        // Only ASCII bytes are kept, so the slice is valid UTF-8.
        std::str::from_utf8(&self.bytes[start..self.at]).unwrap_or_default()
    }

    fn token(&mut self, what: &'static str) -> Result<String, ChallengeError> {
        let token = self.take_while(is_tchar);
        match token.is_empty() {
            true => Err(self.error(what)),
            false => Ok(token.to_owned()),
        }
    }

    /// A quoted string (the cursor on its opening quote), unescaped.
    fn quoted(&mut self) -> Result<String, ChallengeError> {
        self.at += 1;
        let mut value = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated quoted string")),
                Some(b'"') => {
                    self.at += 1;
                    return String::from_utf8(value)
                        .map_err(|_| self.error("quoted string is not UTF-8"));
                }
                Some(b'\\') => {
                    self.at += 1;
                    match self.peek() {
                        Some(b) if b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80 => {
                            value.push(b);
                            self.at += 1;
                        }
                        _ => return Err(self.error("bad escape in quoted string")),
                    }
                }
                Some(b) if b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80 => {
                    value.push(b);
                    self.at += 1;
                }
                Some(_) => return Err(self.error("control character in quoted string")),
            }
        }
    }

    /// Whether a parameter (`name BWS "="`, not a token68's trailing `=`) starts here.
    fn at_param(&self) -> bool {
        let mut probe = Cursor {
            bytes: self.bytes,
            at: self.at,
        };
        if probe.take_while(is_tchar).is_empty() {
            return false;
        }
        probe.skip_ows();
        if probe.peek() != Some(b'=') {
            return false;
        }
        probe.at += 1;
        probe.skip_ows();
        matches!(probe.peek(), Some(b) if b == b'"' || is_tchar(b))
    }
}

/// Every challenge of a `WWW-Authenticate` header, in order (see the module doc).
pub(crate) fn parse(header: &str) -> Result<Vec<Challenge>, ChallengeError> {
    let mut c = Cursor {
        bytes: header.as_bytes(),
        at: 0,
    };
    let mut challenges: Vec<Challenge> = Vec::new();
    loop {
        // Empty list elements are allowed: `, ,Bearer`.
        while matches!(c.peek(), Some(b' ' | b'\t' | b',')) {
            c.at += 1;
        }
        if c.peek().is_none() {
            break;
        }
        let mut challenge = Challenge {
            scheme: c.token("expected an auth scheme")?.to_ascii_lowercase(),
            params: Vec::new(),
        };
        if matches!(c.peek(), Some(b' ' | b'\t')) {
            c.skip_ows();
            if !c.at_param() && c.peek().is_some_and(is_token68_char) {
                // token68 (`Basic dXNlcjpwYXNz`): kept as an unnamed parameter.
                let mut value = c.take_while(is_token68_char).to_owned();
                value.push_str(c.take_while(|b| b == b'='));
                challenge.params.push((String::new(), value));
                c.skip_ows();
            } else {
                parse_params(&mut c, &mut challenge)?;
            }
        }
        match c.peek() {
            None | Some(b',') => challenges.push(challenge),
            Some(_) => return Err(c.error("expected a comma between challenges")),
        }
    }
    if challenges.is_empty() {
        return Err(c.error("no challenge"));
    }
    Ok(challenges)
}

/// The `#auth-param` list of one challenge; stops before a comma that starts the next
/// challenge (a comma followed by something that is not `name=`).
fn parse_params(c: &mut Cursor, challenge: &mut Challenge) -> Result<(), ChallengeError> {
    loop {
        if !c.at_param() {
            return match c.peek() {
                None | Some(b',') => Ok(()),
                Some(_) => Err(c.error("expected name=value")),
            };
        }
        let name = c.token("expected a parameter name")?.to_ascii_lowercase();
        c.skip_ows();
        c.at += 1; // `=`, checked by at_param
        c.skip_ows();
        let value = match c.peek() {
            Some(b'"') => c.quoted()?,
            _ => c.token("expected a token or a quoted string")?,
        };
        if challenge.params.iter().any(|(key, _)| *key == name) {
            return Err(c.error("a parameter appears twice in one challenge"));
        }
        challenge.params.push((name, value));
        c.skip_ows();
        match c.peek() {
            None => return Ok(()),
            Some(b',') => {
                // Another parameter, or the next challenge.
                let comma = c.at;
                c.at += 1;
                while matches!(c.peek(), Some(b' ' | b'\t' | b',')) {
                    c.at += 1;
                }
                if !c.at_param() {
                    c.at = comma;
                    return Ok(());
                }
            }
            Some(_) => return Err(c.error("expected a comma after a parameter")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(header: &str) -> Challenge {
        let mut all = parse(header).unwrap();
        assert_eq!(all.len(), 1, "{header}: {all:?}");
        all.remove(0)
    }

    #[test]
    fn registry_challenges_parse() {
        let c = one(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull""#,
        );
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("https://auth.example.com/token"));
        assert_eq!(c.param("service"), Some("registry.example.com"));
        assert_eq!(c.param("scope"), Some("repository:a/b:pull"));
        let basic = one(r#"Basic realm="Registry Realm""#);
        assert_eq!(basic.scheme, "basic");
        assert_eq!(basic.param("realm"), Some("Registry Realm"));
    }

    #[test]
    fn case_spaces_tokens_and_escapes() {
        let c = one(r#"BEARER  Realm = "a\"b\\c" , Service=svc"#);
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some(r#"a"b\c"#));
        assert_eq!(c.param("service"), Some("svc"));
        assert_eq!(one("Negotiate").params, []);
        assert_eq!(
            one("Basic dXNlcjpwYXNz==").params,
            [(String::new(), "dXNlcjpwYXNz==".into())]
        );
    }

    #[test]
    fn several_challenges_in_one_header() {
        let all = parse(r#"Basic realm="r", Bearer realm="https://t/token",service="s""#).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].scheme, "basic");
        assert_eq!(all[0].params.len(), 1);
        assert_eq!(all[1].param("service"), Some("s"));
        assert_eq!(parse(", Negotiate, ,Basic").unwrap().len(), 2);
    }

    #[test]
    fn malformed_headers_are_refused_with_where() {
        for bad in [
            "",
            " , ",
            r#"Bearer realm="unterminated"#,
            r#"Bearer realm="a",realm="b""#,
            r#"Bearer realm="a" service="b""#,
            "Bearer =x",
            "Bearer realm=\"a\u{1}\"",
            r#"Bearer realm="a\"#,
            "Bearer realm=a b=c",
            "(Bearer)",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(
                err.to_string().contains("WWW-Authenticate"),
                "{bad:?}: {err}"
            );
        }
    }
}
