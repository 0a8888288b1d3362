//! A tiny keyword cursor for recognising statement prefixes.

use crate::{Error, Result};

pub(crate) struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(s: &'a str) -> Self {
        Self { s, pos: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn reset(&mut self, pos: usize) {
        self.pos = pos;
    }

    fn skip_ws(&mut self) {
        loop {
            let rest = &self.s[self.pos..];
            let trimmed = rest.trim_start();
            self.pos += rest.len() - trimmed.len();
            if trimmed.starts_with("--") {
                self.pos += trimmed.find('\n').unwrap_or(trimmed.len());
            } else {
                break;
            }
        }
    }

    pub(crate) fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    /// Consumes `kw` (case-insensitive, whole word) if it is next.
    pub(crate) fn keyword(&mut self, kw: &str) -> bool {
        self.skip_ws();
        let rest = &self.s[self.pos..];
        if rest.len() >= kw.len()
            && rest.is_char_boundary(kw.len())
            && rest[..kw.len()].eq_ignore_ascii_case(kw)
            && !rest[kw.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
        {
            self.pos += kw.len();
            true
        } else {
            false
        }
    }

    /// Consumes all of `kws` in order, or nothing.
    pub(crate) fn keywords(&mut self, kws: &[&str]) -> bool {
        let save = self.pos;
        if kws.iter().all(|k| self.keyword(k)) {
            true
        } else {
            self.pos = save;
            false
        }
    }

    fn ident(&mut self) -> Option<String> {
        self.skip_ws();
        let rest = &self.s[self.pos..];
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"')?;
            self.pos += end + 2;
            return Some(quoted[..end].to_string());
        }
        let len = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if len == 0 || rest.starts_with(|c: char| c.is_ascii_digit()) {
            return None;
        }
        self.pos += len;
        Some(rest[..len].to_ascii_lowercase())
    }

    pub(crate) fn expect_ident(&mut self, what: &str) -> Result<String> {
        self.ident()
            .ok_or_else(|| Error::InvalidArgument(format!("expected {what}")))
    }

    fn string(&mut self) -> Option<String> {
        self.skip_ws();
        let rest = &self.s[self.pos..];
        let body = rest.strip_prefix('\'')?;
        let mut out = String::new();
        let mut chars = body.char_indices().peekable();
        while let Some((i, ch)) = chars.next() {
            if ch == '\'' {
                if matches!(chars.peek(), Some((_, '\''))) {
                    out.push('\'');
                    chars.next();
                } else {
                    self.pos += i + 2;
                    return Some(out);
                }
            } else {
                out.push(ch);
            }
        }
        None
    }

    pub(crate) fn expect_string(&mut self, what: &str) -> Result<String> {
        self.string()
            .ok_or_else(|| Error::InvalidArgument(format!("expected {what} as a quoted string")))
    }

    pub(crate) fn expect_string_or_ident(&mut self, what: &str) -> Result<String> {
        self.string()
            .or_else(|| self.ident())
            .ok_or_else(|| Error::InvalidArgument(format!("expected {what}")))
    }

    /// `ns.table` (a namespace is required).
    pub(crate) fn expect_table_name(&mut self) -> Result<(String, String)> {
        let ns = self.expect_ident("table name as namespace.table")?;
        self.skip_ws();
        if !self.s[self.pos..].starts_with('.') {
            return Err(Error::InvalidArgument(format!(
                "table names are qualified by their namespace: expected {ns}.<table>"
            )));
        }
        self.pos += 1;
        let t = self.expect_ident("table name")?;
        Ok((ns, t))
    }

    pub(crate) fn expect_end(&mut self) -> Result<()> {
        self.skip_ws();
        let rest = self.s[self.pos..].trim_end().trim_end_matches(';').trim();
        if rest.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "unexpected text near '{}'",
                truncate(rest)
            )))
        }
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
