//! Integration-test harness: the real server, on `127.0.0.1:0`, serving the
//! real example models from `models/`.
//!
//! Each test crate includes this module with `mod support;` and uses only
//! part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use contender::Config;
use contender::server::Server;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long start-up (model loading and warm-up) may take before a test fails.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause between two polls of a readiness endpoint.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The ONNX model versions of `models/` the tests rely on (name, version).
pub const ONNX_MODELS: &[(&str, &str)] = &[
    ("breast_cancer", "1"),
    ("breast_cancer", "2"),
    ("breast_cancer", "3"),
    ("diabetes", "1"),
    ("dtypes", "1"),
];

/// The repository root (`CARGO_MANIFEST_DIR`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `<repo>/models`.
pub fn models_dir() -> PathBuf {
    repo_root().join("models")
}

/// Reads a JSON file under `models/`.
pub fn read_models_json(relative: &str) -> Value {
    let path = models_dir().join(relative);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The test configuration as TOML: ephemeral port, `models/`, deployments
/// `breast_cancer` → `breast_cancer@1` and `diabetes` → `diabetes@1`.
/// `server_extra` goes inside `[server]`; `extra` is appended (new tables).
pub fn config_toml(server_extra: &str, extra: &str) -> String {
    format!(
        r#"
[server]
http_addr = "127.0.0.1:0"
drain_timeout_secs = 10
{server_extra}

[repository]
path = {models:?}
preload = "all"

[deployments.breast_cancer.champion]
model = "breast_cancer"
version = 1

[deployments.diabetes.champion]
model = "diabetes"
version = 1

{extra}
"#,
        models = models_dir().display().to_string(),
    )
}

/// Parses [`config_toml`] with `Config::from_toml`, as the server would.
pub fn test_config(server_extra: &str, extra: &str) -> Config {
    let text = config_toml(server_extra, extra);
    Config::from_toml(&text, &repo_root())
        .unwrap_or_else(|e| panic!("test config does not parse: {e}\n{text}"))
}

/// A running server; shut down (and joined) by [`TestServer::stop`], or
/// signalled to stop when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<std::io::Result<()>>>,
    /// The store's directory, when the harness made it (removed on drop).
    pub data_dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// The default test configuration.
    pub async fn start() -> TestServer {
        TestServer::start_with("", "").await
    }

    /// The default test configuration plus TOML (see [`config_toml`]).
    pub async fn start_with(server_extra: &str, extra: &str) -> TestServer {
        TestServer::start_config(test_config(server_extra, extra)).await
    }

    /// Binds `config`, serves it on the current runtime and waits (bounded)
    /// until `/v2/health/ready` answers 200 and every model version in the
    /// repository index is `READY`.
    pub async fn start_config(mut config: Config) -> TestServer {
        let dir = tempfile::tempdir().expect("a temporary data directory");
        config.store.data_dir = dir.path().to_path_buf();
        let mut ts = TestServer::start_in(config).await;
        ts.data_dir = Some(dir);
        ts
    }

    /// Like [`TestServer::start_config`], keeping `config.store.data_dir`
    /// as given (to restart on the same durable state).
    pub async fn start_in(config: Config) -> TestServer {
        let server = Server::bind(config)
            .await
            .unwrap_or_else(|e| panic!("the server does not bind: {e}"));
        let addr = server.local_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("a reqwest client builds");
        let ts = TestServer {
            addr,
            base: format!("http://{addr}"),
            client,
            shutdown: Some(tx),
            handle: Some(handle),
            data_dir: None,
        };
        ts.wait_ready().await;
        ts.wait_all_loaded().await;
        ts
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(r) = self.client.get(self.url("/v2/health/ready")).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "/v2/health/ready did not answer 200 within {START_TIMEOUT:?}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Polls `POST /v2/repository/index` until no version is `LOADING`, and
    /// asserts that every ONNX example model version ([`ONNX_MODELS`]) ended
    /// `READY`. Other entries (a TorchScript model in a build without the
    /// `torchscript` feature) may be `UNAVAILABLE`.
    pub async fn wait_all_loaded(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let (status, index) = self.post_json("/v2/repository/index", &json!({})).await;
            assert_eq!(status, 200, "{index}");
            let items = index.as_array().expect("the index is an array");
            if items.iter().all(|m| m["state"] != "LOADING") {
                for (name, version) in ONNX_MODELS {
                    let entry = items
                        .iter()
                        .find(|m| m["name"] == *name && m["version"] == *version)
                        .unwrap_or_else(|| panic!("{name}@{version} is not indexed: {index}"));
                    assert_eq!(entry["state"], "READY", "a model did not load: {entry}");
                }
                return;
            }
            assert!(
                Instant::now() < deadline,
                "models still loading after {START_TIMEOUT:?}: {index}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// GET; returns the status and the body parsed as JSON (panics when not JSON).
    pub async fn get_json(&self, path: &str) -> (reqwest::StatusCode, Value) {
        let r = self
            .client
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        json_of(r).await
    }

    /// The Prometheus exposition at `/metrics`, as text.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// POST a JSON body; returns the status and the JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> (reqwest::StatusCode, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        json_of(r).await
    }

    /// POST raw bytes with `content-type: application/json`.
    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// Stops the server gracefully and checks `run` returned `Ok`.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            let result = tokio::time::timeout(Duration::from_secs(60), handle)
                .await
                .expect("the server stops within the drain timeout")
                .expect("the server task does not panic");
            result.expect("the server exits cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Status and JSON body of a response; panics (showing the text) when the
/// body is not JSON.
pub async fn json_of(r: reqwest::Response) -> (reqwest::StatusCode, Value) {
    let status = r.status();
    let text = r.text().await.expect("the body is readable");
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("body of a {status} response is not JSON ({e}): {text:?}"));
    (status, v)
}

/// Asserts a V2 error: the status, a JSON body `{"error": "..."}` and that the
/// message contains every one of `needles`. Returns the message.
pub fn assert_error(
    status: reqwest::StatusCode,
    body: &Value,
    want: u16,
    needles: &[&str],
) -> String {
    assert_eq!(status.as_u16(), want, "unexpected status; body: {body}");
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("error body is not an object: {body}"));
    let msg = obj
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("error body has no string 'error': {body}"));
    assert!(!msg.is_empty(), "empty error message");
    for n in needles {
        assert!(
            msg.contains(n),
            "error message {msg:?} should mention {n:?}"
        );
    }
    msg.to_owned()
}

/// The breast-cancer held-out features (143 rows of 30), as `f64`s (each one
/// an exact `f32`).
pub fn breast_cancer_features() -> Vec<Vec<f64>> {
    features(&read_models_json("_data/breast_cancer_holdout.json"))
}

/// The diabetes held-out features (rows of 10).
pub fn diabetes_features() -> Vec<Vec<f64>> {
    features(&read_models_json("_data/diabetes_holdout.json"))
}

fn features(doc: &Value) -> Vec<Vec<f64>> {
    doc["features"]
        .as_array()
        .expect("'features' is an array")
        .iter()
        .map(|row| {
            row.as_array()
                .expect("a feature row is an array")
                .iter()
                .map(|x| x.as_f64().expect("a feature is a number"))
                .collect()
        })
        .collect()
}

/// A V2 JSON inference request for breast_cancer-shaped rows (`input`, FP32).
pub fn classifier_request(rows: &[Vec<f64>]) -> Value {
    let width = rows.first().map_or(30, Vec::len);
    json!({
        "inputs": [{
            "name": "input",
            "shape": [rows.len(), width],
            "datatype": "FP32",
            "data": rows,
        }]
    })
}

/// The output tensor called `name` in a V2 response.
pub fn output<'a>(resp: &'a Value, name: &str) -> &'a Value {
    resp["outputs"]
        .as_array()
        .unwrap_or_else(|| panic!("response has no outputs array: {resp}"))
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("response has no output {name:?}: {resp}"))
}

