//! Starting a release server for a benchmark.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Root password of benchmark servers.
pub(crate) const ROOT_PW: &str = "bench-root-pw";

/// A running server; killed on drop.
pub(crate) struct Server {
    child: Child,
    /// `grpc://127.0.0.1:PORT`.
    pub url: String,
    dir: tempfile::TempDir,
}

fn binary() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("KALAM_SERVER_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    let next_to_us = exe.with_file_name("kalam-server");
    if next_to_us.exists() {
        return Ok(next_to_us);
    }
    bail!(
        "kalam-server not found next to {}; build it with cargo build --release -p kalam-server or set KALAM_SERVER_BIN",
        exe.display()
    )
}

impl Server {
    /// Starts `kalam-server` with `args`.
    pub(crate) fn start(args: &[&str]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut child = Command::new(binary()?)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(args)
            .env("KALAM_ROOT_PASSWORD", ROOT_PW)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting kalam-server")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .context("server did not start")?;
        Ok(Self {
            child,
            url: format!("grpc://{addr}"),
            dir,
        })
    }

    /// Process id of the server.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's data directory.
    pub(crate) fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
