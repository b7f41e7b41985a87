//! Access control on a real server: the admin API needs the admin bearer
//! token (a refused request gets a 401 JSON error and changes nothing),
//! inference and feedback need the inference token when one is set, health
//! and metadata stay open, short tokens are configuration errors, and tokens
//! from the environment protect `contender serve` while the CLI sends its
//! own (`CONTENDER_ADMIN_TOKEN`).

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{
    START_TIMEOUT, TestServer, assert_error, breast_cancer_features, challenger_of,
    classifier_request, config_toml, logged, repo_root,
};

const BIN: &str = env!("CARGO_BIN_EXE_contender");
const ADMIN: &str = "admin-token-0123456789abcdef";
const INFER: &str = "infer-token-fedcba9876543210";

fn tokens() -> String {
    format!("admin_token = \"{ADMIN}\"\ninference_token = \"{INFER}\"")
}

/// breast_cancer@2 shadows the `breast_cancer` deployment.
const SHADOW: &str = r#"
[[deployments.breast_cancer.challengers]]
model = "breast_cancer"
version = 2
mode = "shadow"
queue_capacity = 1024
timeout_ms = 60000
"#;

/// How a request authenticates.
#[derive(Clone, Copy, Debug)]
enum Auth<'a> {
    None,
    /// `Authorization: <raw header value>`.
    Header(&'a str),
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Sends a request; the status, the `WWW-Authenticate` header and the body
/// (JSON when it parses, else a string).
async fn send(
    ts: &TestServer,
    method: Method,
    path: &str,
    auth: Auth<'_>,
    body: Option<&Value>,
) -> (StatusCode, Option<String>, Value) {
    let mut req = ts.client.request(method.clone(), ts.url(path));
    if let Auth::Header(h) = auth {
        req = req.header("authorization", h);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = r.status();
    let www = r
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = r.text().await.expect("a readable body");
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, www, v)
}

/// Asserts a refused request: 401, a JSON `{"error"}` naming `needle`, and
/// `WWW-Authenticate: Bearer`.
fn assert_refused(
    what: &str,
    (status, www, body): &(StatusCode, Option<String>, Value),
    needle: &str,
) {
    assert_eq!(status.as_u16(), 401, "{what}: {body}");
    assert_error(*status, body, 401, &[needle]);
    assert_eq!(www.as_deref(), Some("Bearer"), "{what}");
}

/// The parts of a deployment's admin JSON a refused change must not touch.
fn state(d: &Value) -> Value {
    let challengers: Vec<Value> = d["challengers"]
        .as_array()
        .expect("challengers")
        .iter()
        .map(|c| json!([c["model"], c["version"], c["mode"], c["fraction"]]))
        .collect();
    json!({
        "champion": [d["champion"]["model"], d["champion"]["version"]],
        "challengers": challengers,
        "previous": d["promotion"]["previous_champion"],
    })
}

async fn admin_get(ts: &TestServer, path: &str) -> Value {
    let (status, _, body) = send(ts, Method::GET, path, Auth::Header(&bearer(ADMIN)), None).await;
    assert_eq!(status, 200, "GET {path} with the admin token: {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_the_admin_token_and_a_refusal_changes_nothing() {
    let ts = TestServer::start_with(&tokens(), SHADOW).await;
    let detail = "/admin/deployments/breast_cancer";
    let before = admin_get(&ts, detail).await;
    assert_eq!(state(&before)["champion"], json!(["breast_cancer", 1]));
    assert!(challenger_of(&before, "breast_cancer", 2).is_some());

    let add = json!({ "model": "breast_cancer", "version": 3, "mode": "shadow" });
    let promote = json!({ "model": "breast_cancer", "version": 2, "by": "mallory" });
    let requests: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/admin/deployments".into(), None),
        (Method::GET, detail.into(), None),
        (Method::GET, format!("{detail}/history"), None),
        (
            Method::POST,
            format!("{detail}/challengers"),
            Some(add.clone()),
        ),
        (
            Method::DELETE,
            format!("{detail}/challengers/breast_cancer/2"),
            None,
        ),
        (
            Method::POST,
            format!("{detail}/promote"),
            Some(promote.clone()),
        ),
        (Method::POST, format!("{detail}/rollback"), Some(json!({}))),
        (Method::GET, "/admin/deployments/nope".into(), None),
    ];
    let wrong_last = format!("{}X", &ADMIN[..ADMIN.len() - 1]);
    let refused: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("an empty bearer token", Some("Bearer ".into())),
        (
            "a wrong token of the same length",
            Some(bearer(&wrong_last)),
        ),
        (
            "a prefix of the token",
            Some(bearer(&ADMIN[..ADMIN.len() - 1])),
        ),
        ("the token and more", Some(bearer(&format!("{ADMIN}0")))),
        ("the inference token", Some(bearer(INFER))),
        ("another scheme", Some(format!("Basic {ADMIN}"))),
        ("the bare token", Some(ADMIN.into())),
    ];
    for (method, path, body) in &requests {
        for (what, header) in &refused {
            let auth = header.as_deref().map_or(Auth::None, Auth::Header);
            let r = send(&ts, method.clone(), path, auth, body.as_ref()).await;
            assert_refused(&format!("{method} {path} with {what}"), &r, "admin_token");
        }
    }

    // Nothing changed: same champion and challengers, no audit record.
    let after = admin_get(&ts, detail).await;
    assert_eq!(state(&after), state(&before));
    let history = admin_get(&ts, &format!("{detail}/history")).await;
    assert_eq!(history["history"], json!([]), "{history:#}");

    // With the token (the scheme is case-insensitive), each change works.
    let ok = bearer(ADMIN);
    let (status, _, body) = send(
        &ts,
        Method::POST,
        &format!("{detail}/challengers"),
        Auth::Header(&ok),
        Some(&add),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert!(challenger_of(&body, "breast_cancer", 3).is_some());
    let lower = format!("bearer {ADMIN}");
    let (status, _, body) = send(
        &ts,
        Method::POST,
        &format!("{detail}/promote"),
        Auth::Header(&lower),
        Some(&promote),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(state(&body)["champion"], json!(["breast_cancer", 2]));
    let (status, _, body) = send(
        &ts,
        Method::POST,
        &format!("{detail}/rollback"),
        Auth::Header(&ok),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(state(&body)["champion"], json!(["breast_cancer", 1]));
    let (status, _, body) = send(
        &ts,
        Method::DELETE,
        &format!("{detail}/challengers/breast_cancer/3"),
        Auth::Header(&ok),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let list = admin_get(&ts, "/admin/deployments").await;
    assert!(
        list["deployments"].as_array().is_some_and(|d| d.len() == 2),
        "{list}"
    );
    let history = admin_get(&ts, &format!("{detail}/history")).await;
    let actions: Vec<&str> = history["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|r| r["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "challenger_added",
            "promotion",
            "rollback",
            "challenger_removed"
        ]
    );
    assert_eq!(
        history["history"][1]["trigger"],
        json!({ "kind": "person", "name": "mallory" })
    );
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_and_feedback_need_the_inference_token_while_health_and_metadata_stay_open() {
    let ts = TestServer::start_with(&tokens(), "").await;
    let rows = breast_cancer_features();
    let body = classifier_request(&rows[..3]);
    let ok = bearer(INFER);
    let admin = bearer(ADMIN);
    let wrong = [
        Auth::None,
        Auth::Header("Bearer infer-token-fedcba987654321X"),
        Auth::Header(&admin),
    ];

    for path in [
        "/v2/models/breast_cancer/infer",
        "/v2/models/breast_cancer/versions/1/infer",
        "/v2/models/diabetes/infer",
    ] {
        for auth in wrong {
            let r = send(&ts, Method::POST, path, auth, Some(&body)).await;
            assert_refused(&format!("POST {path} with {auth:?}"), &r, "inference_token");
        }
    }
    // A refused inference is not served, nor logged.
    let d = admin_get(&ts, "/admin/deployments/breast_cancer").await;
    assert_eq!(d["champion"]["stats"]["served"], 0, "{:#}", d["champion"]);

    let (status, _, resp) = send(
        &ts,
        Method::POST,
        "/v2/models/breast_cancer/infer",
        Auth::Header(&ok),
        Some(&body),
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["model_version"], "1");
    let id = resp["id"].as_str().expect("a request id").to_owned();
    let (status, _, resp) = send(
        &ts,
        Method::POST,
        "/v2/models/breast_cancer/versions/1/infer",
        Auth::Header(&ok),
        Some(&body),
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    wait_admin(&ts, "breast_cancer", "the rows are logged", |d| {
        logged(d, "breast_cancer", 1) >= 3
    })
    .await;

    // Feedback: refused without the token (and nothing stored), then accepted.
    let label = json!({ "id": id, "row": 0, "label": 1 });
    for auth in wrong {
        let r = send(
            &ts,
            Method::POST,
            "/v2/models/breast_cancer/feedback",
            auth,
            Some(&label),
        )
        .await;
        assert_refused(&format!("feedback with {auth:?}"), &r, "inference_token");
    }
    let (status, _, resp) = send(
        &ts,
        Method::POST,
        "/v2/models/breast_cancer/feedback",
        Auth::Header(&ok),
        Some(&label),
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(
        resp["status"], "accepted",
        "the refused labels were not stored: {resp}"
    );
    let d = admin_get(&ts, "/admin/deployments/breast_cancer").await;
    assert_eq!(d["evaluation"]["rows_labelled"], 1, "{:#}", d["evaluation"]);

    // Open without any token.
    for path in [
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/breast_cancer",
        "/v2/models/breast_cancer/ready",
        "/v2/models/breast_cancer/config",
        "/v2/models/breast_cancer/versions/2",
        "/v2/models/breast_cancer/versions/2/ready",
        "/v2/models/stats",
        "/metrics",
    ] {
        let (status, _, body) = send(&ts, Method::GET, path, Auth::None, None).await;
        assert_eq!(status, 200, "GET {path} stays open: {body}");
    }
    let (status, _, body) = send(
        &ts,
        Method::POST,
        "/v2/repository/index",
        Auth::None,
        Some(&json!({})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    ts.stop().await;
}

#[test]
fn a_short_token_is_a_configuration_error_naming_its_key() {
    for key in ["admin_token", "inference_token"] {
        for token in ["short-token", "0123456789abcde", "   0123456789abc   ", ""] {
            let text = config_toml(&format!("{key} = {token:?}"), "");
            let err = contender::Config::from_toml(&text, &repo_root())
                .expect_err(&format!("{key} = {token:?} is refused"));
            assert_eq!(err.key, format!("server.{key}"), "{err}");
            assert!(err.reason.contains("16"), "{err}");
        }
        let text = config_toml(&format!("{key} = \"0123456789abcdef\""), "");
        contender::Config::from_toml(&text, &repo_root())
            .unwrap_or_else(|e| panic!("a 16-character {key} is accepted: {e}"));
    }
    // From the environment too, through the binary: exit 64 naming the key.
    let dir = tempfile::tempdir().expect("a working directory");
    let out = contender(dir.path())
        .args(["models", "list"])
        .env("CONTENDER_SERVER__ADMIN_TOKEN", "too-short")
        .output()
        .expect("the binary runs");
    assert_eq!(out.status.code(), Some(64), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("server.admin_token"),
        "{}",
        text(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// Tokens from the environment, `contender serve`, and the CLI's token.

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The binary, in `dir`, without inherited `CONTENDER_*` variables.
fn contender(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir);
    for (key, _) in std::env::vars_os() {
        if let Some(k) = key.to_str()
            && k.starts_with("CONTENDER_")
            && k != "CONTENDER_CACHE_DIR"
        {
            cmd.env_remove(k);
        }
    }
    cmd.env("NO_COLOR", "1").stdin(Stdio::null());
    cmd
}

/// Runs the binary off the async workers.
async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("the binary runs"))
        .await
        .expect("the CLI thread does not panic")
}

/// A `contender serve` child, killed when dropped.
struct Served {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

/// Starts `contender serve` and waits (bounded) for its logged address.
fn serve(mut cmd: Command) -> (Served, SocketAddr) {
    let mut child = cmd
        .arg("serve")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("contender serve starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(strip_ansi(&line));
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + START_TIMEOUT;
    let served = Served { child, lines: rx };
    let addr = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = served
            .lines
            .recv_timeout(left.max(Duration::from_millis(1)))
            .unwrap_or_else(|e| panic!("no listening line ({e}); stderr:\n{}", seen.join("\n")));
        if line.contains("listening")
            && let Some(addr) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .and_then(|a| a.parse::<SocketAddr>().ok())
        {
            break addr;
        }
        seen.push(line);
    };
    (served, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_the_environment_protect_serve_and_the_cli_sends_its_own() {
    let dir = tempfile::tempdir().expect("a working directory");
    let config = dir.path().join("contender.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhttp_addr = \"127.0.0.1:0\"\n\n[repository]\npath = {:?}\npreload = \"deployed\"\n\n[store]\ndata_dir = \"data\"\n\n[deployments.breast_cancer.champion]\nmodel = \"breast_cancer\"\nversion = 1\n",
            repo_root().join("models").display().to_string()
        ),
    )
    .expect("the config is written");
    let mut cmd = contender(dir.path());
    cmd.env("CONTENDER_SERVER__ADMIN_TOKEN", ADMIN)
        .env("CONTENDER_SERVER__INFERENCE_TOKEN", INFER);
    let (_served, addr) = serve(cmd);
    let ts = TestServer::attach(addr).await;
    let url = ts.base.clone();

    let r = send(&ts, Method::GET, "/admin/deployments", Auth::None, None).await;
    assert_refused("admin without a token", &r, "admin_token");
    admin_get(&ts, "/admin/deployments").await;
    let body = classifier_request(&breast_cancer_features()[..1]);
    let r = send(
        &ts,
        Method::POST,
        "/v2/models/breast_cancer/infer",
        Auth::None,
        Some(&body),
    )
    .await;
    assert_refused("inference without a token", &r, "inference_token");
    let (status, _, resp) = send(
        &ts,
        Method::POST,
        "/v2/models/breast_cancer/infer",
        Auth::Header(&bearer(INFER)),
        Some(&body),
    )
    .await;
    assert_eq!(status, 200, "{resp}");

    // The CLI without a token is refused; with CONTENDER_ADMIN_TOKEN it
    // works, with the URL from --url or from CONTENDER_URL.
    let empty = tempfile::tempdir().expect("a working directory");
    let mut cmd = contender(empty.path());
    cmd.args(["history", "breast_cancer", "--url", &url]);
    let out = run(cmd).await;
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));

    let mut cmd = contender(empty.path());
    cmd.args(["history", "breast_cancer", "--url", &url, "--json"])
        .env("CONTENDER_ADMIN_TOKEN", ADMIN);
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "history with the token: {}",
        text(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["deployment"], "breast_cancer");

    let mut cmd = contender(empty.path());
    cmd.args(["status", "breast_cancer"])
        .env("CONTENDER_URL", &url)
        .env("CONTENDER_ADMIN_TOKEN", ADMIN);
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "status with CONTENDER_URL: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("breast_cancer@1"),
        "{}",
        text(&out.stdout)
    );
}

/// Polls an admin deployment with the admin token (the harness's
/// `wait_deployment` sends none), bounded by `SETTLE_TIMEOUT`.
async fn wait_admin(
    ts: &TestServer,
    name: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + support::SETTLE_TIMEOUT;
    loop {
        let d = admin_get(ts, &format!("/admin/deployments/{name}")).await;
        if done(&d) {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {:?}; last:\n{d:#}",
            support::SETTLE_TIMEOUT
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A browser page from another origin cannot post labels or change a
/// deployment, even where no token is configured and the admin API trusts
/// local clients; the gateway's own origin and non-browser clients can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_origin_browser_requests_cannot_change_state() {
    let ts = TestServer::start_with("", SHADOW).await;
    ts.wait_all_loaded().await;
    let (status, answer) = ts
        .post_json(
            "/v2/models/breast_cancer/infer",
            &classifier_request(&breast_cancer_features()[..1]),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let label = json!({"id": answer["id"], "label": 1}).to_string();
    let own_origin = ts.url("").trim_end_matches('/').to_owned();
    let cross = |req: reqwest::RequestBuilder, how: &str| match how {
        "origin" => req.header("origin", "http://evil.example"),
        "port" => req.header(
            "origin",
            own_origin.replace(|c: char| c.is_ascii_digit(), "9"),
        ),
        "fetch" => req
            .header("sec-fetch-site", "cross-site")
            .header("origin", own_origin.as_str()),
        _ => unreachable!(),
    };

    for how in ["origin", "port", "fetch"] {
        // A "simple" request: no preflight would stop it in a browser.
        let r = cross(
            ts.client
                .post(ts.url("/v2/models/breast_cancer/feedback"))
                .header("content-type", "text/plain")
                .body(label.clone()),
            how,
        )
        .send()
        .await
        .expect("feedback");
        let status = r.status();
        let body: Value = r.json().await.expect("a JSON error");
        assert_error(status, &body, 403, &["cross-origin"]);

        let r = cross(
            ts.client
                .delete(ts.url("/admin/deployments/breast_cancer/challengers/breast_cancer/2")),
            how,
        )
        .send()
        .await
        .expect("remove");
        let status = r.status();
        let body: Value = r.json().await.expect("a JSON error");
        assert_error(status, &body, 403, &["cross-origin"]);
    }

    // DNS rebinding: a page of evil.example whose name now resolves to
    // 127.0.0.1 is "same-origin" to the browser; its Host gives it away.
    let port = ts.addr.port();
    let r = ts
        .client
        .delete(ts.url("/admin/deployments/breast_cancer/challengers/breast_cancer/2"))
        .header("host", format!("evil.example:{port}"))
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .expect("remove");
    let status = r.status();
    let body: Value = r.json().await.expect("a JSON error");
    assert_error(status, &body, 403, &["localhost", "evil.example"]);

    // Nothing changed: the challenger is there and the label is new.
    let (status, d) = ts.get_json("/admin/deployments/breast_cancer").await;
    assert_eq!(status, 200, "{d}");
    assert!(challenger_of(&d, "breast_cancer", 2).is_some(), "{d}");
    // The gateway's own origin (its pages) and plain clients are served.
    let r = ts
        .client
        .post(ts.url("/v2/models/breast_cancer/feedback"))
        .header("origin", own_origin.as_str())
        .header("content-type", "application/json")
        .body(label.clone())
        .send()
        .await
        .expect("feedback");
    let status = r.status();
    let body: Value = r.json().await.expect("JSON");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "accepted", "{body}");
    let (status, _, body) = send(
        &ts,
        Method::GET,
        "/admin/deployments/breast_cancer",
        Auth::None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    ts.stop().await;
}
