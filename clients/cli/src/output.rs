//! Result output: the formats, where they go, and the writers that stream batches into them.
//!
//! Every format streams: CSV, JSON, Arrow IPC and Parquet write each batch as it arrives, and
//! the table format prints a table for every [`TABLE_CHUNK_ROWS`] rows.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use arrow::util::pretty::pretty_format_batches;
use parquet::arrow::ArrowWriter;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;

/// Most rows the table format holds before printing them (one aligned table per chunk).
pub(crate) const TABLE_CHUNK_ROWS: usize = 1000;

/// Rows per Parquet row group: bounds what the Parquet writer buffers in memory.
const PARQUET_ROW_GROUP_ROWS: usize = 64 * 1024;

/// How results are printed or written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Aligned text table (the default).
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON array of row objects.
    Json,
    /// One JSON object per line.
    Ndjson,
    /// Arrow IPC file format (needs an output file).
    #[value(alias = "arrow")]
    Ipc,
    /// Parquet (needs an output file).
    Parquet,
}

impl Format {
    /// Binary formats: written to a file only, which each result replaces.
    pub(crate) fn is_binary(self) -> bool {
        matches!(self, Format::Ipc | Format::Parquet)
    }

    /// Name as typed on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Format::Table => "table",
            Format::Csv => "csv",
            Format::Json => "json",
            Format::Ndjson => "ndjson",
            Format::Ipc => "ipc",
            Format::Parquet => "parquet",
        }
    }
}

/// Where results go: stdout, or a file set with `--output` / `\o`.
#[derive(Debug, Default)]
pub(crate) struct Destination {
    /// The output file; `None` is stdout.
    file: Option<PathBuf>,
    /// Has the file been written since it was set? The first result truncates it, later text
    /// results append to it (binary results always replace it).
    started: bool,
}

impl Destination {
    /// Results to `file`, or to stdout for `None`.
    pub(crate) fn new(file: Option<PathBuf>) -> Self {
        Self {
            file,
            started: false,
        }
    }

    /// Is this stdout?
    pub(crate) fn is_stdout(&self) -> bool {
        self.file.is_none()
    }

    /// Opens the destination for one result in `format`.
    fn open(&mut self, format: Format) -> io::Result<Box<dyn Write + Send>> {
        let Some(path) = &self.file else {
            return Ok(Box::new(BufWriter::new(io::stdout())));
        };
        let append = self.started && !format.is_binary();
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        self.started = true;
        Ok(Box::new(BufWriter::new(file)))
    }
}

/// Writing one result failed.
#[derive(Debug)]
pub(crate) struct OutputError(pub(crate) String);

impl From<io::Error> for OutputError {
    fn from(e: io::Error) -> Self {
        OutputError(format!("cannot write the result: {e}"))
    }
}

impl From<ArrowError> for OutputError {
    fn from(e: ArrowError) -> Self {
        OutputError(format!("cannot write the result: {e}"))
    }
}

impl From<ParquetError> for OutputError {
    fn from(e: ParquetError) -> Self {
        OutputError(format!("cannot write the result: {e}"))
    }
}

/// Writes one result's batches, as they arrive, in one format.
pub(crate) enum Sink {
    Table(TableSink),
    Csv(arrow::csv::Writer<Box<dyn Write + Send>>),
    Json(arrow::json::ArrayWriter<Box<dyn Write + Send>>),
    Ndjson(arrow::json::LineDelimitedWriter<Box<dyn Write + Send>>),
    Ipc(arrow::ipc::writer::FileWriter<Box<dyn Write + Send>>),
    Parquet(ArrowWriter<Box<dyn Write + Send>>),
}

impl Sink {
    /// Opens `destination` for a result with `schema` (the first batch's, or the announced
    /// one when there are no rows).
    pub(crate) fn open(
        format: Format,
        destination: &mut Destination,
        schema: &SchemaRef,
    ) -> Result<Self, OutputError> {
        let out = destination.open(format)?;
        Ok(match format {
            Format::Table => Sink::Table(TableSink {
                out,
                schema: schema.clone(),
                pending: Vec::new(),
                pending_rows: 0,
                printed: false,
            }),
            Format::Csv => Sink::Csv(
                arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(out),
            ),
            Format::Json => Sink::Json(arrow::json::ArrayWriter::new(out)),
            Format::Ndjson => Sink::Ndjson(arrow::json::LineDelimitedWriter::new(out)),
            Format::Ipc => Sink::Ipc(arrow::ipc::writer::FileWriter::try_new(out, schema)?),
            Format::Parquet => {
                let props = WriterProperties::builder()
                    .set_max_row_group_row_count(Some(PARQUET_ROW_GROUP_ROWS))
                    .build();
                Sink::Parquet(ArrowWriter::try_new(out, schema.clone(), Some(props))?)
            }
        })
    }

