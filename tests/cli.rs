//! The `contender` binary: `models list`, `validate`, configuration errors
//! (exit 64), environment overrides, and `serve` with a graceful drain on
//! SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_contender");
const EXIT_CONFIG: i32 = 64;
/// The ONNX model versions of the example repository.
const ONNX_MODELS: &[(&str, u64)] = &[
    ("breast_cancer", 1),
    ("breast_cancer", 2),
    ("breast_cancer", 3),
    ("diabetes", 1),
    ("dtypes", 1),
];
/// Bound on anything the child is waited for (start, ready, exit).
const TIMEOUT: Duration = Duration::from_secs(120);

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The binary, run from the repository root (so `contender.toml` is found),
/// with no inherited `CONTENDER_*` configuration and plain (uncoloured) logs.
fn contender() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(repo_root());
    for (key, _) in std::env::vars_os() {
        if let Some(k) = key.to_str()
            && k.starts_with("CONTENDER_")
            && k != "CONTENDER_CACHE_DIR"
        {
            cmd.env_remove(k);
        }
    }
    cmd.env("NO_COLOR", "1").env("RUST_LOG", "info");
    // Keep the durable state of these runs out of the repository's `data/`.
    let data = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-data");
    cmd.env("CONTENDER_STORE__DATA_DIR", data);
    cmd
}

fn run(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    // Read both pipes off-thread so a full pipe cannot block the child.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let status = wait_bounded(&mut child);
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// Waits for the child at most [`TIMEOUT`]; kills it and fails past that.
fn wait_bounded(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child did not exit within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    )
}

#[test]
fn models_list_prints_a_table_of_every_version() {
    let o = run(contender().args(["models", "list"]));
    assert!(o.status.success(), "{}", describe(&o));
    let stdout = text(&o.stdout);
    let mut lines = stdout.lines();
    let header = lines.next().expect("a header line");
    for col in ["NAME", "VERSION", "FORMAT", "DEPLOYED"] {
        assert!(header.contains(col), "{header}");
    }
    let rows: Vec<Vec<&str>> = lines
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    let pairs: Vec<(&str, &str)> = rows.iter().map(|r| (r[0], r[1])).collect();
    for (name, version) in ONNX_MODELS {
        assert!(
            pairs
                .iter()
                .any(|(n, v)| n == name && *v == version.to_string()),
            "{name} {version} missing from\n{stdout}"
        );
    }
    let champion = stdout
        .lines()
        .find(|l| l.starts_with("breast_cancer ") && l.split_whitespace().nth(1) == Some("1"))
        .expect("breast_cancer 1 row");
    assert!(champion.contains("champion of breast_cancer"), "{champion}");
    // contender.toml's shadows say so too.
    let shadow = stdout
        .lines()
        .find(|l| l.starts_with("breast_cancer ") && l.split_whitespace().nth(1) == Some("2"))
        .expect("breast_cancer 2 row");
    assert!(shadow.contains("shadow in breast_cancer"), "{shadow}");
    assert!(!stdout.contains("_data"), "{stdout}");
}

#[test]
fn models_list_json_parses() {
    let o = run(contender().args(["models", "list", "--json"]));
    assert!(o.status.success(), "{}", describe(&o));
    let doc: Value = serde_json::from_slice(&o.stdout).expect("stdout is JSON");
    let models = doc["models"].as_array().expect("models array");
    let mut pairs: Vec<(String, u64)> = models
        .iter()
        .map(|m| {
            (
                m["name"].as_str().expect("name").to_owned(),
                m["version"].as_u64().expect("numeric version"),
            )
        })
        .collect();
    pairs.sort();
    for (name, version) in ONNX_MODELS {
        assert!(
            pairs.contains(&((*name).to_owned(), *version)),
            "{name}@{version} missing from {pairs:?}"
        );
        let m = models
            .iter()
            .find(|m| m["name"] == *name && m["version"] == *version)
            .expect("listed");
        assert_eq!(m["format"], "onnx", "{m}");
        assert!(m["size_bytes"].as_u64().unwrap_or(0) > 0, "{m}");
    }
    let bc1 = models
        .iter()
        .find(|m| m["name"] == "breast_cancer" && m["version"] == 1)
        .expect("breast_cancer 1");
    assert_eq!(bc1["metadata"]["task"], "classification", "{bc1}");
    // Directories the scan skipped come with a path and a reason.
    for p in doc["skipped"].as_array().expect("skipped array") {
        assert!(p["reason"].as_str().is_some_and(|r| !r.is_empty()), "{p}");
    }
}

