//! Test support for KalamFlight's end-to-end tests: start the real `kalam-server` binary on
//! `127.0.0.1:0` with a fresh data directory, connect real clients, stop it gracefully.
//!
//! The binary is `$KALAM_SERVER_BIN`, or `kalam-server` next to the test executable's target
//! directory (`cargo build --bins` first; `scripts/test.sh` does); the CLI likewise
//! ([`cli_bin`]).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Password given to `root` in every test server.
pub const ROOT_PASSWORD: &str = "root-test-pw";

/// A running server process. Stop it with [`TestServer::stop`]; dropping it kills it.
pub struct TestServer {
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Holds the data directory until the server is gone.
    pub data_dir: tempfile::TempDir,
}

fn server_bin() -> Result<PathBuf> {
    built_bin("KALAM_SERVER_BIN", "kalam-server")
}

/// The `kalam` CLI binary: `$KALAM_CLI_BIN`, or `kalam` next to the test executable's target
/// directory (`cargo build --bins` first; `scripts/test.sh` does).
pub fn cli_bin() -> Result<PathBuf> {
    built_bin("KALAM_CLI_BIN", "kalam")
}

/// `$env` if set, else the binary `name` in the target directory of the running test.
fn built_bin(env: &str, name: &str) -> Result<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        return Ok(PathBuf::from(p));
    }
    // target/debug/deps/e2e-xxxx → target/debug/<name>
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .context("cannot locate target dir")?;
    let bin = dir.join(name);
    if !bin.exists() {
        bail!(
            "{} not found: run `cargo build --bins` or set {env}",
            bin.display()
        );
    }
    Ok(bin)
}

impl TestServer {
    /// Starts a server with default flags plus `extra_args`.
    pub fn start_with(extra_args: &[&str]) -> Result<Self> {
        let data_dir = tempfile::tempdir()?;
        Self::start_in(data_dir, extra_args)
    }

    /// Starts a server.
    pub fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    /// Starts a server over an existing data directory (restart tests).
    pub fn start_in(data_dir: tempfile::TempDir, extra_args: &[&str]) -> Result<Self> {
        let mut child = Command::new(server_bin()?)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir.path())
            .args(extra_args)
            .env("KALAM_ROOT_PASSWORD", ROOT_PASSWORD)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning kalam-server")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                bail!("kalam-server did not print 'listening on' within 60 s");
            }
        };
        Ok(Self {
            child: Some(child),
            addr,
            data_dir,
        })
    }

    /// `grpc://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("grpc://{}", self.addr)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Resident set size of the server process, in bytes.
    pub fn rss_bytes(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmRSS")?;
        Ok(kb * 1024)
    }

    /// A client logged in as `user`.
    pub async fn client(&self, user: &str, password: &str) -> Result<kalam_client::KalamClient> {
        let mut c = kalam_client::KalamClient::connect(&self.url()).await?;
        c.login(user, password).await?;
        Ok(c)
    }

    /// A client logged in as root.
    pub async fn root(&self) -> Result<kalam_client::KalamClient> {
        self.client("root", ROOT_PASSWORD).await
    }

    /// Kills the server with SIGKILL (a crash) and returns its data directory.
    pub fn kill9(mut self) -> Result<tempfile::TempDir> {
        let mut child = self.child.take().context("already stopped")?;
        child.kill()?;
        child.wait()?;
        Ok(std::mem::replace(&mut self.data_dir, tempfile::tempdir()?))
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit code.
    pub fn stop(mut self) -> Result<(i32, tempfile::TempDir)> {
        let mut child = self.child.take().context("already stopped")?;
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait()? {
                let data_dir = std::mem::replace(&mut self.data_dir, tempfile::tempdir()?);
                return Ok((s.code().unwrap_or(-1), data_dir));
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                bail!("server did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
