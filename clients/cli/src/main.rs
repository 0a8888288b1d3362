//! `kalam`: the interactive SQL shell and one-shot command runner for KalamFlight.
//!
//! It is a client like any other: it speaks Flight SQL through `kalam-client` and depends on
//! nothing of the server. Results stream from the server into the chosen output format.
//!
//! ```text
//! kalam [--url grpc://127.0.0.1:50051] [-u USER] [--format FMT] [--output FILE]
//!       [-c SQL | -f SCRIPT]
//! ```
//! The password comes from `KALAM_PASSWORD`, or is asked on the terminal. Exit codes: 0 on
//! success, 1 when a statement fails, 2 on usage, connection or login errors.
//!
//! # Layout
//! - `shell`: the interactive loop and the script runner (`-c`, `-f`, piped stdin).
//! - `statement`: splitting text into statements at `;` outside quotes and comments.
//! - `meta`: backslash commands (`\dt`, `\format`, …).
//! - `session`: running one statement: streaming, footer, Ctrl-C cancel, error lines.
//! - `output`: the formats and their streaming writers.
//! - `password`: `KALAM_PASSWORD` or a prompt without echo.

mod meta;
mod output;
mod password;
mod session;
mod shell;
mod statement;

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

use crate::output::{Destination, Format, check_writable, is_tty};
use crate::session::{Failure, Settings};

/// Command-line arguments.
#[derive(Parser, Debug)]
#[command(
    name = "kalam",
    version,
    about = "Interactive SQL shell for KalamFlight",
    after_help = "The password is read from KALAM_PASSWORD, or asked on the terminal.\n\
                  Exit codes: 0 success, 1 SQL error, 2 usage, connection or login error."
)]
struct Args {
    /// Server URL.
    #[arg(long, env = "KALAM_URL", default_value = "grpc://127.0.0.1:50051")]
    url: String,
    /// User to log in as.
    #[arg(short = 'u', long, env = "KALAM_USER", default_value = "root")]
    user: String,
    /// Run these statements (separated by `;`) and exit.
    #[arg(short = 'c', long, conflicts_with = "file")]
    command: Option<String>,
    /// Run the statements in this script and exit (stops at the first error).
    #[arg(short = 'f', long)]
    file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, env = "KALAM_FORMAT", default_value_t = Format::Table)]
    format: Format,
    /// Write results to this file instead of stdout (required for ipc and parquet).
    #[arg(short = 'o', long, env = "KALAM_OUTPUT")]
    output: Option<PathBuf>,
    /// No banner and no `(N rows, … ms)` footers.
    #[arg(short = 'q', long, env = "KALAM_QUIET")]
    quiet: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            failure.report();
            ExitCode::from(failure.exit_code())
        }
    }
}

fn run(args: Args) -> Result<(), Failure> {
    if args.format.is_binary() && args.output.is_none() {
        return Err(Failure::Fatal(format!(
            "--format {} writes to a file: add --output FILE",
            args.format.name()
        )));
    }
    if let Some(path) = &args.output {
        check_writable(path).map_err(|e| Failure::Fatal(format!("cannot write to {e}")))?;
    }
    let script = match &args.file {
        Some(path) => Some(BufReader::new(File::open(path).map_err(|e| {
            Failure::Fatal(format!("cannot open the script {}: {e}", path.display()))
        })?)),
        None => None,
    };
    let password = password::password(&args.user).map_err(Failure::Fatal)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::Fatal(format!("cannot start the async runtime: {e}")))?;
    let runtime = Arc::new(runtime);
    let settings = Settings {
        format: args.format,
        destination: Destination::new(args.output.clone()),
        quiet: args.quiet,
    };
    let mut session = session::connect(&runtime, &args.url, &args.user, &password, settings)?;
    if let Some(command) = &args.command {
        return shell::run_script(&mut session, command.lines().map(|l| Ok(l.to_owned())));
    }
    if let Some(script) = script {
        return shell::run_script(&mut session, script.lines());
    }
    if !is_tty(libc::STDIN_FILENO) {
        return shell::run_script(&mut session, io::stdin().lock().lines());
    }
    let banner = format!(
        "kalam {}: connected to {} as {}. Type \\? for help, \\q to quit.",
        env!("CARGO_PKG_VERSION"),
        args.url,
        args.user
    );
    shell::repl(&mut session, &banner)
}