#[test]
fn validate_prints_the_signature() {
    let o = run(contender().args(["validate", "models/breast_cancer/1"]));
    assert!(o.status.success(), "{}", describe(&o));
    let stdout = text(&o.stdout);
    assert!(
        stdout.contains("valid: breast_cancer version 1"),
        "{stdout}"
    );
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        rows.contains(&vec!["input", "input", "FP32", "[-1,", "30]"]),
        "no `input input FP32 [-1, 30]` line in\n{stdout}"
    );
    assert!(
        rows.contains(&vec!["output", "label", "INT64", "[-1]"]),
        "{stdout}"
    );
    // The drift reference statistics beside the model are checked too.
    assert!(
        stdout.contains("reference statistics: valid; 30 features"),
        "{stdout}"
    );
    assert!(
        rows.contains(&vec!["output", "probabilities", "FP32", "[-1,", "2]"]),
        "{stdout}"
    );

    let o = run(contender().args(["validate", "models/dtypes/1"]));
    assert!(o.status.success(), "{}", describe(&o));
    let stdout = text(&o.stdout);
    assert!(stdout.contains("valid: dtypes version 1"), "{stdout}");
    assert!(stdout.contains("BOOL"), "{stdout}");
}

#[test]
fn validate_rejects_broken_directories() {
    let tmp = tempfile::tempdir().expect("tempdir");

    // A model file that is not ONNX.
    let garbage = tmp.path().join("broken").join("1");
    std::fs::create_dir_all(&garbage).expect("mkdir");
    std::fs::write(garbage.join("model.onnx"), b"this is not a protobuf").expect("write");
    let o = run(contender().arg("validate").arg(&garbage));
    assert!(!o.status.success(), "{}", describe(&o));
    assert_ne!(o.status.code(), Some(EXIT_CONFIG), "{}", describe(&o));
    let stderr = text(&o.stderr);
    assert!(stderr.contains("invalid"), "{stderr}");
    assert!(stderr.contains("broken"), "the path is named: {stderr}");

    // No model file at all.
    let empty = tmp.path().join("empty").join("1");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let o = run(contender().arg("validate").arg(&empty));
    assert!(!o.status.success(), "{}", describe(&o));
    assert!(text(&o.stderr).contains("model.onnx"), "{}", describe(&o));

    // Not a version directory.
    let latest = tmp.path().join("m").join("latest");
    std::fs::create_dir_all(&latest).expect("mkdir");
    std::fs::copy(
        repo_root().join("models/breast_cancer/1/model.onnx"),
        latest.join("model.onnx"),
    )
    .expect("copy");
    let o = run(contender().arg("validate").arg(&latest));
    assert!(!o.status.success(), "{}", describe(&o));
    assert!(text(&o.stderr).contains("latest"), "{}", describe(&o));

    // A directory that does not exist.
    let o = run(contender()
        .arg("validate")
        .arg(tmp.path().join("nowhere/1")));
    assert!(!o.status.success(), "{}", describe(&o));
    assert!(text(&o.stderr).contains("nowhere"), "{}", describe(&o));
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("contender.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn assert_config_error(o: &Output, key: &str) {
    assert_eq!(o.status.code(), Some(EXIT_CONFIG), "{}", describe(o));
    let stderr = text(&o.stderr);
    assert!(stderr.contains(key), "stderr should name {key}: {stderr}");
}

#[test]
fn bad_configuration_exits_64_naming_the_key() {
    let tmp = tempfile::tempdir().expect("tempdir");

    let path = write_config(tmp.path(), "[server]\nhttp_addr = \"nope\"\n");
    let o = run(contender()
        .arg("--config")
        .arg(&path)
        .args(["models", "list"]));
    assert_config_error(&o, "server.http_addr");

    let path = write_config(tmp.path(), "[server]\nhttp_adr = \"127.0.0.1:1\"\n");
    let o = run(contender()
        .arg("--config")
        .arg(&path)
        .args(["models", "list"]));
    assert_config_error(&o, "http_adr");

    let path = write_config(tmp.path(), "[runtime]\nmax_batch_size = 0\n");
    let o = run(contender()
        .arg("--config")
        .arg(&path)
        .args(["models", "list"]));
    assert_config_error(&o, "runtime.max_batch_size");

    let o = run(contender()
        .arg("--config")
        .arg(tmp.path().join("missing.toml"))
        .args(["models", "list"]));
    assert_config_error(&o, "missing.toml");

    // A champion version the repository does not have: found when serving.
    let models = repo_root().join("models");
    let path = write_config(
        tmp.path(),
        &format!(
            "[repository]\npath = {:?}\n\n[deployments.breast_cancer.champion]\nmodel = \"breast_cancer\"\nversion = 9\n",
            models.display().to_string()
        ),
    );
    let o =
        run(contender()
            .arg("--config")
            .arg(&path)
            .args(["serve", "--http-addr", "127.0.0.1:0"]));
    assert_config_error(&o, "deployments.breast_cancer.champion");
    assert!(text(&o.stderr).contains('9'), "{}", describe(&o));

    // A champion model the repository does not have.
    let path = write_config(
        tmp.path(),
        &format!(
            "[repository]\npath = {:?}\n\n[deployments.x.champion]\nmodel = \"no_such_model\"\nversion = 1\n",
            models.display().to_string()
        ),
    );
    let o =
        run(contender()
            .arg("--config")
            .arg(&path)
            .args(["serve", "--http-addr", "127.0.0.1:0"]));
    assert_config_error(&o, "deployments.x.champion");
    assert!(
        text(&o.stderr).contains("no_such_model"),
        "{}",
        describe(&o)
    );
}

#[test]
fn environment_overrides_the_file() {
    let o = run(contender()
        .env("CONTENDER_SERVER__HTTP_ADDR", "nope")
        .args(["models", "list"]));
    assert_config_error(&o, "server.http_addr");

    let o = run(contender()
        .env(
            "CONTENDER_DEPLOYMENTS__BREAST_CANCER__CHAMPION__VERSION",
            "9",
        )
        .args(["serve", "--http-addr", "127.0.0.1:0"]));
    assert_config_error(&o, "deployments.breast_cancer.champion");

    // A valid override: the server listens where the environment says
    // (contender.toml says 0.0.0.0:8000).
    let mut server = Served::start(contender().env("CONTENDER_SERVER__HTTP_ADDR", "127.0.0.1:0"));
    assert_eq!(server.addr.ip().to_string(), "127.0.0.1");
    assert_ne!(server.addr.port(), 8000);
    server.wait_ready();
    let (status, body) = http(server.addr, "GET", "/v2/models/breast_cancer", b"").expect("GET");
    assert_eq!(status, 200, "{}", text(&body));
    let status = server.terminate();
    assert!(status.success(), "{status:?}\n{}", server.stderr_text());
}

/// A `contender serve` child whose stderr is collected line by line.
struct Served {
    child: Child,
    addr: SocketAddr,
    lines: mpsc::Receiver<String>,
    stderr: Vec<String>,
}

/// Removes ANSI escape sequences (in case colours are on despite NO_COLOR).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Served {
    /// Starts `cmd serve [args]` and waits (bounded) for the logged
    /// `addr=IP:PORT` of the HTTP listener.
    fn start(cmd: &mut Command) -> Served {
        Served::start_args(cmd, &[])
    }

    fn start_args(cmd: &mut Command, args: &[&str]) -> Served {
        let mut child = cmd
            .arg("serve")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("contender serve starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(strip_ansi(&line)).is_err() {
                    break;
                }
            }
        });
        let mut served = Served {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            lines: rx,
            stderr: Vec::new(),
        };
        let line = served.wait_for_line(|l| l.contains("listening") && l.contains("addr="));
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("no addr=IP:PORT in {line:?}"));
        served.addr = addr;
        served
    }

    /// The first stderr line (from now on) that satisfies `pred`; fails
    /// after [`TIMEOUT`] or when the child closes stderr first.
    fn wait_for_line(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stderr.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(e) => {
                    let _ = self.child.kill();
                    panic!(
                        "waiting for a log line: {e}; stderr so far:\n{}",
                        self.stderr_text()
                    );
                }
            }
        }
    }

    fn stderr_text(&self) -> String {
        self.stderr.join("\n")
    }

    /// Polls `/v2/health/ready` until 200 (bounded).
    fn wait_ready(&self) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Ok((200, _)) = http(self.addr, "GET", "/v2/health/ready", b"") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not ready within {TIMEOUT:?}:\n{}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed");
    }

    /// SIGTERM, then the exit status (bounded wait); drains stderr.
    fn terminate(&mut self) -> ExitStatus {
        self.sigterm();
        let status = wait_bounded(&mut self.child);
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.stderr.push(line);
        }
        status
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Splits a raw HTTP/1.1 response into status and body.
fn parse_response(raw: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("non-UTF-8 headers"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    Ok((status, raw[end + 4..].to_vec()))
}

/// A one-shot HTTP/1.1 request (`Connection: close`) over a plain socket.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// Reads from `s` until the end of one response head (`\r\n\r\n`).
fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("reading a response head");
        assert_eq!(n, 1, "connection closed mid-head: {:?}", text(&head));
        head.push(byte[0]);
    }
    text(&head)
}

