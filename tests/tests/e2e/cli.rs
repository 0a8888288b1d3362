//! The `kalam` CLI binary against a real server: one-shot modes (`-c`, `-f`), output formats,
//! exit codes, and an interactive session through a pseudo-terminal.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Array, Int64Array};
use arrow::record_batch::RecordBatch;

use crate::common::{PW, fixture};

/// `kalam --url <server> -u <user> <args>` with the password in `KALAM_PASSWORD`.
fn kalam(url: &str, user: &str, password: &str, args: &[&str]) -> Output {
    Command::new(kalam_tests::cli_bin().unwrap())
        .args(["--url", url, "-u", user])
        .args(args)
        .env("KALAM_PASSWORD", password)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// Sum of an Int64 column over batches.
fn sum_i64(batches: &[RecordBatch]) -> (usize, i64) {
    let rows = batches.iter().map(RecordBatch::num_rows).sum();
    let sum = batches
        .iter()
        .flat_map(|b| {
            let c = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            c.values().to_vec()
        })
        .sum();
    (rows, sum)
}

#[tokio::test]
async fn cli_one_shot_prints_a_table_and_footer() {
    let f = fixture().await;
    let out = kalam(
        &f.server.url(),
        "u_a",
        PW,
        &["-c", "SELECT id, body FROM app.m ORDER BY id"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[..7],
        [
            "+----+------+",
            "| id | body |",
            "+----+------+",
            "| 1  | a-1  |",
            "| 2  | a-2  |",
            "| 3  | a-3  |",
            "+----+------+",
        ],
        "{text}"
    );
    assert!(
        lines[7].starts_with("(3 rows, ") && lines[7].ends_with(" ms)"),
        "{text}"
    );
    // Several statements in one -c; DDL/DML report their row counts on stderr.
    let out = kalam(
        &f.server.url(),
        "u_a",
        PW,
        &[
            "-q",
            "-c",
            "INSERT INTO app.m VALUES (9, 'r1', 'a-9'); SELECT count(*) AS n FROM app.m",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("| 4 |"), "{}", stdout(&out));
    // The table format prints a table per 1000 rows instead of holding the whole result.
    let out = kalam(
        &f.server.url(),
        "u_a",
        PW,
        &["-c", "SELECT value FROM range(0, 2500)"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.matches("| value |").count(), 3, "three chunks");
    let values = text
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| value"))
        .count();
    assert_eq!(values, 2500);
    assert!(
        text.ends_with(" ms)\n") && text.contains("(2500 rows, "),
        "one footer"
    );
}

#[tokio::test]
async fn cli_sql_error_exits_1_with_one_error_line() {
    let f = fixture().await;
    let out = kalam(
        &f.server.url(),
        "u_a",
        PW,
        &["-c", "SELECT * FROM app.no_such_table; SELECT 1"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "", "nothing after the failed statement runs");
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("ERROR: NOT_FOUND: "), "{err}");
    assert!(err.contains("no_such_table"), "{err}");
    // A syntax error: also one line, with its code.
    let out = kalam(&f.server.url(), "u_a", PW, &["-c", "SELEC 1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("ERROR: INVALID_ARGUMENT: sql parser error: "),
        "{err}"
    );
    // A meta-command's error too.
    let out = kalam(&f.server.url(), "u_a", PW, &["-c", "\\du"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("ERROR: PERMISSION_DENIED: "),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn cli_csv_and_json_output() {
    let f = fixture().await;
    let url = f.server.url();
    let sql = "SELECT id, body FROM app.m ORDER BY id";
    let out = kalam(&url, "u_a", PW, &["--format", "csv", "-c", sql]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "id,body\n1,a-1\n2,a-2\n3,a-3\n");
    assert!(stderr(&out).starts_with("(3 rows, "), "footer on stderr");
    let out = kalam(&url, "u_a", PW, &["--format", "json", "-c", sql]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "[{\"id\":1,\"body\":\"a-1\"},{\"id\":2,\"body\":\"a-2\"},{\"id\":3,\"body\":\"a-3\"}]\n"
    );
    let out = kalam(&url, "u_a", PW, &["-q", "--format", "ndjson", "-c", sql]);
    assert_eq!(
        stdout(&out),
        "{\"id\":1,\"body\":\"a-1\"}\n{\"id\":2,\"body\":\"a-2\"}\n{\"id\":3,\"body\":\"a-3\"}\n"
    );
    assert_eq!(stderr(&out), "", "-q prints no footer");
    // No rows: CSV still has its header, JSON is an empty array.
    let empty = "SELECT id, body FROM app.m WHERE id > 100";
    let out = kalam(&url, "u_a", PW, &["-q", "--format", "csv", "-c", empty]);
    assert_eq!(stdout(&out), "id,body\n");
    let out = kalam(&url, "u_a", PW, &["-q", "--format", "json", "-c", empty]);
    assert_eq!(stdout(&out).trim(), "[]");
}

#[tokio::test]
async fn cli_runs_a_script_file() {
    let f = fixture().await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.sql");
    std::fs::write(
        &script,
        "-- a comment; not a statement\n\
         CREATE SHARED TABLE app.notes (id BIGINT PRIMARY KEY, note TEXT);\n\
         INSERT INTO app.notes VALUES\n  (1, 'semi;colon'),\n  (2, 'it''s');\n\
         \\format csv\n\
         SELECT id, note FROM app.notes\n ORDER BY id;\n\
         SELECT count(*) AS n FROM app.notes",
    )
    .unwrap();
    let out = kalam(
        &f.server.url(),
        "root",
        kalam_tests::ROOT_PASSWORD,
        &["-q", "-f", script.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "id,note\n1,semi;colon\n2,it's\nn\n2\n");
    // A failing statement stops the script with exit code 1.
    std::fs::write(
        &script,
        "INSERT INTO app.notes VALUES (3, 'x');\nINSERT INTO app.notes VALUES (3, 'dup');\nINSERT INTO app.notes VALUES (4, 'never');\n",
    )
    .unwrap();
    let out = kalam(
        &f.server.url(),
        "root",
        kalam_tests::ROOT_PASSWORD,
        &["-f", script.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("ERROR: ALREADY_EXISTS: "),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        crate::common::ints(&f.root, "SELECT id FROM app.notes ORDER BY id").await,
        vec![1, 2, 3]
    );
    // A missing script is a usage error.
    let out = kalam(&f.server.url(), "root", "x", &["-f", "/no/such/script.sql"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with("ERROR: cannot open the script"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn cli_login_and_connection_failures_exit_2() {
    let f = fixture().await;
    let out = kalam(&f.server.url(), "u_a", "wrong", &["-c", "SELECT 1"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("ERROR: UNAUTHENTICATED: "), "{err}");
    assert_eq!(stdout(&out), "");
    // Nothing listens on port 1.
    let out = kalam("grpc://127.0.0.1:1", "u_a", PW, &["-c", "SELECT 1"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("ERROR: cannot connect to 'grpc://127.0.0.1:1'"),
        "{err}"
    );
    // Usage errors: a binary format without an output file, an unknown flag.
    let out = kalam(
        &f.server.url(),
        "u_a",
        PW,
        &["--format", "parquet", "-c", "SELECT 1"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--output"), "{}", stderr(&out));
    let out = kalam(&f.server.url(), "u_a", PW, &["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn cli_writes_parquet_and_arrow_ipc_files() {
    let f = fixture().await;
    let dir = tempfile::tempdir().unwrap();
    // Several batches' worth of rows, so the writers see more than one batch.
    let sql = "SELECT value AS v FROM range(0, 200000)";
    let expected = (200_000usize, (0..200_000i64).sum::<i64>());

    let parquet = dir.path().join("out.parquet");
    let out = kalam(
        &f.server.url(),
        "u_a",
        PW,
        &[
            "--format",
            "parquet",
            "--output",
            parquet.to_str().unwrap(),
            "-c",
            sql,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        File::open(&parquet).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    assert_eq!(batches[0].schema().field(0).name(), "v");
    assert_eq!(sum_i64(&batches), expected);

    let ipc = dir.path().join("out.arrow");
    let out = kalam(
        &f.server.url(),
        "u_a",
        PW,
        &["--format", "ipc", "-o", ipc.to_str().unwrap(), "-c", sql],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let reader = arrow::ipc::reader::FileReader::try_new(File::open(&ipc).unwrap(), None).unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    assert_eq!(sum_i64(&batches), expected);
}

/// A child process on a pseudo-terminal, its output collected by a reader thread.
struct Pty {
    child: Child,
    /// Master side: what we write is typed into the child.
    master: File,
    /// Everything the child printed so far.
    output: Arc<Mutex<String>>,
    /// How much of `output` earlier `expect` calls consumed.
    seen: usize,
}

impl Pty {
    fn spawn(mut command: Command) -> Pty {
        let mut master = -1;
        let mut slave = -1;
        let size = libc::winsize {
            ws_row: 50,
            ws_col: 250,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two descriptors; the null name and termios are allowed.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just opened and are owned here.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        // SAFETY: sets FD_CLOEXEC on a descriptor we own, so the child does not inherit it.
        unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        command
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                // A new session whose controlling terminal is the pty (stdin), so Ctrl-C
                // typed into it sends SIGINT to the child.
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        // The slave descriptors in `command` close here, so reads end when the child exits.
        drop(command);
        let master = File::from(master);
        let mut reader = master.try_clone().unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&output);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Pty {
            child,
            master,
            output,
            seen: 0,
        }
    }

    /// Waits until `needle` appears in the output after what was already consumed, and
    /// consumes up to its end; returns the consumed text.
    fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            {
                let output = self.output.lock().unwrap();
                if let Some(at) = output[self.seen..].find(needle) {
                    let end = self.seen + at + needle.len();
                    let text = output[self.seen..end].to_owned();
                    self.seen = end;
                    return text;
                }
                assert!(
                    Instant::now() < deadline,
                    "no {needle:?} within 60 s; output after the last match:\n{}",
                    &output[self.seen..]
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Types `text`.
    fn send(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).unwrap();
        self.master.flush().unwrap();
    }

    /// Waits for the child to exit; returns its exit code.
    fn wait(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "kalam did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn cli_interactive_session_through_a_terminal() {
    let f = fixture().await;
    let home = tempfile::tempdir().unwrap();
    let mut command = Command::new(kalam_tests::cli_bin().unwrap());
    command
        .args(["--url", &f.server.url(), "-u", "u_a"])
        .env_remove("KALAM_PASSWORD")
        .env("HOME", home.path())
        .env("TERM", "xterm");
    let mut pty = Pty::spawn(command);

    // The password prompt does not echo what is typed.
    pty.expect("Password for u_a: ");
    pty.send(&format!("{PW}\r"));
    let banner = pty.expect("kalam> ");
    assert!(!banner.contains(PW), "password echoed: {banner:?}");
    assert!(banner.contains("connected to"), "{banner:?}");

    // A statement over three lines, with the continuation prompt.
    pty.send("SELECT id,\r");
    pty.expect("kalam-> ");
    pty.send("  body FROM app.m\r");
    pty.expect("kalam-> ");
    pty.send("ORDER BY id;\r");
    let result = pty.expect("(3 rows, ");
    assert!(result.contains("| 3  | a-3  |"), "{result:?}");
    pty.expect("kalam> ");

    // \dt lists the tables this user may see.
    pty.send("\\dt app\r");
    let listing = pty.expect("kalam> ");
    for table in ["| app       | m     |", "| app       | rooms |"] {
        assert!(listing.contains(table), "{table} missing from {listing:?}");
    }
    assert!(
        !listing.contains("secret"),
        "a PRIVATE table is listed: {listing:?}"
    );

    // An error is one line, and the shell goes on.
    pty.send("SELECT * FROM app.nope;\r");
    let error = pty.expect("kalam> ");
    assert!(error.contains("ERROR: NOT_FOUND: "), "{error:?}");
    // \subscribe prints the snapshot, then a row another client inserts, until Ctrl-C.
    pty.send("\\subscribe SELECT id, body FROM app.m WHERE id > 1\r");
    let snapshot = pty.expect("-- live from seq");
    assert!(snapshot.contains("| 2  | a-2  | "), "{snapshot:?}");
    assert!(snapshot.contains("snapshot"), "{snapshot:?}");
    f.a.execute("INSERT INTO app.m VALUES (9, 'r1', 'a-9')")
        .await
        .unwrap();
    let change = pty.expect("insert");
    assert!(change.contains("| 9  | a-9  |"), "{change:?}");
    pty.send("\x03");
    pty.expect("live query stopped");
    pty.expect("kalam> ");
    pty.send("SELECT 40 + 2 AS answer;\r");
    let result = pty.expect("(1 row, ");
    assert!(result.contains("| 42     |"), "{result:?}");
    pty.expect("kalam> ");

    // Ctrl-C cancels a long query; the live counter shows it is running first.
    pty.send("SELECT sum(value % 7) AS s FROM range(0, 1000000000000);\r");
    pty.expect("(Ctrl-C cancels)");
    pty.send("\x03");
    pty.expect("ERROR: CANCELLED: query cancelled");
    pty.expect("kalam> ");
    pty.send("SELECT 7 AS seven;\r");
    let result = pty.expect("(1 row, ");
    assert!(result.contains("| 7     |"), "{result:?}");
    pty.expect("kalam> ");

    // Ctrl-C at the prompt drops the unfinished statement.
    pty.send("SELECT 'half\r");
    pty.expect("kalam-> ");
    pty.send("\x03");
    pty.expect("kalam> ");
    pty.send("SELECT 'whole' AS w;\r");
    let result = pty.expect("(1 row, ");
    assert!(result.contains("| whole |"), "{result:?}");
    assert!(!result.contains("ERROR"), "{result:?}");
    pty.expect("kalam> ");

    // Ctrl-D exits cleanly and the history was saved.
    pty.send("\x04");
    assert_eq!(pty.wait(), Some(0));
    let history = std::fs::read_to_string(home.path().join(".kalam_history")).unwrap();
    assert!(history.contains("SELECT 40 + 2 AS answer;"), "{history}");
    assert!(history.contains("\\dt app"), "{history}");
}

#[tokio::test]
async fn cli_logs_in_again_when_its_token_expires() {
    let server = kalam_tests::TestServer::start_with(&["--token-ttl-secs", "1"]).unwrap();
    let home = tempfile::tempdir().unwrap();
    let mut command = Command::new(kalam_tests::cli_bin().unwrap());
    command
        .args(["--url", &server.url(), "-u", "root"])
        .env("KALAM_PASSWORD", kalam_tests::ROOT_PASSWORD)
        .env("HOME", home.path())
        .env("TERM", "xterm");
    let mut pty = Pty::spawn(command);
    pty.expect("kalam> ");
    pty.send("SELECT 1 AS one;\r");
    pty.expect("(1 row, ");
    pty.expect("kalam> ");
    // Not synchronisation: the token must be older than its 1 s lifetime.
    std::thread::sleep(Duration::from_millis(2500));
    pty.send("SELECT 2 AS two;\r");
    let result = pty.expect("kalam> ");
    assert!(result.contains("| 2   |"), "{result:?}");
    assert!(!result.contains("ERROR"), "{result:?}");
    pty.send("\\q\r");
    assert_eq!(pty.wait(), Some(0));
}
