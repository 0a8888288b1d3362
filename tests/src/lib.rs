//! Test support for KalamFlight's end-to-end tests: start the real `kalam-server` binary on
//! `127.0.0.1:0` with a fresh data directory, connect real clients, stop it gracefully.
//!
//! The binary is `$KALAM_SERVER_BIN`, or `kalam-server` next to the test executable's target
//! directory (`cargo build --bins` first; `scripts/test.sh` does); the CLI likewise
//! ([`cli_bin`]).
//!
//! S3 tests run against [`Moto`], a local moto server (`pip install 'moto[server]'`, which
//! `scripts/test.sh` does into its venv).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
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
    /// `127.0.0.1:PORT` of the metrics endpoint, if `--metrics-listen` was given.
    pub metrics_addr: Option<String>,
    /// CA certificate (PEM) the clients trust; set when the server serves TLS.
    pub tls_ca_pem: Option<String>,
    /// Holds the data directory until the server is gone.
    pub data_dir: tempfile::TempDir,
}

/// A test CA and a server certificate it signed, for `localhost` and `127.0.0.1`, written
/// as PEM files into a temporary directory.
pub struct TestCerts {
    /// The CA certificate (PEM) clients should trust.
    pub ca_pem: String,
    /// Server certificate file (PEM), for `--tls-cert`.
    pub cert_path: PathBuf,
    /// Server private key file (PEM, PKCS#8), for `--tls-key`.
    pub key_path: PathBuf,
    /// Holds the files.
    pub dir: tempfile::TempDir,
}

impl TestCerts {
    /// Generates a fresh CA and server certificate.
    pub fn generate() -> Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kalam test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        let leaf_key = KeyPair::generate()?;
        let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?
            .signed_by(&leaf_key, &ca)?;
        let dir = tempfile::tempdir()?;
        let cert_path = dir.path().join("server.pem");
        let key_path = dir.path().join("server.key");
        std::fs::write(&cert_path, leaf.pem())?;
        std::fs::write(&key_path, leaf_key.serialize_pem())?;
        Ok(Self {
            ca_pem: ca.pem(),
            cert_path,
            key_path,
            dir,
        })
    }

    /// `--tls-cert F --tls-key F`.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert_path.display().to_string(),
            "--tls-key".into(),
            self.key_path.display().to_string(),
        ]
    }
}

/// The `kalam-server` binary: `$KALAM_SERVER_BIN`, or `kalam-server` next to the test
/// executable's target directory.
pub fn server_bin() -> Result<PathBuf> {
    built_bin("KALAM_SERVER_BIN", "kalam-server")
}

/// The `kalam` CLI binary: `$KALAM_CLI_BIN`, or `kalam` next to the test executable's target
/// directory (`cargo build --bins` first; `scripts/test.sh` does).
pub fn cli_bin() -> Result<PathBuf> {
    built_bin("KALAM_CLI_BIN", "kalam")
}