    /// Writes one batch. `before_print` runs before text reaches a terminal (to clear the
    /// progress line).
    pub(crate) fn write(
        &mut self,
        batch: &RecordBatch,
        before_print: &mut dyn FnMut(),
    ) -> Result<(), OutputError> {
        match self {
            Sink::Table(table) => table.write(batch, before_print)?,
            Sink::Csv(w) => w.write(batch)?,
            Sink::Json(w) => w.write(batch)?,
            Sink::Ndjson(w) => w.write(batch)?,
            Sink::Ipc(w) => w.write(batch)?,
            Sink::Parquet(w) => w.write(batch)?,
        }
        Ok(())
    }

    /// Finishes the output (footers, file trailers) and flushes it.
    pub(crate) fn finish(self, before_print: &mut dyn FnMut()) -> Result<(), OutputError> {
        match self {
            Sink::Table(mut table) => table.finish(before_print)?,
            Sink::Csv(w) => w.into_inner().flush()?,
            Sink::Json(mut w) => {
                w.finish()?;
                let mut out = w.into_inner();
                out.write_all(b"\n")?;
                out.flush()?;
            }
            Sink::Ndjson(mut w) => {
                w.finish()?;
                w.into_inner().flush()?;
            }
            Sink::Ipc(mut w) => {
                w.finish()?;
                w.into_inner()?.flush()?;
            }
            Sink::Parquet(w) => {
                w.into_inner()?.flush()?;
            }
        }
        Ok(())
    }
}

/// The table format: buffers at most [`TABLE_CHUNK_ROWS`] rows, then prints them as one table.
pub(crate) struct TableSink {
    out: Box<dyn Write + Send>,
    /// Printed as a header-only table when the result has no rows.
    schema: SchemaRef,
    /// Rows not printed yet; at most [`TABLE_CHUNK_ROWS`] in all.
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    /// Has any table been printed?
    printed: bool,
}

impl TableSink {
    fn write(
        &mut self,
        batch: &RecordBatch,
        before_print: &mut dyn FnMut(),
    ) -> Result<(), OutputError> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            let take = (TABLE_CHUNK_ROWS - self.pending_rows).min(batch.num_rows() - offset);
            self.pending.push(batch.slice(offset, take));
            self.pending_rows += take;
            offset += take;
            if self.pending_rows == TABLE_CHUNK_ROWS {
                self.print(before_print)?;
            }
        }
        Ok(())
    }

    fn finish(&mut self, before_print: &mut dyn FnMut()) -> Result<(), OutputError> {
        if self.pending_rows > 0 || !self.printed {
            self.print(before_print)?;
        }
        Ok(())
    }

    fn print(&mut self, before_print: &mut dyn FnMut()) -> Result<(), OutputError> {
        if self.pending.is_empty() {
            self.pending
                .push(RecordBatch::new_empty(self.schema.clone()));
        }
        let table = pretty_format_batches(&self.pending)?;
        before_print();
        writeln!(self.out, "{table}")?;
        self.out.flush()?;
        self.pending.clear();
        self.pending_rows = 0;
        self.printed = true;
        Ok(())
    }
}

/// The live row counter on stderr, shown on a terminal for results that take a while.
pub(crate) struct Progress {
    /// Is stderr a terminal?
    enabled: bool,
    started: Instant,
    /// When the counter was last drawn (it is redrawn at most every [`PROGRESS_REFRESH`]).
    drawn_at: Option<Instant>,
    /// Is the counter on screen now?
    shown: bool,
}

/// No counter for results faster than this.
const PROGRESS_DELAY: Duration = Duration::from_millis(500);
/// Least time between two redraws of the counter.
pub(crate) const PROGRESS_REFRESH: Duration = Duration::from_millis(250);

impl Progress {
    pub(crate) fn new(started: Instant) -> Self {
        Self {
            enabled: is_tty(libc::STDERR_FILENO),
            started,
            drawn_at: None,
            shown: false,
        }
    }

    /// Redraws the counter if it is due.
    pub(crate) fn update(&mut self, rows: usize) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if now - self.started < PROGRESS_DELAY
            || self.drawn_at.is_some_and(|at| now - at < PROGRESS_REFRESH)
        {
            return;
        }
        let seconds = (now - self.started).as_secs_f64();
        eprint!("\r\x1b[K{rows} rows, {seconds:.1} s (Ctrl-C cancels)");
        self.drawn_at = Some(now);
        self.shown = true;
    }

    /// Erases the counter before anything else is printed.
    pub(crate) fn clear(&mut self) {
        if self.shown {
            eprint!("\r\x1b[K");
            self.shown = false;
        }
    }
}

/// Is `fd` a terminal?
pub(crate) fn is_tty(fd: i32) -> bool {
    // SAFETY: isatty only inspects the descriptor number.
    unsafe { libc::isatty(fd) == 1 }
}

/// Opens an output file early so a bad path is reported before any query runs.
pub(crate) fn check_writable(path: &PathBuf) -> io::Result<()> {
    File::options()
        .create(true)
        .append(true)
        .open(path)
        .map(drop)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}