/// An output's `data` as `f64`s.
pub fn f64_data(tensor: &Value) -> Vec<f64> {
    tensor["data"]
        .as_array()
        .unwrap_or_else(|| panic!("tensor has no data array: {tensor}"))
        .iter()
        .map(|x| x.as_f64().expect("numeric data"))
        .collect()
}

/// An output's `data` as `i64`s.
pub fn i64_data(tensor: &Value) -> Vec<i64> {
    tensor["data"]
        .as_array()
        .unwrap_or_else(|| panic!("tensor has no data array: {tensor}"))
        .iter()
        .map(|x| x.as_i64().expect("integer data"))
        .collect()
}

/// `expected.json` of a model version.
pub fn expected(model: &str, version: u32) -> Value {
    read_models_json(&format!("{model}/{version}/expected.json"))
}

/// Path of a model version directory.
pub fn model_dir(model: &str, version: u32) -> PathBuf {
    models_dir().join(model).join(version.to_string())
}

/// Whether `a` and `b` are within `tol` of each other.
pub fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

/// Asserts a file exists (with a clear message).
pub fn assert_file(path: &Path) {
    assert!(path.is_file(), "{} is missing", path.display());
}

// ---------------------------------------------------------------------------
// Challengers, feedback and evaluation (tests/challengers.rs, feedback.rs,
// durability.rs).