/// The `kalam-bench` load tool: `$KALAM_BENCH_BIN`, or `kalam-bench` next to the test
/// executable's target directory.
pub fn bench_bin() -> Result<PathBuf> {
    built_bin("KALAM_BENCH_BIN", "kalam-bench")
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
        Self::start_env(data_dir, extra_args, &[])
    }

    /// Starts a server with default flags plus `extra_args` and extra environment variables.
    pub fn start_with_env(extra_args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        Self::start_env(tempfile::tempdir()?, extra_args, env)
    }

    /// Starts a server serving TLS with a fresh test certificate; its clients trust the CA.
    pub fn start_tls(extra_args: &[&str]) -> Result<(Self, TestCerts)> {
        let certs = TestCerts::generate()?;
        let mut args: Vec<String> = certs.args();
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut server = Self::start_with(&args)?;
        server.tls_ca_pem = Some(certs.ca_pem.clone());
        Ok((server, certs))
    }

    /// Starts a server over `data_dir` with extra environment variables.
    pub fn start_env(
        data_dir: tempfile::TempDir,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let mut child = Command::new(server_bin()?)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir.path())
            .args(extra_args)
            .envs(env.iter().copied())
            .env("KALAM_ROOT_PASSWORD", ROOT_PASSWORD)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning kalam-server")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // The metrics line, if any, comes before the main one.
            let mut metrics = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("metrics listening on ") {
                    metrics = Some(addr.trim().to_string());
                } else if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send((addr.trim().to_string(), metrics.take()));
                }
            }
        });
        let (addr, metrics_addr) = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                bail!("kalam-server did not print 'listening on' within 60 s");
            }
        };
        Ok(Self {
            child: Some(child),
            addr,
            metrics_addr,
            tls_ca_pem: None,
            data_dir,
        })
    }

    /// Runs the server with `extra_args` expecting it to refuse to start; returns its exit
    /// code and stderr.
    pub fn start_expecting_failure(
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<(i32, String)> {
        let data_dir = tempfile::tempdir()?;
        let mut child = Command::new(server_bin()?)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir.path())
            .args(extra_args)
            .env("KALAM_ROOT_PASSWORD", ROOT_PASSWORD)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning kalam-server")?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    std::io::Read::read_to_string(&mut e, &mut stderr)?;
                }
                return Ok((status.code().unwrap_or(-1), stderr));
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("kalam-server kept running; expected it to refuse to start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `grpc://127.0.0.1:PORT`, or `grpc+tls://localhost:PORT` when the server serves TLS.
    pub fn url(&self) -> String {
        match &self.tls_ca_pem {
            Some(_) => format!("grpc+tls://{}", self.addr),
            None => format!("grpc://{}", self.addr),
        }
    }

    /// `GET path` on the metrics endpoint: (HTTP status code, body).
    pub fn scrape(&self, path: &str) -> Result<(u16, String)> {
        use std::io::{Read, Write};
        let addr = self.metrics_addr.as_ref().context("no --metrics-listen")?;
        let mut stream = std::net::TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .context("no end of HTTP head")?;
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no HTTP status")?;
        Ok((code, body.to_string()))
    }

    /// The value of one series (exact name with labels) on `/metrics`.
    pub fn metric(&self, series: &str) -> Result<f64> {
        let (code, body) = self.scrape("/metrics")?;
        if code != 200 {
            bail!("GET /metrics answered {code}");
        }
        Ok(metric_value(&body, series).unwrap_or(0.0))
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
        let mut options = kalam_client::ConnectOptions::new();
        if let Some(ca) = &self.tls_ca_pem {
            options = options.ca_certificate_pem(ca.as_bytes());
        }
        let mut c = kalam_client::KalamClient::connect_with(&self.url(), &options).await?;
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

/// The value of `series` (name and labels exactly as printed) in a Prometheus text page;
/// `None` if absent.
pub fn metric_value(page: &str, series: &str) -> Option<f64> {
    page.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A moto S3 server on a free `127.0.0.1` port, started from `$KALAM_MOTO_SERVER`, else
/// `$VENV/bin/moto_server` (VENV defaults to `~/.cache/kalam-venv`, as in `scripts/test.sh`),
/// else `moto_server` on `PATH`. Killed on drop.
pub struct Moto {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

/// Access key given to moto (which accepts any credentials).
pub const MOTO_KEY_ID: &str = "kalam-test-key";
/// Secret key given to moto.
pub const MOTO_SECRET: &str = "kalam-test-secret";

fn moto_bin() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("KALAM_MOTO_SERVER") {
        let path = PathBuf::from(&p);
        if !path.is_file() {
            bail!(
                "KALAM_MOTO_SERVER={p} does not exist; install it with `pip install 'moto[server]'`"
            );
        }
        return Ok(path);
    }
    let venv = std::env::var_os("VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kalam-venv")));
    if let Some(bin) = venv.map(|v| v.join("bin/moto_server"))
        && bin.is_file()
    {
        return Ok(bin);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("moto_server"))
            .find(|p| p.is_file())
    });
    on_path.context(
        "moto_server not found: the S3 tests need it. Run scripts/test.sh (it installs \
         tests/python/requirements.txt into ~/.cache/kalam-venv), or \
         `pip install 'moto[server]'` and set KALAM_MOTO_SERVER=/path/to/moto_server",
    )
}