fn holdout() -> (Vec<Vec<f64>>, Vec<i64>) {
    let read = |p: &str| -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(repo_root().join("models").join(p)).expect("read"),
        )
        .expect("JSON")
    };
    let features: Vec<Vec<f64>> =
        serde_json::from_value(read("_data/breast_cancer_holdout.json")["features"].clone())
            .expect("features");
    let labels: Vec<i64> =
        serde_json::from_value(read("breast_cancer/1/expected.json")["label"].clone())
            .expect("labels");
    (features, labels)
}

/// SIGTERM while a large request is in flight: the request still completes
/// (200, right answers) and the process exits 0.
///
/// Deterministic without timing: the request is sent with
/// `Expect: 100-continue`, so the server's `100 Continue` proves the handler
/// is running; the body is only sent after the server has logged that it is
/// shutting down.
#[test]
fn sigterm_drains_in_flight_requests_then_exits_0() {
    let mut server = Served::start_args(&mut contender(), &["--http-addr", "127.0.0.1:0"]);
    server.wait_ready();

    // 1001 rows (7 copies of the held-out set), under max_batch_size 1024.
    let (features, labels) = holdout();
    let copies = 7;
    let rows: Vec<&Vec<f64>> = std::iter::repeat_n(&features, copies).flatten().collect();
    let want: Vec<i64> = std::iter::repeat_n(&labels, copies)
        .flatten()
        .copied()
        .collect();
    let body = serde_json::to_vec(&json!({
        "id": "drain-1",
        "inputs": [{"name": "input", "shape": [rows.len(), 30], "datatype": "FP32", "data": rows}],
    }))
    .expect("body");

    let mut s = TcpStream::connect(server.addr).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    write!(
        s,
        "POST /v2/models/breast_cancer/infer HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        server.addr,
        body.len()
    )
    .expect("send the request head");
    let head = read_head(&mut s);
    assert!(
        head.starts_with("HTTP/1.1 100"),
        "expected 100 Continue, got {head:?}"
    );

    // The handler is now waiting for the body. Ask the server to stop, and
    // wait until it says it is draining.
    server.sigterm();
    server.wait_for_line(|l| l.contains("shutting down"));

    s.write_all(&body).expect("send the body while draining");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let (status, resp) = parse_response(&raw).expect("an HTTP response");
    let resp: Value =
        serde_json::from_slice(&resp).unwrap_or_else(|e| panic!("{e}: {}", text(&resp)));
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["id"], "drain-1");
    let label = resp["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .find(|o| o["name"] == "label")
        .expect("label output");
    let got: Vec<i64> = serde_json::from_value(label["data"].clone()).expect("labels");
    assert_eq!(got, want);

    let status = wait_bounded(&mut server.child);
    while let Ok(line) = server.lines.recv_timeout(Duration::from_secs(5)) {
        server.stderr.push(line);
    }
    assert!(status.success(), "{status:?}\n{}", server.stderr_text());
    assert!(
        server.stderr.iter().any(|l| l.contains("stopped")),
        "{}",
        server.stderr_text()
    );
}
