//! Splitting SQL text into statements: a statement ends at a `;` that is outside quotes and
//! comments. Used by the shell (line by line, with a continuation prompt) and by `-c` / `-f`.

/// Where the scanner is inside the SQL text.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Code,
    /// Inside `'…'` (`''` is an escaped quote: two toggles in a row, same result).
    SingleQuote,
    /// Inside `"…"` (a quoted identifier).
    DoubleQuote,
    /// After `--`, up to the end of the line.
    LineComment,
    /// Inside `/* … */`, nested to this depth.
    BlockComment(u32),
}

/// Accumulates SQL text and hands out each complete statement.
#[derive(Default)]
pub(crate) struct Splitter {
    /// Text of the statement being typed (everything after the last complete one).
    pending: String,
}

impl Splitter {
    /// Adds one line (without its newline) and returns the statements it completed, trimmed
    /// and without their `;`. Empty statements (`;;`, comments only) are dropped.
    pub(crate) fn push_line(&mut self, line: &str) -> Vec<String> {
        if !self.pending.is_empty() {
            self.pending.push('\n');
        }
        self.pending.push_str(line);
        let mut done = Vec::new();
        let mut rest = 0;
        for end in statement_ends(&self.pending) {
            let statement = &self.pending[rest..end];
            if has_code(statement) {
                done.push(statement.trim().to_owned());
            }
            rest = end + 1;
        }
        self.pending.drain(..rest);
        done
    }

    /// The unfinished statement, if it holds more than blanks and comments; empties the buffer.
    pub(crate) fn finish(&mut self) -> Option<String> {
        let pending = std::mem::take(&mut self.pending);
        has_code(&pending).then(|| pending.trim().to_owned())
    }

    /// Is nothing but blanks and comments pending (the shell shows its main prompt then)?
    pub(crate) fn is_empty(&self) -> bool {
        !has_code(&self.pending)
    }

    /// Drops the unfinished statement (Ctrl-C at the prompt).
    pub(crate) fn clear(&mut self) {
        self.pending.clear();
    }
}

/// Splits a whole text into statements; the last one may lack its `;`.
#[cfg(test)]
fn split_all(text: &str) -> Vec<String> {
    let mut splitter = Splitter::default();
    let mut statements = splitter.push_line(text);
    statements.extend(splitter.finish());
    statements
}

/// Byte offsets of every statement-ending `;` in `text`.
fn statement_ends(text: &str) -> Vec<usize> {
    let mut ends = Vec::new();
    scan(text, |offset, state, byte| {
        if state == State::Code && byte == b';' {
            ends.push(offset);
        }
    });
    ends
}

/// Does `text` hold anything but blanks and comments?
fn has_code(text: &str) -> bool {
    let mut code = false;
    scan(text, |_, state, byte| {
        code |= state != State::Code || !(byte.is_ascii_whitespace() || byte == b';');
    });
    code
}

/// Calls `visit(offset, state, byte)` for every byte that is code or part of a quoted string
/// (comments are skipped). `state` is the state the byte is read in: a quote opening a string
/// is reported as code.
fn scan(text: &str, mut visit: impl FnMut(usize, State, u8)) {
    let bytes = text.as_bytes();
    let mut state = State::Code;
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        let next = bytes.get(i + 1).copied();
        match state {
            State::Code => match (byte, next) {
                (b'-', Some(b'-')) => {
                    state = State::LineComment;
                    i += 1;
                }
                (b'/', Some(b'*')) => {
                    state = State::BlockComment(1);
                    i += 1;
                }
                _ => {
                    visit(i, state, byte);
                    match byte {
                        b'\'' => state = State::SingleQuote,
                        b'"' => state = State::DoubleQuote,
                        _ => {}
                    }
                }
            },
            State::SingleQuote | State::DoubleQuote => {
                visit(i, state, byte);
                let close = if state == State::SingleQuote {
                    b'\''
                } else {
                    b'"'
                };
                if byte == close {
                    state = State::Code;
                }
            }
            State::LineComment => {
                if byte == b'\n' {
                    state = State::Code;
                }
            }
            State::BlockComment(depth) => match (byte, next) {
                (b'*', Some(b'/')) => {
                    state = if depth == 1 {
                        State::Code
                    } else {
                        State::BlockComment(depth - 1)
                    };
                    i += 1;
                }
                (b'/', Some(b'*')) => {
                    state = State::BlockComment(depth + 1);
                    i += 1;
                }
                _ => {}
            },
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_end_at_semicolons_outside_quotes_and_comments() {
        let text = "SELECT 'a;b', \"c;d\" -- x;y\n/* p; /* q; */ r; */ FROM t; SELECT 2;SELECT 3";
        assert_eq!(
            split_all(text),
            vec![
                "SELECT 'a;b', \"c;d\" -- x;y\n/* p; /* q; */ r; */ FROM t",
                "SELECT 2",
                "SELECT 3"
            ]
        );
    }

    #[test]
    fn escaped_quotes_stay_inside_the_string() {
        assert_eq!(
            split_all("SELECT 'it''s;'; x"),
            vec!["SELECT 'it''s;'", "x"]
        );
    }

    #[test]
    fn lines_accumulate_until_the_statement_ends() {
        let mut s = Splitter::default();
        assert!(s.push_line("SELECT 1,").is_empty());
        assert!(!s.is_empty());
        assert!(s.push_line("  'multi").is_empty());
        assert_eq!(
            s.push_line("line;'; SELECT"),
            vec!["SELECT 1,\n  'multi\nline;'"]
        );
        assert_eq!(s.push_line("2;"), vec!["SELECT\n2"]);
        assert!(s.is_empty());
    }

    #[test]
    fn blanks_comments_and_empty_statements_are_dropped() {
        let mut s = Splitter::default();
        assert!(s.push_line("-- only a comment").is_empty());
        assert!(s.is_empty());
        assert!(s.push_line(" ;; ").is_empty());
        assert_eq!(s.finish(), None);
        assert!(split_all("/* c */\n\n").is_empty());
    }

    #[test]
    fn clear_drops_the_pending_statement() {
        let mut s = Splitter::default();
        s.push_line("SELECT");
        s.clear();
        assert!(s.is_empty());
        assert_eq!(s.push_line("SELECT 1;"), vec!["SELECT 1"]);
    }
}
