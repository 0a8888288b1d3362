//! Feeding lines to the session: the interactive shell (line editing, history, continuation
//! prompt, Ctrl-C / Ctrl-D) and the one-shot modes (`-c`, `-f`, piped stdin).

use std::io::{self, Write};
use std::path::PathBuf;

use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{Config, Editor};

use crate::meta::{self, HELP, Meta};
use crate::output::{Destination, check_writable};
use crate::session::{Failure, Session};
use crate::statement::Splitter;

/// Most statements kept in the history file.
const HISTORY_LIMIT: usize = 1000;
/// The history file, in `$HOME`.
const HISTORY_FILE: &str = ".kalam_history";

const PROMPT: &str = "kalam> ";
const CONTINUATION_PROMPT: &str = "kalam-> ";

/// What to do after a meta-command.
enum Flow {
    Continue,
    Quit,
}

/// Runs `lines` as a script: statements end with `;` (the last one may not), meta-commands
/// stand on their own line. Stops at the first failure and returns it.
pub(crate) fn run_script(
    session: &mut Session,
    lines: impl Iterator<Item = io::Result<String>>,
) -> Result<(), Failure> {
    let mut splitter = Splitter::default();
    for line in lines {
        let line = line.map_err(|e| Failure::Fatal(format!("cannot read the script: {e}")))?;
        if splitter.is_empty() && line.trim_start().starts_with('\\') {
            splitter.clear();
            match run_meta(session, &line)? {
                Flow::Continue => continue,
                Flow::Quit => return Ok(()),
            }
        }
        for statement in splitter.push_line(&line) {
            session.run(&statement)?;
        }
    }
    match splitter.finish() {
        Some(statement) => session.run(&statement),
        None => Ok(()),
    }
}

/// The interactive shell. Failures are printed and the shell goes on; returns at `\q` or
/// Ctrl-D.
pub(crate) fn repl(session: &mut Session, banner: &str) -> Result<(), Failure> {
    let config = Config::builder()
        .max_history_size(HISTORY_LIMIT)
        .map_err(|e| Failure::Fatal(format!("cannot set up line editing: {e}")))?
        .auto_add_history(false)
        .build();
    let mut editor: Editor<(), DefaultHistory> = Editor::with_config(config)
        .map_err(|e| Failure::Fatal(format!("cannot set up line editing: {e}")))?;
    let history = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(HISTORY_FILE));
    if let Some(history) = &history {
        // A missing or unreadable history file just means an empty history.
        let _ = editor.load_history(history);
    }
    if !session.settings.quiet {
        eprintln!("{banner}");
    }
    let mut splitter = Splitter::default();
    loop {
        let prompt = if splitter.is_empty() {
            PROMPT
        } else {
            CONTINUATION_PROMPT
        };
        let line = match editor.readline(prompt) {
            Ok(line) => line,
            // Ctrl-C at the prompt drops what was typed.
            Err(ReadlineError::Interrupted) => {
                splitter.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("ERROR: cannot read input: {e}");
                break;
            }
        };
        if splitter.is_empty() && line.trim_start().starts_with('\\') {
            splitter.clear();
            let _ = editor.add_history_entry(line.trim());
            match run_meta(session, &line) {
                Ok(Flow::Continue) => {}
                Ok(Flow::Quit) => break,
                Err(failure) => failure.report(),
            }
            continue;
        }
        let was_empty = splitter.is_empty();
        let statements = splitter.push_line(&line);
        if was_empty && splitter.is_empty() && statements.is_empty() {
            continue;
        }
        for statement in statements {
            let _ = editor.add_history_entry(format!("{statement};"));
            if let Err(failure) = session.run(&statement) {
                failure.report();
            }
        }
    }
    if let Some(history) = &history
        && let Err(e) = editor.save_history(history)
    {
        eprintln!(
            "warning: cannot save the history to {}: {e}",
            history.display()
        );
    }
    Ok(())
}

/// Runs one meta-command line.
fn run_meta(session: &mut Session, line: &str) -> Result<Flow, Failure> {
    let command = meta::parse(line).map_err(Failure::Sql)?;
    match command {
        Meta::Quit => return Ok(Flow::Quit),
        Meta::Help => println!("{HELP}"),
        Meta::Query(sql) => session.run(&sql)?,
        Meta::Format(None) => println!("output format: {}", session.settings.format.name()),
        Meta::Format(Some(format)) => {
            if format.is_binary() && session.settings.destination.is_stdout() {
                return Err(Failure::Sql(format!(
                    "format {} writes to a file: set one with \\o FILE first",
                    format.name()
                )));
            }
            session.settings.format = format;
        }
        Meta::Output(None) => {
            if session.settings.format.is_binary() {
                return Err(Failure::Sql(format!(
                    "format {} writes to a file: choose a text format with \\format first",
                    session.settings.format.name()
                )));
            }
            session.settings.destination = Destination::new(None);
        }
        Meta::Output(Some(file)) => {
            let path = PathBuf::from(file);
            check_writable(&path).map_err(|e| Failure::Sql(format!("cannot write to {e}")))?;
            session.settings.destination = Destination::new(Some(path));
        }
        Meta::Subscribe(sql) => session.subscribe(&sql)?,
    }
    io::stdout()
        .flush()
        .map_err(|e| Failure::Sql(format!("cannot write to stdout: {e}")))?;
    Ok(Flow::Continue)
}
