//! One logged-in connection and running statements over it: streaming results into the
//! chosen format, the footer, and cancelling with Ctrl-C.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::Schema;
use arrow::record_batch::RecordBatch;
use futures::StreamExt;
use kalam_client::{Error, KalamClient};
use tokio::runtime::Runtime;

use crate::output::{Destination, Format, OutputError, PROGRESS_REFRESH, Progress, Sink};

/// Why a statement (or the whole run) failed; decides the exit code.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The server refused the statement (exit code 1).
    Sql(String),
    /// The user pressed Ctrl-C and the statement was cancelled (exit code 1).
    Cancelled,
    /// Usage, connection or authentication failure (exit code 2).
    Fatal(String),
    /// The server no longer accepts the bearer token (it expired, or the server restarted
    /// with a new key) and the statement did not run; [`Session::run`] logs in again.
    TokenRejected(String),
}

impl Failure {
    /// The process exit code for this failure.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Failure::Sql(_) | Failure::Cancelled => 1,
            Failure::Fatal(_) | Failure::TokenRejected(_) => 2,
        }
    }

    /// Prints the one-line message on stderr.
    pub(crate) fn report(&self) {
        match self {
            Failure::Sql(message) | Failure::Fatal(message) | Failure::TokenRejected(message) => {
                eprintln!("ERROR: {message}")
            }
            Failure::Cancelled => eprintln!("ERROR: CANCELLED: query cancelled"),
        }
    }
}

impl From<OutputError> for Failure {
    fn from(e: OutputError) -> Self {
        Failure::Sql(e.0)
    }
}

/// Maps a client error: lost connections and rejected logins are fatal, the rest is SQL.
pub(crate) fn failure(error: &Error) -> Failure {
    let message = describe(error);
    match error.code() {
        Some(tonic_code) if is_connection_code(tonic_code) => Failure::Fatal(message),
        Some(_) => Failure::Sql(message),
        None => match error {
            Error::Connect { .. } | Error::InvalidUrl { .. } | Error::InvalidTls { .. } => {
                Failure::Fatal(message)
            }
            _ => Failure::Sql(message),
        },
    }
}

fn is_connection_code(code: kalam_client::Code) -> bool {
    matches!(
        code,
        kalam_client::Code::Unauthenticated | kalam_client::Code::Unavailable
    )
}

/// One readable line: `<CODE>: <message>` for server errors, else the error and its causes.
pub(crate) fn describe(error: &Error) -> String {
    let text = match error.status() {
        Some(status) => format!("{}: {}", code_name(status.code()), status.message()),
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                let cause = cause.to_string();
                if !text.contains(&cause) {
                    text = format!("{text}: {cause}");
                }
                source = cause_of(source);
            }
            text
        }
    };
    one_line(&text)
}

fn cause_of<'a>(
    error: Option<&'a (dyn std::error::Error + 'static)>,
) -> Option<&'a (dyn std::error::Error + 'static)> {
    error.and_then(std::error::Error::source)
}

/// Joins a multi-line message into one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `INVALID_ARGUMENT`-style name of a gRPC code.
fn code_name(code: kalam_client::Code) -> &'static str {
    use kalam_client::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Output settings, changed by `--format`/`--output` and `\format`/`\o`.
pub(crate) struct Settings {
    pub(crate) format: Format,
    pub(crate) destination: Destination,
    /// No footers and no banner.
    pub(crate) quiet: bool,
}

/// A logged-in connection plus the output settings.
pub(crate) struct Session {
    pub(crate) client: KalamClient,
    pub(crate) settings: Settings,
    runtime: Arc<Runtime>,
    /// Kept to log in again when the token expires (a shell may stay open for days).
    user: String,
    password: String,
}

/// Connects to `url` and logs in as `user`.
pub(crate) fn connect(
    runtime: &Arc<Runtime>,
    url: &str,
    user: &str,
    password: &str,
    settings: Settings,
) -> Result<Session, Failure> {
    let client = runtime.block_on(async {
        let mut client = KalamClient::connect(url).await?;
        client.login(user, password).await?;
        Ok::<_, Error>(client)
    });
    let client = client.map_err(|e| Failure::Fatal(describe(&e)))?;
    Ok(Session {
        client,
        settings,
        runtime: Arc::clone(runtime),
        user: user.to_owned(),
        password: password.to_owned(),
    })
}

impl Session {
    /// Runs one statement and prints its result in the current format.
    ///
    /// If the server rejects the token before the statement ran, logs in again and retries
    /// once.
    pub(crate) fn run(&mut self, sql: &str) -> Result<(), Failure> {
        let runtime = Arc::clone(&self.runtime);
        match runtime.block_on(self.run_async(sql)) {
            Err(Failure::TokenRejected(_)) => {
                runtime
                    .block_on(self.client.login(&self.user, &self.password))
                    .map_err(|e| Failure::Fatal(describe(&e)))?;
                runtime.block_on(self.run_async(sql))
            }
            result => result,
        }
    }

    /// `\subscribe SELECT …`: prints the snapshot, then every change as it commits, until
    /// Ctrl-C (which ends the subscription and returns to the prompt) or the server ends it.
    pub(crate) fn subscribe(&mut self, sql: &str) -> Result<(), Failure> {
        let runtime = Arc::clone(&self.runtime);
        runtime.block_on(self.subscribe_async(sql))
    }

