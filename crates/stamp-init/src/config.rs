//! `/.stamp/app.json`: what to run, as stamp-build's `AppConfig` serialises it
//! (`{"argv":[..],"env":[..],"workdir":"..","user":".."}`), read by a small JSON parser so the
//! init needs no dependencies. Unknown keys are skipped; nesting and size are bounded.

/// Largest config accepted.
pub const MAX_CONFIG: usize = 1 << 20;
/// Deepest nesting skipped in unknown values.
const MAX_DEPTH: usize = 32;

/// What to run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppConfig {
    /// ENTRYPOINT followed by CMD.
    pub argv: Vec<String>,
    /// `KEY=VALUE`.
    pub env: Vec<String>,
    /// Working directory (`/` when empty).
    pub workdir: String,
    /// `name`, `uid`, `uid:gid`, `name:group`; root when empty.
    pub user: String,
}

/// Parses the config. Errors name the byte offset.
pub fn parse(text: &[u8]) -> Result<AppConfig, String> {
    if text.len() > MAX_CONFIG {
        return Err(format!("{} bytes, more than {MAX_CONFIG}", text.len()));
    }
    let mut p = Parser { s: text, i: 0 };
    let mut c = AppConfig::default();
    p.ws();
    p.expect(b'{')?;
    p.ws();
    if p.peek() == Some(b'}') {
        p.i += 1;
    } else {
        loop {
            p.ws();
            let key = p.string()?;
            p.ws();
            p.expect(b':')?;
            p.ws();
            match key.as_str() {
                "argv" => c.argv = p.string_array()?,
                "env" => c.env = p.string_array()?,
                "workdir" => c.workdir = p.string()?,
                "user" => c.user = p.string()?,
                _ => p.skip_value(0)?,
            }
            p.ws();
            if p.sep(b'}')? {
                break;
            }
        }
    }
    p.ws();
    if p.i != p.s.len() {
        return Err(p.err("the end after the object"));
    }
    Ok(c)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.i += 1;
        Some(b)
    }

    fn err(&self, wanted: &str) -> String {
        match self.peek() {
            Some(b) => format!(
                "expected {wanted} at offset {}, found {:?}",
                self.i, b as char
            ),
            None => format!("expected {wanted} at offset {}, found the end", self.i),
        }
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn expect(&mut self, b: u8) -> Result<(), String> {
        if self.peek() == Some(b) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(&format!("'{}'", b as char)))
        }
    }

    /// After an element: a ',' (false) or `close` (true), consumed.
    fn sep(&mut self, close: u8) -> Result<bool, String> {
        match self.peek() {
            Some(b',') => {
                self.i += 1;
                Ok(false)
            }
            Some(c) if c == close => {
                self.i += 1;
                Ok(true)
            }
            _ => Err(self.err(&format!("',' or '{}'", close as char))),
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| self.err("four hex digits"))?;
        self.i += 4;
        Ok(h)
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let start = self.i;
            let b = self.next().ok_or_else(|| self.err("'\"'"))?;
            match b {
                b'"' => break,
                b'\\' => {
                    let e = self.next().ok_or_else(|| self.err("an escape"))?;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xd800..0xdc00).contains(&hi)
                                && self.s.get(self.i..self.i + 2) == Some(b"\\u")
                            {
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xdc00..0xe000).contains(&lo) {
                                    return Err(format!("bad surrogate pair at offset {start}"));
                                }
                                0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
                            } else {
                                hi
                            };
                            char::from_u32(code)
                                .ok_or_else(|| format!("bad \\u escape at offset {start}"))?
                        }
                        _ => return Err(format!("bad escape at offset {start}")),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                b if b < 0x20 => {
                    return Err(format!("control character in a string at offset {start}"));
                }
                b => out.push(b),
            }
        }
        String::from_utf8(out)
            .map_err(|_| format!("invalid UTF-8 in a string before offset {}", self.i))
    }

    fn string_array(&mut self) -> Result<Vec<String>, String> {
        if self.s[self.i..].starts_with(b"null") {
            self.i += 4;
            return Ok(Vec::new());
        }
        self.expect(b'[')?;
        let mut v = Vec::new();
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(v);
        }
        loop {
            self.ws();
            v.push(self.string()?);
            self.ws();
            if self.sep(b']')? {
                return Ok(v);
            }
        }
    }

    fn skip_value(&mut self, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "nested deeper than {MAX_DEPTH} at offset {}",
                self.i
            ));
        }
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(open @ (b'[' | b'{')) => {
                let close = if open == b'[' { b']' } else { b'}' };
                self.i += 1;
                self.ws();
                if self.peek() == Some(close) {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    if open == b'{' {
                        self.string()?;
                        self.ws();
                        self.expect(b':')?;
                        self.ws();
                    }
                    self.skip_value(depth + 1)?;
                    self.ws();
                    if self.sep(close)? {
                        return Ok(());
                    }
                }
            }
            Some(_) => {
                let start = self.i;
                while matches!(
                    self.peek(),
                    Some(b'a'..=b'z' | b'0'..=b'9' | b'-' | b'+' | b'.' | b'E')
                ) {
                    self.i += 1;
                }
                if self.i == start {
                    return Err(self.err("a value"));
                }
                Ok(())
            }
            None => Err(self.err("a value")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_what_serde_json_writes() {
        let c = parse(
            br#"{"argv":["/bin/sh","-c","echo \"hi\"\n\u00e9\ud83d\ude00"],"env":["A=1","PATH=/bin"],"workdir":"/app","user":"1000:1000"}"#,
        )
        .unwrap();
        assert_eq!(
            c.argv,
            vec!["/bin/sh", "-c", "echo \"hi\"\n\u{e9}\u{1f600}"]
        );
        assert_eq!(c.env, vec!["A=1", "PATH=/bin"]);
        assert_eq!(c.workdir, "/app");
        assert_eq!(c.user, "1000:1000");
    }

    #[test]
    fn unknown_keys_and_whitespace_are_skipped() {
        let c = parse(b" {\n \"x\": {\"a\": [1, 2.5e3, true, null, {}]}, \"argv\" : [ \"a\" ] , \"env\": null } ").unwrap();
        assert_eq!(c.argv, vec!["a"]);
        assert!(c.env.is_empty());
        assert_eq!(parse(b"{}").unwrap(), AppConfig::default());
    }

    #[test]
    fn errors_name_the_offset() {
        assert!(
            parse(b"{\"argv\": [\"a\" \"b\"]}")
                .unwrap_err()
                .contains("offset 14")
        );
        assert!(
            parse(b"{\"argv\": [\"a\"]")
                .unwrap_err()
                .contains("found the end")
        );
        assert!(parse(b"{} x").unwrap_err().contains("offset 3"));
        assert!(parse(b"{\"user\": \"\\ud800\\u0041\"}").is_err());
        let deep = format!("{{\"x\": {}{}}}", "[".repeat(100), "]".repeat(100));
        assert!(
            parse(deep.as_bytes())
                .unwrap_err()
                .contains("nested deeper")
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&b);
        }

        #[test]
        fn random_strings_round_trip(argv in proptest::collection::vec(any::<String>(), 0..4)) {
            let quoted: Vec<String> = argv.iter().map(|a| {
                let mut s = String::from("\"");
                for c in a.chars() {
                    match c {
                        '"' => s.push_str("\\\""),
                        '\\' => s.push_str("\\\\"),
                        c if (c as u32) < 0x20 => s.push_str(&format!("\\u{:04x}", c as u32)),
                        c => s.push(c),
                    }
                }
                s.push('"');
                s
            }).collect();
            let text = format!("{{\"argv\":[{}]}}", quoted.join(","));
            prop_assert_eq!(parse(text.as_bytes()).unwrap().argv, argv);
        }
    }
}
