//! The README's five-minute tour, run as written, so the README cannot rot.

use std::process::Command;

use kalam_tests::TestServer;

/// The shell lines between the README's `tour:begin` and `tour:end` markers.
fn tour_lines() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let start = readme.find("<!-- tour:begin").expect("tour:begin marker");
    let end = readme.find("<!-- tour:end -->").expect("tour:end marker");
    readme[start..end]
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("KALAM_PASSWORD=") || l.starts_with("export "))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn readme_tour_runs_as_written() {
    let server = TestServer::start_with_env(&[], &[("KALAM_ROOT_PASSWORD", "secret")]).unwrap();
    let cli = kalam_tests::cli_bin().unwrap();
    let bin_dir = cli.parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let lines = tour_lines();
    assert!(lines.len() >= 9, "tour not found: {lines:?}");
    let mut outputs = Vec::new();
    for line in &lines {
        // The tour's URL is the default port; point it at this test's server.
        let line = line.replace("grpc://127.0.0.1:50051", &server.url());
        let script = format!(
            "set -e\n{}\n{line}",
            lines_before_exports(&lines, &server.url())
        );
        let out = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env("PATH", &path)
            .env("HOME", std::env::temp_dir())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{line}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push(String::from_utf8_lossy(&out.stdout).to_string());
    }
    let alice = &outputs[lines.len() - 2];
    let bob = &outputs[lines.len() - 1];
    assert!(
        alice.contains("note of alice") && !alice.contains("note of bob"),
        "{alice}"
    );
    assert!(
        bob.contains("note of bob") && !bob.contains("note of alice"),
        "{bob}"
    );
}

/// The tour's `export` lines, aimed at `url` (each command runs in its own shell).
fn lines_before_exports(lines: &[String], url: &str) -> String {
    lines
        .iter()
        .filter(|l| l.starts_with("export "))
        .map(|l| l.replace("grpc://127.0.0.1:50051", url))
        .collect::<Vec<_>>()
        .join("\n")
}