/// Bound on every poll of the admin API for mirrored or logged work.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

/// The breast-cancer held-out true classes (0 malignant, 1 benign).
pub fn breast_cancer_labels() -> Vec<i64> {
    read_models_json("_data/breast_cancer_holdout.json")["labels"]
        .as_array()
        .expect("'labels' is an array")
        .iter()
        .map(|l| l.as_i64().expect("integer class"))
        .collect()
}

/// The diabetes held-out true values.
pub fn diabetes_labels() -> Vec<f64> {
    read_models_json("_data/diabetes_holdout.json")["labels"]
        .as_array()
        .expect("'labels' is an array")
        .iter()
        .map(|l| l.as_f64().expect("numeric label"))
        .collect()
}

/// `expected.json` classes of a breast_cancer version, per held-out row.
pub fn expected_classes(version: u32) -> Vec<i64> {
    expected("breast_cancer", version)["label"]
        .as_array()
        .expect("label array")
        .iter()
        .map(|l| l.as_i64().expect("integer label"))
        .collect()
}

/// `expected.json` probabilities of a breast_cancer version, per held-out row.
pub fn expected_class_probabilities(version: u32) -> Vec<Vec<f64>> {
    expected("breast_cancer", version)["probabilities"]
        .as_array()
        .expect("probabilities array")
        .iter()
        .map(|p| {
            p.as_array()
                .expect("a probability row")
                .iter()
                .map(|x| x.as_f64().expect("probability"))
                .collect()
        })
        .collect()
}

/// `expected.json` predictions of diabetes@1, per held-out row.
pub fn expected_diabetes() -> Vec<f64> {
    expected("diabetes", 1)["prediction"]
        .as_array()
        .expect("prediction array")
        .iter()
        .map(|p| {
            p.as_f64()
                .or_else(|| p.get(0).and_then(Value::as_f64))
                .expect("numeric prediction")
        })
        .collect()
}

/// A model repository in a temporary directory: a symlink to every entry of
/// `models/`, plus `extra` (name, directory) entries (e.g. a test fixture).
pub fn repository_with(extra: &[(&str, &Path)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary repository");
    for entry in std::fs::read_dir(models_dir()).expect("models/ is readable") {
        let entry = entry.expect("a models/ entry");
        symlink(&entry.path(), &dir.path().join(entry.file_name()));
    }
    for (name, path) in extra {
        symlink(path, &dir.path().join(name));
    }
    dir
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap_or_else(|e| {
        panic!(
            "cannot link {} -> {}: {e}",
            link.display(),
            target.display()
        )
    });
}

/// `tests/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    repo_root().join("tests").join("fixtures")
}

/// The entry of `model@version` in an admin deployment's evaluation, if any.
pub fn eval_of<'a>(deployment: &'a Value, model: &str, version: u64) -> Option<&'a Value> {
    deployment["evaluation"]["models"]
        .as_array()?
        .iter()
        .find(|m| m["model"] == model && m["version"] == version)
}

