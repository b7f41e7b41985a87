//! Challengers on a real server with the real example models: shadows see
//! every mirrored request, a canary answers its share (sticky per routing
//! key), a failing or overloaded challenger never touches the champion's
//! answers (its errors and drops are counted), challengers are added and
//! removed through the admin API, and `contender status` prints it all.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{
    TestServer, assert_error, breast_cancer_features, challenger_of, challenger_stat,
    classifier_request, expected_classes, fixtures_dir, i64_data, json_of, logged, output,
    repository_with, test_config,
};

/// A shadow challenger entry; generous timeout and queue so that on a slow
/// machine every mirrored request completes (these tests count them).
fn shadow(version: u64) -> String {
    format!(
        r#"
[[deployments.breast_cancer.challengers]]
model = "breast_cancer"
version = {version}
mode = "shadow"
queue_capacity = 1024
timeout_ms = 60000
"#
    )
}

/// The `label` output of a response.
fn labels_of(resp: &Value) -> Vec<i64> {
    i64_data(output(resp, "label"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_requests_reach_every_shadow() {
    let ts = TestServer::start_with("", &format!("{}{}", shadow(2), shadow(3))).await;
    let rows = breast_cancer_features();
    let want = expected_classes(1);
    let n = rows.len() as u64;

    let answers = ts.infer_rows("breast_cancer", &rows).await;
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a.response["model_name"], "breast_cancer", "{}", a.response);
        assert_eq!(a.model_version, "1", "row {i}: only the champion answers");
        assert_eq!(labels_of(&a.response), vec![want[i]], "row {i}");
    }

    let d = ts
        .wait_deployment(
            "breast_cancer",
            "every shadow completes every request",
            |d| {
                [2, 3].iter().all(|&v| {
                    challenger_of(d, "breast_cancer", v)
                        .is_some_and(|c| c["stats"]["completed"].as_u64() == Some(n))
                })
            },
        )
        .await;
    for v in [2, 3] {
        let c = challenger_of(&d, "breast_cancer", v).expect("listed");
        assert_eq!(c["mode"], "shadow", "{c}");
        assert_eq!(c["role"], "shadow", "{c}");
        assert_eq!(c["live"], true, "{c}");
        let s = &c["stats"];
        assert_eq!(s["mirrored"], n, "{c}");
        assert_eq!(s["served"], 0, "a shadow never answers: {c}");
        for zero in ["dropped", "errors", "timeouts"] {
            assert_eq!(s[zero], 0, "{zero}: {c}");
        }
    }
    assert_eq!(d["champion"]["stats"]["served"], n, "{}", d["champion"]);
    assert_eq!(d["champion"]["stats"]["mirrored"], 0, "{}", d["champion"]);

    // Every model's prediction of every request reaches the prediction log.
    ts.wait_deployment("breast_cancer", "every prediction is logged", |d| {
        [1, 2, 3]
            .iter()
            .all(|&v| logged(d, "breast_cancer", v) == n)
    })
    .await;
    ts.stop().await;
}

/// Five standard deviations of a binomial share: `5 * sqrt(p(1-p)/n)`.
fn five_sigma(p: f64, n: usize) -> f64 {
    5.0 * (p * (1.0 - p) / n as f64).sqrt()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_answers_its_share_sticky_per_routing_key() {
    const FRACTION: f64 = 0.25;
    let extra = format!(
        r#"
[deployments.breast_cancer.routing]
seed = 20261128

[[deployments.breast_cancer.challengers]]
model = "breast_cancer"
version = 2
mode = "canary"
fraction = {FRACTION}
queue_capacity = 1024
timeout_ms = 60000
"#
    );
    let ts = TestServer::start_with("", &extra).await;
    let rows = breast_cancer_features();
    let (want1, want2) = (expected_classes(1), expected_classes(2));

    // No routing key: assignment by the (random, unique) request id.
    let n = 860;
    let mut canary = 0usize;
    for i in 0..n {
        let row = i % rows.len();
        let a = ts
            .infer_ok(
                "breast_cancer",
                &classifier_request(std::slice::from_ref(&rows[row])),
                None,
            )
            .await;
        let want = match a.model_version.as_str() {
            "1" => want1[row],
            "2" => {
                canary += 1;
                want2[row]
            }
            other => panic!("request {i} answered by version {other:?}"),
        };
        assert_eq!(labels_of(&a.response), vec![want], "request {i}, row {row}");
    }
    let share = canary as f64 / n as f64;
    let band = five_sigma(FRACTION, n);
    assert!(
        (share - FRACTION).abs() <= band,
        "canary share {share:.4} ({canary}/{n}) is outside {FRACTION} ± {band:.4} (5 sigma)"
    );

    // The champion sees the canary's requests mirrored; the canary sees the
    // champion's.
    let d = ts
        .wait_deployment("breast_cancer", "mirrored copies complete", |d| {
            let c = challenger_of(d, "breast_cancer", 2).expect("listed");
            c["stats"]["completed"].as_u64() == Some((n - canary) as u64)
        })
        .await;
    let champion = &d["champion"]["stats"];
    assert_eq!(champion["served"], (n - canary) as u64, "{champion}");
    assert!(champion["mirrored"].as_u64() > Some(0), "{champion}");
    assert_eq!(
        champion["mirrored"].as_u64().unwrap() + champion["dropped"].as_u64().unwrap(),
        canary as u64,
        "{champion}"
    );
    let c = challenger_of(&d, "breast_cancer", 2).expect("listed");
    assert_eq!(c["mode"], "canary", "{c}");
    assert_eq!(c["fraction"], FRACTION, "{c}");
    assert_eq!(c["stats"]["served"], canary as u64, "{c}");
    assert_eq!(c["stats"]["mirrored"], (n - canary) as u64, "{c}");

    // With a routing key the assignment is sticky, by header or parameter.
    let mut seen = std::collections::BTreeSet::new();
    for user in 0..40 {
        let key = format!("user-{user}");
        let mut versions = Vec::new();
        for k in 0..4 {
            let row = &rows[(user * 4 + k) % rows.len()];
            let a = ts
                .infer_ok(
                    "breast_cancer",
                    &classifier_request(std::slice::from_ref(row)),
                    Some(&key),
                )
                .await;
            versions.push(a.model_version);
        }
        let mut body = classifier_request(std::slice::from_ref(&rows[user]));
        body["parameters"] = json!({ "routing_key": key });
        versions.push(
            ts.infer_ok("breast_cancer", &body, None)
                .await
                .model_version,
        );
        assert!(
            versions.iter().all(|v| *v == versions[0]),
            "routing key {key} was answered by {versions:?}"
        );
        seen.insert(versions[0].clone());
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["1", "2"],
        "40 routing keys all went one way"
    );
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_challenger_leaves_every_champion_answer_correct() {
    let fixture = fixtures_dir().join("models").join("faulty");
    let repo = repository_with(&[("faulty", &fixture)]);
    let mut config = test_config(
        "",
        r#"
[[deployments.breast_cancer.challengers]]
model = "faulty"
version = 1
mode = "shadow"
queue_capacity = 1024
timeout_ms = 60000
"#,
    );
    config.repository.path = repo.path().to_path_buf();
    let ts = TestServer::start_config(config).await;
    let rows = breast_cancer_features();
    let want = expected_classes(1);

    let answers = ts.infer_rows("breast_cancer", &rows).await;
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a.model_version, "1");
        assert_eq!(labels_of(&a.response), vec![want[i]], "row {i}");
    }
    // And a whole batch in one request.
    let a = ts
        .infer_ok("breast_cancer", &classifier_request(&rows), None)
        .await;
    assert_eq!(labels_of(&a.response), want);
    let requests = rows.len() as u64 + 1;

    let d = ts
        .wait_deployment("breast_cancer", "every mirrored request fails", |d| {
            challenger_stat(d, "faulty", 1, "errors") == requests
        })
        .await;
    let c = challenger_of(&d, "faulty", 1).expect("listed");
    assert_eq!(c["live"], true, "{c}");
    assert_eq!(c["stats"]["mirrored"], requests, "{c}");
    assert_eq!(c["stats"]["completed"], 0, "{c}");
    assert_eq!(d["champion"]["stats"]["served"], requests, "{d}");

    // The champion's predictions are logged; the failures are not.
    let total = 2 * rows.len() as u64;
    let d = ts
        .wait_deployment("breast_cancer", "champion predictions logged", |d| {
            logged(d, "breast_cancer", 1) == total
        })
        .await;
    assert_eq!(logged(&d, "faulty", 1), 0, "{}", d["evaluation"]);
    ts.stop().await;
}

/// A binary inference request: a JSON header, then the rows as raw FP32.
fn binary_request(rows: &[&Vec<f64>]) -> (Vec<u8>, usize) {
    let payload: Vec<u8> = rows
        .iter()
        .copied()
        .flatten()
        .flat_map(|&x| (x as f32).to_le_bytes())
        .collect();
    let header = json!({
        "inputs": [{
            "name": "input", "shape": [rows.len(), 30], "datatype": "FP32",
            "parameters": {"binary_data_size": payload.len()},
        }],
        "outputs": [{"name": "label", "parameters": {"binary_data": true}}],
    });
    let mut body = serde_json::to_vec(&header).expect("header serialises");
    let json_len = body.len();
    body.extend_from_slice(&payload);
    (body, json_len)
}

/// The `label` output of a binary response.
async fn binary_labels(r: reqwest::Response) -> Vec<i64> {
    assert_eq!(r.status(), 200);
    let json_len: usize = r
        .headers()
        .get("inference-header-content-length")
        .expect("a binary response")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("a length");
    let body = r.bytes().await.expect("body");
    let header: Value = serde_json::from_slice(&body[..json_len]).expect("JSON header");
    assert_eq!(header["model_version"], "1", "{header}");
    body[json_len..]
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_challenger_drops_mirrored_requests_not_answers() {
    // One worker, one queue slot, and big requests: the gradient-boosted
    // v2 falls behind whenever requests arrive together.
    let ts = TestServer::start_with(
        "",
        r#"
[[deployments.breast_cancer.challengers]]
model = "breast_cancer"
version = 2
mode = "shadow"
workers = 1
queue_capacity = 1
timeout_ms = 60000
"#,
    )
    .await;
    let features = breast_cancer_features();
    let classes = expected_classes(1);
    const COPIES: usize = 7; // 1001 rows, under max_batch_size (1024)
    let rows: Vec<&Vec<f64>> = std::iter::repeat_n(&features, COPIES).flatten().collect();
    let want: Vec<i64> = std::iter::repeat_n(&classes, COPIES)
        .flatten()
        .copied()
        .collect();
    let (body, json_len) = binary_request(&rows);

    const CONCURRENT: usize = 16;
    const MAX_ROUNDS: usize = 20;
    let mut sent = 0u64;
    let mut dropped = 0;
    for _ in 0..MAX_ROUNDS {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..CONCURRENT {
            let req = ts
                .client
                .post(ts.url("/v2/models/breast_cancer/infer"))
                .header("content-type", "application/octet-stream")
                .header("inference-header-content-length", json_len.to_string())
                .body(body.clone());
            tasks.spawn(async move { binary_labels(req.send().await.expect("sent")).await });
        }
        while let Some(labels) = tasks.join_next().await {
            let labels = labels.expect("request task");
            assert!(labels == want, "a champion answer is wrong");
            sent += 1;
        }
        dropped = challenger_stat(
            &ts.deployment("breast_cancer").await,
            "breast_cancer",
            2,
            "dropped",
        );
        if dropped > 0 {
            break;
        }
    }
    assert!(
        dropped > 0,
        "{sent} big requests, {CONCURRENT} at a time, never filled a one-slot queue"
    );

    // Every request was either mirrored or dropped; all of them answered.
    let d = ts
        .wait_deployment("breast_cancer", "mirrored requests settle", |d| {
            let s = &challenger_of(d, "breast_cancer", 2).expect("listed")["stats"];
            let n = |k: &str| s[k].as_u64().unwrap_or(0);
            n("completed") + n("errors") + n("timeouts") == n("mirrored")
        })
        .await;
    let s = &challenger_of(&d, "breast_cancer", 2).expect("listed")["stats"];
    assert_eq!(
        s["mirrored"].as_u64().unwrap() + s["dropped"].as_u64().unwrap(),
        sent,
        "{s}"
    );
    assert_eq!(s["errors"], 0, "{s}");
    assert_eq!(d["champion"]["stats"]["served"], sent, "{}", d["champion"]);
    // Prometheus counts the same drops.
    let metrics = ts.metrics_text().await;
    let exported: u64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("contender_mirror_dropped_total{")
                && l.contains(r#"model="breast_cancer""#)
                && l.contains(r#"version="2""#)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no mirror drop counter for v2 in:\n{metrics}"));
    assert_eq!(exported, s["dropped"].as_u64().unwrap(), "{s}");
    // And the copies the shadow ran (at least this test's: the registry is
    // the whole test process's).
    let completed: u64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("contender_mirror_completed_total{")
                && l.contains(r#"deployment="breast_cancer""#)
                && l.contains(r#"version="2""#)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no mirror completion counter for v2 in:\n{metrics}"));
    assert!(
        completed >= s["completed"].as_u64().unwrap(),
        "{completed}: {s}"
    );
    assert!(completed > 0, "{s}");
    ts.stop().await;
}

/// POST a challenger; returns the status and body.
async fn post_challenger(ts: &TestServer, deployment: &str, body: &str) -> (u16, Value) {
    let r = ts
        .post_raw(
            &format!("/admin/deployments/{deployment}/challengers"),
            body.to_owned(),
        )
        .await;
    let (status, v) = json_of(r).await;
    (status.as_u16(), v)
}

async fn delete(ts: &TestServer, path: &str) -> (reqwest::StatusCode, Value) {
    let r = ts
        .client
        .delete(ts.url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("DELETE {path}: {e}"));
    json_of(r).await
}

fn challenger_refs(d: &Value) -> Vec<(String, u64, String)> {
    d["challengers"]
        .as_array()
        .expect("challengers array")
        .iter()
        .map(|c| {
            (
                c["model"].as_str().expect("model").to_owned(),
                c["version"].as_u64().expect("version"),
                c["mode"].as_str().expect("mode").to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challengers_are_added_and_removed_through_the_admin_api() {
    let ts = TestServer::start().await;
    let rows = breast_cancer_features();
    assert!(challenger_refs(&ts.deployment("breast_cancer").await).is_empty());

    // Added at run time: 201, live, and it receives mirrored traffic.
    let (status, d) = post_challenger(
        &ts,
        "breast_cancer",
        r#"{"model": "breast_cancer", "version": 3, "mode": "shadow", "timeout_ms": 60000, "queue_capacity": 1024}"#,
    )
    .await;
    assert_eq!(status, 201, "{d}");
    assert_eq!(
        challenger_refs(&d),
        [("breast_cancer".to_owned(), 3, "shadow".to_owned())]
    );
    assert_eq!(challenger_of(&d, "breast_cancer", 3).unwrap()["live"], true);
    let first = 20;
    ts.infer_rows("breast_cancer", &rows[..first]).await;
    ts.wait_deployment("breast_cancer", "the new shadow sees traffic", |d| {
        challenger_stat(d, "breast_cancer", 3, "completed") == first as u64
            && logged(d, "breast_cancer", 3) == first as u64
    })
    .await;
    let before = challenger_refs(&ts.deployment("breast_cancer").await);

    // Refused changes change nothing.
    let refused: &[(&str, &str, u16, &[&str])] = &[
        // Incompatible inputs.
        (
            "breast_cancer",
            r#"{"model": "dtypes", "version": 1, "mode": "shadow"}"#,
            400,
            &["dtypes"],
        ),
        // Not in the repository.
        (
            "breast_cancer",
            r#"{"model": "no_such_model", "version": 1, "mode": "shadow"}"#,
            404,
            &["no_such_model"],
        ),
        (
            "breast_cancer",
            r#"{"model": "breast_cancer", "version": 9, "mode": "shadow"}"#,
            404,
            &["9"],
        ),
        // Already a challenger; the champion itself.
        (
            "breast_cancer",
            r#"{"model": "breast_cancer", "version": 3, "mode": "canary", "fraction": 0.1}"#,
            400,
            &["breast_cancer@3"],
        ),
        (
            "breast_cancer",
            r#"{"model": "breast_cancer", "version": 1, "mode": "shadow"}"#,
            400,
            &["champion"],
        ),
        // Malformed bodies.
        ("breast_cancer", "this is not JSON", 400, &["malformed"]),
        (
            "breast_cancer",
            r#"{"model": "breast_cancer", "version": 2}"#,
            400,
            &["mode"],
        ),
        (
            "breast_cancer",
            r#"{"model": "breast_cancer", "version": 2, "mode": "sideways"}"#,
            400,
            &["sideways"],
        ),
        (
            "breast_cancer",
            r#"{"model": "breast_cancer", "version": 2, "mode": "shadow", "colour": "red"}"#,
            400,
            &["colour"],
        ),
        (
            "breast_cancer",
            r#"{"model": "breast_cancer", "version": 2, "mode": "canary", "fraction": 1.5}"#,
            400,
            &["fraction"],
        ),
        (
            "breast_cancer",
            r#"{"model": "breast_cancer", "version": 2, "mode": "shadow", "workers": 0}"#,
            400,
            &["workers"],
        ),
        // No such deployment.
        (
            "nowhere",
            r#"{"model": "breast_cancer", "version": 2, "mode": "shadow"}"#,
            404,
            &["nowhere"],
        ),
    ];
    for (deployment, body, want, needles) in refused {
        let (status, v) = post_challenger(&ts, deployment, body).await;
        assert_error(
            reqwest::StatusCode::from_u16(status).unwrap(),
            &v,
            *want,
            needles,
        );
        assert_eq!(
            challenger_refs(&ts.deployment("breast_cancer").await),
            before,
            "after refusing {body}"
        );
    }

    // Removed: 200, gone from the deployment, and it sees no more traffic.
    let (status, d) = delete(
        &ts,
        "/admin/deployments/breast_cancer/challengers/breast_cancer/3",
    )
    .await;
    assert_eq!(status, 200, "{d}");
    assert!(challenger_refs(&d).is_empty(), "{d}");
    let (status, v) = delete(
        &ts,
        "/admin/deployments/breast_cancer/challengers/breast_cancer/3",
    )
    .await;
    assert_error(status, &v, 404, &["breast_cancer@3"]);
    let (status, v) = delete(
        &ts,
        "/admin/deployments/breast_cancer/challengers/breast_cancer/x",
    )
    .await;
    assert_error(status, &v, 400, &["version"]);
    let (status, v) = delete(
        &ts,
        "/admin/deployments/nowhere/challengers/breast_cancer/3",
    )
    .await;
    assert_error(status, &v, 404, &["nowhere"]);

    ts.infer_rows("breast_cancer", &rows[first..2 * first])
        .await;
    let d = ts
        .wait_deployment(
            "breast_cancer",
            "the champion's later predictions are logged",
            |d| logged(d, "breast_cancer", 1) == 2 * first as u64,
        )
        .await;
    assert_eq!(
        logged(&d, "breast_cancer", 3),
        first as u64,
        "a removed challenger still saw requests: {}",
        d["evaluation"]
    );
    ts.stop().await;
}

/// Runs the binary's `status` against a running server (from a directory
/// without a `contender.toml`, with no `CONTENDER_*` settings).
fn status_command(args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_contender"));
    cmd.current_dir(dir.path()).env("NO_COLOR", "1");
    for (key, _) in std::env::vars_os() {
        if let Some(k) = key.to_str()
            && k.starts_with("CONTENDER_")
            && k != "CONTENDER_CACHE_DIR"
        {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .arg("status")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("contender status starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("contender status did not exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_every_deployment_and_model() {
    let extra = format!(
        "{}{}",
        shadow(2),
        r#"
[[deployments.breast_cancer.challengers]]
model = "breast_cancer"
version = 3
mode = "canary"
fraction = 0.2
timeout_ms = 60000
"#
    );
    let ts = TestServer::start_with("", &extra).await;
    let rows = breast_cancer_features();
    ts.infer_rows("breast_cancer", &rows[..10]).await;
    let url = ts.base.clone();

    let o = tokio::task::spawn_blocking({
        let url = url.clone();
        move || status_command(&["--url", &url])
    })
    .await
    .expect("status task");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("deployment breast_cancer"), "{stdout}");
    assert!(stdout.contains("deployment diabetes"), "{stdout}");
    let header = stdout
        .lines()
        .find(|l| l.starts_with("MODEL"))
        .unwrap_or_else(|| panic!("no table header in\n{stdout}"));
    for col in ["ROLE", "SHARE", "SERVED", "MIRRORED", "DROPPED", "LABELLED"] {
        assert!(header.contains(col), "{header}");
    }
    let row = |model: &str| -> Vec<String> {
        stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(model))
            .unwrap_or_else(|| panic!("no row for {model} in\n{stdout}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(row("breast_cancer@1")[1], "champion");
    assert_eq!(row("breast_cancer@2")[1..3], ["shadow", "100%"]);
    assert_eq!(row("breast_cancer@3")[1..3], ["canary", "20%"]);
    assert_eq!(row("diabetes@1")[1], "champion");

    // One deployment, as JSON.
    let o = tokio::task::spawn_blocking({
        let url = url.clone();
        move || status_command(&["breast_cancer", "--url", &url, "--json"])
    })
    .await
    .expect("status task");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let doc: Value = serde_json::from_slice(&o.stdout).expect("status --json prints JSON");
    assert_eq!(doc["name"], "breast_cancer");
    assert_eq!(doc["champion"]["version"], 1);
    assert_eq!(
        challenger_refs(&doc),
        [
            ("breast_cancer".to_owned(), 2, "shadow".to_owned()),
            ("breast_cancer".to_owned(), 3, "canary".to_owned())
        ]
    );
    assert!(doc["evaluation"].is_object(), "{doc}");

    // An unknown deployment fails, saying why.
    let o = tokio::task::spawn_blocking(move || status_command(&["nowhere", "--url", &url]))
        .await
        .expect("status task");
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("404") && stderr.contains("nowhere"),
        "{stderr}"
    );
    ts.stop().await;
}

/// Scheduling policy of every thread of this process (Linux: field 41 of
/// `/proc/self/task/<tid>/stat`; 5 is `SCHED_IDLE`).
#[cfg(target_os = "linux")]
fn thread_policies() -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let dir = task.expect("a task entry").path();
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue; // the thread ended meanwhile
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_owned();
        // Fields after the name start at field 3.
        if let Some(policy) = stat[close + 1..]
            .split_whitespace()
            .nth(41 - 3)
            .and_then(|p| p.parse().ok())
        {
            out.push((name, policy));
        }
    }
    out
}

/// A shadow challenger's workers run at the idle scheduling priority
/// (`low_priority`, the default), so they only use CPU the champion leaves.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_workers_run_at_idle_priority() {
    const SCHED_IDLE: u32 = 5;
    let ts = TestServer::start_with("", &shadow(2)).await;
    // A mirrored request has been answered, so the workers are running.
    let rows = breast_cancer_features();
    ts.infer_rows("breast_cancer", &rows[..4]).await;
    ts.wait_deployment("breast_cancer", "the shadow answers", |d| {
        challenger_of(d, "breast_cancer", 2).is_some_and(|c| c["stats"]["completed"] == 4)
    })
    .await;
    let policies = thread_policies();
    assert!(
        policies
            .iter()
            .any(|(name, p)| name.starts_with("infer-") && *p == SCHED_IDLE),
        "no inference worker at SCHED_IDLE: {policies:?}"
    );
    // The thread that records the shadows' answers (it feeds the prediction
    // log, whose writer must never wait for an idle thread) is normal.
    let recorders: Vec<_> = policies
        .iter()
        .filter(|(name, _)| name == "mirror-recorder")
        .collect();
    assert!(
        !recorders.is_empty() && recorders.iter().all(|(_, p)| *p == 0),
        "{policies:?}"
    );
    // The request path (tokio workers) stays at normal priority.
    assert!(
        policies
            .iter()
            .filter(|(name, _)| name.starts_with("tokio-runtime-w"))
            .all(|(_, p)| *p == 0),
        "{policies:?}"
    );
}

/// A challenger whose version failed to load is shown as down, with the
/// load error, in the admin JSON and in `contender status`; the prediction
/// log's counters are the gateway's, shown once and said to be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenger_that_failed_to_load_is_shown_down_with_its_reason() {
    let broken = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(broken.path().join("1")).expect("version directory");
    std::fs::write(
        broken.path().join("1").join("model.onnx"),
        b"not an ONNX model",
    )
    .expect("model.onnx");
    let repo = repository_with(&[("broken", broken.path())]);
    let mut config = test_config(
        "",
        r#"
[[deployments.breast_cancer.challengers]]
model = "broken"
version = 1
mode = "shadow"
"#,
    );
    config.repository.path = repo.path().to_path_buf();
    let ts = TestServer::start_config(config).await;
    let rows = breast_cancer_features();
    ts.infer_rows("breast_cancer", &rows[..5]).await;
    ts.infer_rows("diabetes", &support::diabetes_features()[..5])
        .await;

    let d = ts.deployment("breast_cancer").await;
    let c = challenger_of(&d, "broken", 1).expect("listed");
    assert_eq!(c["live"], false, "{c}");
    let reason = c["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("no reason: {c}"));
    assert!(
        reason.contains("broken@1 is unavailable") && reason.contains("could not be loaded"),
        "{reason}"
    );
    assert_eq!(c["stats"]["mirrored"], 0, "{c}");
    // The prediction log is the gateway's: not inside a deployment.
    assert!(d.get("prediction_log").is_none(), "{d}");
    // Both deployments' rows are in the one log (5 + 5).
    let d = ts
        .wait_deployment("breast_cancer", "both deployments' rows logged", |d| {
            d["gateway"]["prediction_log"]["rows"] == 10
        })
        .await;
    assert_eq!(d["gateway"]["prediction_log"]["dropped"], 0, "{d}");
    let (status, all) = ts.get_json("/admin/deployments").await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["gateway"]["prediction_log"]["rows"], 10, "{all}");
    for d in all["deployments"].as_array().expect("deployments") {
        assert!(d.get("prediction_log").is_none(), "{d}");
    }

    let url = ts.base.clone();
    let o = tokio::task::spawn_blocking(move || status_command(&["--url", &url]))
        .await
        .expect("status task");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{stdout}");
    let row: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with("broken@1"))
        .unwrap_or_else(|| panic!("no row for broken@1 in\n{stdout}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[1], "shadow:DOWN", "{stdout}");
    let down = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("DOWN broken@1:"))
        .unwrap_or_else(|| panic!("no DOWN line in\n{stdout}"));
    assert!(down.contains("could not be loaded"), "{down}");
    assert!(
        !stdout
            .lines()
            .any(|l| l.trim_start().starts_with("DOWN breast_cancer")),
        "{stdout}"
    );
    let log_lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("prediction log"))
        .collect();
    assert_eq!(log_lines.len(), 1, "{stdout}");
    assert!(
        log_lines[0].starts_with("gateway prediction log (all deployments together): 10 rows"),
        "{stdout}"
    );
    ts.stop().await;
}

/// The version answering each routing key `user-0` … `user-{n-1}`.
async fn versions_by_key(ts: &TestServer, n: usize) -> Vec<String> {
    let rows = breast_cancer_features();
    let mut out = Vec::with_capacity(n);
    for k in 0..n {
        let body = classifier_request(std::slice::from_ref(&rows[k % rows.len()]));
        let a = ts
            .infer_ok("breast_cancer", &body, Some(&format!("user-{k}")))
            .await;
        out.push(a.model_version);
    }
    out
}

/// Removing one canary moves none of another canary's users, and the
/// other's slice (so its users) survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_canary_keeps_the_other_canarys_users() {
    const KEYS: usize = 200;
    let extra = r#"
[deployments.breast_cancer.routing]
seed = 77

[[deployments.breast_cancer.challengers]]
model = "breast_cancer"
version = 3
mode = "canary"
fraction = 0.3
timeout_ms = 60000

[[deployments.breast_cancer.challengers]]
model = "breast_cancer"
version = 2
mode = "canary"
fraction = 0.2
timeout_ms = 60000
"#;
    let config = test_config("", extra);
    let mut ts = TestServer::start_config(config.clone()).await;
    let d = ts.deployment("breast_cancer").await;
    // Laid end to end in list order, as routing always did.
    assert_eq!(
        challenger_of(&d, "breast_cancer", 3).expect("v3")["slice"],
        json!([[0.0, 0.3]])
    );
    let before = versions_by_key(&ts, KEYS).await;
    let users = |v: &[String], version: &str| -> Vec<usize> {
        (0..v.len()).filter(|&k| v[k] == version).collect()
    };
    let v2_users = users(&before, "2");
    assert!(!users(&before, "3").is_empty(), "{before:?}");
    let band = five_sigma(0.2, KEYS);
    let share = v2_users.len() as f64 / KEYS as f64;
    assert!((share - 0.2).abs() <= band, "v2 share {share}");

    let (status, body) = delete(
        &ts,
        "/admin/deployments/breast_cancer/challengers/breast_cancer/3",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let after = versions_by_key(&ts, KEYS).await;
    assert_eq!(
        users(&after, "2"),
        v2_users,
        "v2's users are exactly those it had"
    );
    for k in 0..KEYS {
        if before[k] == "3" {
            assert_eq!(after[k], "1", "user-{k}: v3's users go to the champion");
        }
    }
    assert!(users(&after, "3").is_empty());

    // The slice is stored with the challenger: the same users after a restart.
    let d = ts.deployment("breast_cancer").await;
    let slice = challenger_of(&d, "breast_cancer", 2).expect("v2")["slice"].clone();
    assert_eq!(slice, json!([[0.3, 0.3 + 0.2]]), "{d:#}");
    let dir = ts
        .data_dir
        .take()
        .expect("the harness made the data directory");
    ts.stop().await;
    let mut again = config;
    again.store.data_dir = dir.path().to_path_buf();
    let ts = TestServer::start_in(again).await;
    let d = ts.deployment("breast_cancer").await;
    assert_eq!(
        challenger_of(&d, "breast_cancer", 2).expect("v2")["slice"],
        slice
    );
    assert_eq!(versions_by_key(&ts, KEYS).await, after);
    ts.stop().await;
    drop(dir);
}
