//! Interoperability with a client nobody here wrote: Triton's
//! `tritonclient[http]` (PyPI) runs `tests/python/tritonclient_check.py`
//! against the real server. Needs `.venv` with tests/python/requirements.txt
//! installed: `make test-deps`.

mod support;

use std::process::Command;

use support::{TestServer, repo_root};

/// `.venv/bin/python`, checked to import tritonclient; fails (never skips)
/// with the fix when it cannot.
fn venv_python() -> std::path::PathBuf {
    let python = repo_root().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run `make test-deps` to create .venv with tests/python/requirements.txt",
        python.display()
    );
    let probe = Command::new(&python)
        .args(["-c", "import numpy, tritonclient.http"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; run `make test-deps`", python.display()));
    assert!(
        probe.status.success(),
        "{} cannot import tritonclient[http] and numpy: run `make test-deps`\n{}",
        python.display(),
        String::from_utf8_lossy(&probe.stderr)
    );
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_http_speaks_to_contender() {
    let python = venv_python();
    let server = TestServer::start().await;
    let url = server.addr.to_string();
    let script = repo_root().join("tests/python/tritonclient_check.py");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args(["--url", &url])
            .current_dir(repo_root())
            .output()
    })
    .await
    .expect("the blocking task runs")
    .expect("the check script starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tritonclient_check.py failed ({:?})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    assert!(stdout.contains("OK"), "{stdout}");
    server.stop().await;
}