/// Runs moto's server entry point with werkzeug's `threaded` turned off.
const MOTO_SINGLE_THREADED: &str = "\
import sys
import moto.server
_run_simple = moto.server.run_simple
def _single_threaded(*args, **kwargs):
    kwargs['threaded'] = False
    return _run_simple(*args, **kwargs)
moto.server.run_simple = _single_threaded
sys.exit(moto.server.main(sys.argv[1:]))
";

impl Moto {
    /// Starts moto and waits until it answers HTTP.
    pub fn start() -> Result<Self> {
        let bin = moto_bin()?;
        // Pick a free port; moto binds it right after (a tiny window another process could
        // take, in which case moto exits and the wait below reports it).
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        // moto checks If-None-Match and then writes, in Python: with its default threaded
        // server two racing creates can both succeed, which real S3 never allows. Run it
        // single-threaded (through the script's own interpreter) so each request is atomic.
        let script =
            std::fs::read_to_string(&bin).with_context(|| format!("reading {}", bin.display()))?;
        let mut interpreter = script
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("#!"))
            .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
            .filter(|words| !words.is_empty())
            .with_context(|| format!("{} has no #! line naming its Python", bin.display()))?;
        let program = interpreter.remove(0);
        let child = Command::new(&program)
            .args(&interpreter)
            .args([
                "-c",
                MOTO_SINGLE_THREADED,
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {program} for {}", bin.display()))?;
        let mut moto = Self {
            child,
            addr: format!("127.0.0.1:{port}"),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = moto.child.try_wait()? {
                bail!("{} exited during start-up: {status}", bin.display());
            }
            if let Ok((200, _)) = moto.request("GET", "/") {
                return Ok(moto);
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "{} did not answer on {} within 60 s",
                    bin.display(),
                    moto.addr
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends one unsigned HTTP/1.1 request (moto does not check signatures); returns the
    /// status code and body.
    pub fn request(&self, method: &str, path: &str) -> Result<(u16, String)> {
        let mut stream = TcpStream::connect(&self.addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("malformed HTTP response from moto: {response:.200}"))?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// Creates `bucket`.
    pub fn create_bucket(&self, bucket: &str) -> Result<()> {
        match self.request("PUT", &format!("/{bucket}"))? {
            (200, _) => Ok(()),
            (code, body) => bail!("creating bucket {bucket} on moto: HTTP {code}: {body:.500}"),
        }
    }

    /// The `kalam-server` flags for `s3://{bucket}/{prefix}` on this moto.
    pub fn server_args(&self, bucket: &str, prefix: &str) -> Vec<String> {
        [
            "--storage-url",
            &self.storage_url(bucket, prefix),
            "--s3-endpoint",
            &self.endpoint(),
            "--s3-allow-http",
            "--s3-region",
            "us-east-1",
            "--s3-access-key-id",
            MOTO_KEY_ID,
            "--s3-secret-access-key",
            MOTO_SECRET,
        ]
        .map(String::from)
        .to_vec()
    }

    /// `s3://{bucket}/{prefix}`.
    pub fn storage_url(&self, bucket: &str, prefix: &str) -> String {
        format!("s3://{bucket}/{prefix}")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `kalam-server` with `args` (and a fresh data directory) expecting it to refuse to
/// start within 60 s; returns its stderr. `env` adds environment variables.
pub fn start_failure(args: &[&str], env: &[(&str, &str)]) -> Result<String> {
    let data_dir = tempfile::tempdir()?;
    let mut child = Command::new(server_bin()?)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir.path())
        .args(args)
        .env("KALAM_ROOT_PASSWORD", ROOT_PASSWORD)
        .env("RUST_LOG", "error")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning kalam-server")?;
    let mut stderr = child.stderr.take().context("no stderr")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("kalam-server was still running after 60 s although it should have refused");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = reader
        .join()
        .map_err(|_| anyhow::anyhow!("stderr reader panicked"))?;
    if status.success() {
        bail!("kalam-server exited 0 although it should have refused: {stderr}");
    }
    Ok(stderr)
}