    async fn subscribe_async(&mut self, sql: &str) -> Result<(), Failure> {
        let options = kalam_client::SubscribeOptions {
            snapshot: true,
            ..Default::default()
        };
        let mut live = self
            .client
            .subscribe(sql, options)
            .await
            .map_err(|e| failure(&e))?;
        eprintln!("live query {} (Ctrl-C to stop)", live.id().unwrap_or("?"));
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            tokio::select! {
                _ = &mut ctrl_c => {
                    eprintln!("live query stopped");
                    return Ok(());
                }
                event = live.next() => match event {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(failure(&e)),
                    Some(Ok(event)) => {
                        match (event.kind, event.batch) {
                            (kalam_client::EventKind::Current, _) => {
                                println!("-- live from seq {}", event.seq);
                            }
                            (_, Some(batch)) if batch.num_rows() > 0 => {
                                let text = arrow::util::pretty::pretty_format_batches(&[batch])
                                    .map_err(|e| Failure::Sql(e.to_string()))?;
                                println!("{text}");
                            }
                            _ => {}
                        }
                        std::io::Write::flush(&mut std::io::stdout())
                            .map_err(|e| Failure::Sql(format!("cannot write to stdout: {e}")))?;
                    }
                },
            }
        }
    }

    async fn run_async(&mut self, sql: &str) -> Result<(), Failure> {
        let started = Instant::now();
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        let info = tokio::select! {
            info = self.client.query_info(sql) => info.map_err(|e| match e.code() {
                // Nothing ran yet: safe to log in again and retry.
                Some(kalam_client::Code::Unauthenticated) => Failure::TokenRejected(describe(&e)),
                _ => failure(&e),
            })?,
            _ = &mut ctrl_c => return Err(Failure::Cancelled),
        };
        if info.schema.is_empty() {
            // DDL and DML announce no schema; run them as updates to learn the row count.
            let affected = tokio::select! {
                n = self.client.execute(sql) => n.map_err(|e| failure(&e))?,
                // Dropping the call resets the stream; the server may still finish it.
                _ = &mut ctrl_c => return Err(Failure::Cancelled),
            };
            if !self.settings.quiet {
                let ms = elapsed_ms(started);
                match affected {
                    n if n >= 0 => eprintln!("OK ({n} rows affected, {ms:.1} ms)"),
                    _ => eprintln!("OK ({ms:.1} ms)"),
                }
            }
            return Ok(());
        }
        let mut stream = self.client.fetch(info.clone()).map_err(|e| failure(&e))?;
        let announced = stream
            .schema()
            .cloned()
            .unwrap_or_else(|| Arc::new(Schema::empty()));
        let mut progress = Progress::new(started);
        let mut ticker = tokio::time::interval(PROGRESS_REFRESH);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut sink: Option<Sink> = None;
        let mut rows = 0usize;
        let format = self.settings.format;
        let result: Result<(), Failure> = loop {
            tokio::select! {
                biased;
                _ = &mut ctrl_c => {
                    progress.clear();
                    // Best effort: the stream is dropped either way, which ends the call.
                    let cancel = self.client.cancel(&info);
                    let _ = tokio::time::timeout(Duration::from_secs(5), cancel).await;
                    break Err(Failure::Cancelled);
                }
                item = stream.next() => match item {
                    Some(Ok(batch)) => {
                        rows += batch.num_rows();
                        let sink = match &mut sink {
                            Some(sink) => sink,
                            None => sink.insert(Sink::open(
                                format,
                                &mut self.settings.destination,
                                &batch.schema(),
                            )?),
                        };
                        sink.write(&batch, &mut || progress.clear())?;
                        progress.update(rows);
                    }
                    Some(Err(e)) => break Err(failure(&e)),
                    None => break Ok(()),
                },
                _ = ticker.tick() => progress.update(rows),
            }
        };
        progress.clear();
        drop(stream);
        match result {
            Ok(()) => {
                let sink = match sink {
                    Some(sink) => sink,
                    None => {
                        // No rows: an empty batch still gives CSV its header and files
                        // their schema.
                        let mut sink =
                            Sink::open(format, &mut self.settings.destination, &announced)?;
                        sink.write(&RecordBatch::new_empty(announced), &mut || {})?;
                        sink
                    }
                };
                sink.finish(&mut || {})?;
                self.footer(rows, started);
                Ok(())
            }
            Err(failure) => {
                if let Some(sink) = sink {
                    // Keep what arrived (e.g. a valid file up to the failure); the error
                    // below is what matters.
                    let _ = sink.finish(&mut || {});
                }
                Err(failure)
            }
        }
    }

    /// `(N rows, 12.3 ms)`: with the table on stdout, else on stderr so data stays clean.
    fn footer(&self, rows: usize, started: Instant) {
        if self.settings.quiet {
            return;
        }
        let noun = if rows == 1 { "row" } else { "rows" };
        let line = format!("({rows} {noun}, {:.1} ms)", elapsed_ms(started));
        if self.settings.format == Format::Table && self.settings.destination.is_stdout() {
            println!("{line}");
        } else {
            eprintln!("{line}");
        }
    }
}

fn elapsed_ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}