/// Rows `model@version` has in the prediction log (0 when none yet).
pub fn logged(deployment: &Value, model: &str, version: u64) -> u64 {
    eval_of(deployment, model, version)
        .and_then(|m| m["predictions"].as_u64())
        .unwrap_or(0)
}

/// The admin entry of challenger `model@version` in a deployment, if any.
pub fn challenger_of<'a>(deployment: &'a Value, model: &str, version: u64) -> Option<&'a Value> {
    deployment["challengers"]
        .as_array()?
        .iter()
        .find(|c| c["model"] == model && c["version"] == version)
}

/// A counter of a challenger's `stats` (panics when the challenger is absent).
pub fn challenger_stat(deployment: &Value, model: &str, version: u64, stat: &str) -> u64 {
    challenger_of(deployment, model, version)
        .unwrap_or_else(|| panic!("no challenger {model}@{version} in {deployment}"))["stats"][stat]
        .as_u64()
        .unwrap_or_else(|| panic!("no stats.{stat} for {model}@{version} in {deployment}"))
}

/// One answered row of an inference: the request id and who answered.
#[derive(Clone, Debug)]
pub struct Answer {
    pub id: String,
    pub model_version: String,
    pub response: Value,
}

impl TestServer {
    /// A handle on a server running elsewhere (e.g. a `contender serve`
    /// child process) at `addr`, once `/v2/health/ready` answers 200 (bounded).
    /// [`TestServer::stop`] does nothing to it.
    pub async fn attach(addr: SocketAddr) -> TestServer {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("a reqwest client builds");
        let ts = TestServer {
            addr,
            base: format!("http://{addr}"),
            client,
            shutdown: None,
            handle: None,
            data_dir: None,
        };
        ts.wait_ready().await;
        ts
    }

    /// `GET /admin/deployments/{name}`, asserting 200.
    pub async fn deployment(&self, name: &str) -> Value {
        let (status, body) = self.get_json(&format!("/admin/deployments/{name}")).await;
        assert_eq!(status, 200, "GET /admin/deployments/{name}: {body}");
        body
    }

    /// Polls `GET /admin/deployments/{name}` until `done` holds; fails after
    /// [`SETTLE_TIMEOUT`], showing the last answer and `what`.
    pub async fn wait_deployment(
        &self,
        name: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let d = self.deployment(name).await;
            if done(&d) {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {SETTLE_TIMEOUT:?}; last state:\n{d:#}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Infers `body` on `name` (optionally with a routing key), asserting 200.
    pub async fn infer_ok(&self, name: &str, body: &Value, routing_key: Option<&str>) -> Answer {
        let mut req = self
            .client
            .post(self.url(&format!("/v2/models/{name}/infer")))
            .json(body);
        if let Some(k) = routing_key {
            req = req.header("x-routing-key", k);
        }
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /v2/models/{name}/infer: {e}"));
        let (status, response) = json_of(r).await;
        assert_eq!(status, 200, "infer on {name}: {response}");
        Answer {
            id: response["id"]
                .as_str()
                .unwrap_or_else(|| panic!("no id in {response}"))
                .to_owned(),
            model_version: response["model_version"]
                .as_str()
                .unwrap_or_else(|| panic!("no model_version in {response}"))
                .to_owned(),
            response,
        }
    }

    /// Sends each row as its own request, in order; one answer per row.
    pub async fn infer_rows(&self, name: &str, rows: &[Vec<f64>]) -> Vec<Answer> {
        let mut answers = Vec::with_capacity(rows.len());
        for row in rows {
            answers.push(
                self.infer_ok(name, &classifier_request(std::slice::from_ref(row)), None)
                    .await,
            );
        }
        answers
    }

    /// `POST /v2/models/{deployment}/feedback` with `body`.
    pub async fn feedback(&self, deployment: &str, body: &Value) -> (reqwest::StatusCode, Value) {
        self.post_json(&format!("/v2/models/{deployment}/feedback"), body)
            .await
    }
}
