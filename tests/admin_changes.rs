//! Admin changes at run time, on a real server with the real example
//! models: settings out of bounds are refused (admin API and configuration)
//! and change nothing; a version dropped into the repository while the
//! server runs can be added as a challenger without a restart; a mirrored
//! copy a challenger could not take (over its own `max_batch_size`) is not
//! run but counted; the audit trail records the challenger's settings and
//! who added or removed it and why; a challenger removed and added again
//! counts its traffic afresh.

mod support;

use std::path::Path;

use serde_json::{Value, json};
use support::{
    TestServer, assert_error, breast_cancer_features, challenger_of, challenger_stat,
    classifier_request, expected_classes, i64_data, json_of, logged, models_dir, output,
    test_config,
};

/// POST a challenger; returns the status and body.
async fn post_challenger(ts: &TestServer, body: &Value) -> (reqwest::StatusCode, Value) {
    ts.post_json("/admin/deployments/breast_cancer/challengers", body)
        .await
}

async fn history(ts: &TestServer) -> Vec<Value> {
    let (status, h) = ts
        .get_json("/admin/deployments/breast_cancer/history")
        .await;
    assert_eq!(status, 200, "{h}");
    h["history"].as_array().expect("history array").clone()
}

fn challenger_count(d: &Value) -> usize {
    d["challengers"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_challenger_settings_are_refused_and_change_nothing() {
    let ts = TestServer::start().await;
    let refused = [
        (json!({"workers": 100_000}), "workers", "at most 64"),
        (
            json!({"queue_capacity": 1_000_000_000_000u64}),
            "queue_capacity",
            "at most 65536",
        ),
        (
            json!({"timeout_ms": 86_400_000}),
            "timeout_ms",
            "at most 600000",
        ),
        (json!({"workers": 0}), "workers", "at least 1"),
    ];
    for (settings, key, limit) in refused {
        let mut body = json!({"model": "breast_cancer", "version": 3, "mode": "shadow"});
        body.as_object_mut()
            .unwrap()
            .extend(settings.as_object().unwrap().clone());
        let (status, v) = post_challenger(&ts, &body).await;
        assert_error(status, &v, 400, &[key, limit]);
        let d = ts.deployment("breast_cancer").await;
        assert_eq!(challenger_count(&d), 0, "after refusing {body}: {d}");
        assert!(history(&ts).await.is_empty(), "a refused add was recorded");
    }

    // The bounds themselves are accepted, and the audit trail records the
    // challenger's settings when it is added and when it is removed.
    let (status, d) = post_challenger(
        &ts,
        &json!({"model": "breast_cancer", "version": 3, "mode": "canary", "fraction": 0.25,
                "workers": 64, "queue_capacity": 65536, "timeout_ms": 600000}),
    )
    .await;
    assert_eq!(status, 201, "{d}");
    let c = challenger_of(&d, "breast_cancer", 3).expect("added");
    assert_eq!(c["live"], true, "{c}");
    assert_eq!(c["workers"], 64, "{c}");
    let r = ts
        .client
        .delete(ts.url("/admin/deployments/breast_cancer/challengers/breast_cancer/3"))
        .send()
        .await
        .expect("DELETE");
    let (status, d) = json_of(r).await;
    assert_eq!(status, 200, "{d}");
    let h = history(&ts).await;
    let actions: Vec<&str> = h.iter().filter_map(|r| r["action"].as_str()).collect();
    assert_eq!(
        actions,
        ["challenger_added", "challenger_removed"],
        "{h:#?}"
    );
    let want = json!({
        "model": "breast_cancer", "version": 3, "mode": "canary", "fraction": 0.25,
        "workers": 64, "queue_capacity": 65536, "timeout_ms": 600000, "low_priority": true,
        // The part of the routing range it answered: the lowest free 25 %.
        "slice": [[0.0, 0.25]],
    });
    assert_eq!(h[0]["challenger"], want, "{:#}", h[0]);
    assert_eq!(
        h[0]["to"],
        json!({"model": "breast_cancer", "version": 3}),
        "{:#}",
        h[0]
    );
    assert_eq!(h[1]["challenger"], want, "{:#}", h[1]);
    assert_eq!(
        h[1]["from"],
        json!({"model": "breast_cancer", "version": 3}),
        "{:#}",
        h[1]
    );
    assert_eq!(h[1]["to"], Value::Null, "{:#}", h[1]);
    ts.stop().await;
}

#[test]
fn oversized_settings_in_the_configuration_name_the_key() {
    let cases = [
        (
            r#"
[[deployments.breast_cancer.challengers]]
model = "breast_cancer"
version = 2
mode = "shadow"
workers = 100000
"#,
            "deployments.breast_cancer.challengers[0].workers",
            "at most 64",
        ),
        (
            r#"
[[deployments.breast_cancer.challengers]]
model = "breast_cancer"
version = 2
mode = "shadow"
queue_capacity = 1000000000000
"#,
            "deployments.breast_cancer.challengers[0].queue_capacity",
            "at most 65536",
        ),
        (
            r#"
[runtime]
queue_capacity = 1000000000000
"#,
            "runtime.queue_capacity",
            "at most 65536",
        ),
        (
            r#"
[models.breast_cancer]
instances = 100000
"#,
            "models.breast_cancer.instances",
            "at most 64",
        ),
        (
            r#"
[models.breast_cancer]
max_batch_size = 1000000000
"#,
            "models.breast_cancer.max_batch_size",
            "at most 1048576",
        ),
    ];
    for (extra, key, reason) in cases {
        let text = support::config_toml("", extra);
        let e =
            contender::Config::from_toml(&text, &support::repo_root()).expect_err("out of bounds");
        assert_eq!(e.key, key, "{e}");
        assert!(e.reason.contains(reason), "{e}");
    }
}

/// A repository of every example model where `breast_cancer` is a real
/// directory (its versions linked), so that a test can add versions to it.
fn writable_repository() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary repository");
    for entry in std::fs::read_dir(models_dir()).expect("models/ is readable") {
        let entry = entry.expect("a models/ entry");
        let link = dir.path().join(entry.file_name());
        if entry.file_name() == "breast_cancer" {
            std::fs::create_dir(&link).expect("breast_cancer/");
            for v in std::fs::read_dir(entry.path()).expect("versions") {
                let v = v.expect("a version");
                std::os::unix::fs::symlink(v.path(), link.join(v.file_name())).expect("link");
            }
        } else {
            std::os::unix::fs::symlink(entry.path(), link).expect("link");
        }
    }
    dir
}

/// Copies `models/breast_cancer/2` to `<repo>/breast_cancer/<version>`,
/// appending `toml_extra` to its model.toml (as training a version and
/// dropping it in would).
fn drop_in_version(repo: &Path, version: u64, toml_extra: &str) {
    let from = models_dir().join("breast_cancer").join("2");
    let to = repo.join("breast_cancer").join(version.to_string());
    std::fs::create_dir(&to).expect("version directory");
    for f in [
        "model.onnx",
        "reference.json",
        "expected.json",
        "model.toml",
    ] {
        std::fs::copy(from.join(f), to.join(f)).expect("copy");
    }
    let toml = std::fs::read_to_string(to.join("model.toml")).expect("model.toml");
    std::fs::write(to.join("model.toml"), toml + toml_extra).expect("model.toml");
}

fn index_entry(index: &Value, version: &str) -> Option<Value> {
    index
        .as_array()?
        .iter()
        .find(|m| m["name"] == "breast_cancer" && m["version"] == version)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_dropped_in_at_run_time_becomes_a_challenger_without_restart() {
    let repo = writable_repository();
    let mut config = test_config("", "");
    config.repository.path = repo.path().to_path_buf();
    let ts = TestServer::start_config(config).await;

    drop_in_version(repo.path(), 7, "");
    // The repository index lists it (not loaded yet).
    let (status, index) = ts.post_json("/v2/repository/index", &json!({})).await;
    assert_eq!(status, 200, "{index}");
    let entry = index_entry(&index, "7").unwrap_or_else(|| panic!("7 not listed: {index}"));
    assert_eq!(entry["state"], "UNAVAILABLE", "{entry}");

    drop_in_version(repo.path(), 8, "");
    // Version 8 is added without the index having seen it first.
    for version in [7, 8] {
        let (status, d) = post_challenger(
            &ts,
            &json!({"model": "breast_cancer", "version": version, "mode": "shadow",
                    "queue_capacity": 1024, "timeout_ms": 60000}),
        )
        .await;
        assert_eq!(status, 201, "{d}");
        let c = challenger_of(&d, "breast_cancer", version).expect("added");
        assert_eq!(c["live"], true, "{c}");
    }
    let (_, index) = ts.post_json("/v2/repository/index", &json!({})).await;
    assert_eq!(index_entry(&index, "7").expect("7")["state"], "READY");

    // They score the mirrored requests (a copy of version 2: its answers).
    let rows = breast_cancer_features();
    let want = expected_classes(1);
    for (i, a) in ts
        .infer_rows("breast_cancer", &rows[..20])
        .await
        .iter()
        .enumerate()
    {
        assert_eq!(i64_data(output(&a.response, "label")), vec![want[i]]);
    }
    ts.wait_deployment("breast_cancer", "the new versions score every copy", |d| {
        [7, 8]
            .iter()
            .all(|&v| challenger_stat(d, "breast_cancer", v, "completed") == 20)
    })
    .await;
    let (status, r) = ts
        .post_json(
            "/v2/models/breast_cancer/versions/7/infer",
            &classifier_request(&rows[..3]),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        i64_data(output(&r, "label")),
        expected_classes(2)[..3].to_vec()
    );

    // A dropped-in version is validated as at start: bad settings in its
    // model.toml are refused with the reason; nothing changes.
    drop_in_version(repo.path(), 9, "\n[runtime]\ninstances = 100000\n");
    let (status, v) = post_challenger(
        &ts,
        &json!({"model": "breast_cancer", "version": 9, "mode": "shadow"}),
    )
    .await;
    assert_error(
        status,
        &v,
        400,
        &[
            "breast_cancer@9",
            "model.toml runtime.instances",
            "at most 64",
        ],
    );
    // A version that is on disk nowhere is still unknown.
    let (status, v) = post_challenger(
        &ts,
        &json!({"model": "breast_cancer", "version": 10, "mode": "shadow"}),
    )
    .await;
    assert_error(status, &v, 404, &["no valid version 10", "7, 8, 9"]);
    let d = ts.deployment("breast_cancer").await;
    assert_eq!(challenger_count(&d), 2, "{d}");
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirrored_copy_over_the_challengers_max_batch_size_is_not_run() {
    let repo = writable_repository();
    let mut config = test_config("", "");
    config.repository.path = repo.path().to_path_buf();
    let ts = TestServer::start_config(config).await;
    drop_in_version(repo.path(), 5, "\n[runtime]\nmax_batch_size = 4\n");
    let (status, d) = post_challenger(
        &ts,
        &json!({"model": "breast_cancer", "version": 5, "mode": "shadow",
                "queue_capacity": 1024, "timeout_ms": 60000}),
    )
    .await;
    assert_eq!(status, 201, "{d}");
    let rows = breast_cancer_features();

    // Directly, it refuses 10 rows.
    let (status, v) = ts
        .post_json(
            "/v2/models/breast_cancer/versions/5/infer",
            &classifier_request(&rows[..10]),
        )
        .await;
    assert_error(status, &v, 400, &["max_batch_size of 4"]);

    // Through the deployment the champion answers 10 rows; the copy is not
    // run on version 5 but counted as rejected. 3 rows are mirrored.
    let a = ts
        .infer_ok("breast_cancer", &classifier_request(&rows[..10]), None)
        .await;
    assert_eq!(a.model_version, "1");
    assert_eq!(
        i64_data(output(&a.response, "label")),
        expected_classes(1)[..10].to_vec()
    );
    ts.infer_ok("breast_cancer", &classifier_request(&rows[..3]), None)
        .await;
    let d = ts
        .wait_deployment("breast_cancer", "the 3-row copy is scored", |d| {
            challenger_stat(d, "breast_cancer", 5, "completed") == 1
        })
        .await;
    let c = challenger_of(&d, "breast_cancer", 5).expect("listed");
    let s = &c["stats"];
    assert_eq!(s["rejected"], 1, "{c}");
    assert_eq!(s["mirrored"], 1, "{c}");
    assert_eq!(s["errors"], 0, "{c}");
    assert_eq!(d["champion"]["stats"]["served"], 2, "{d}");
    let metrics = ts.metrics_text().await;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("contender_mirror_failures_total")
                && l.contains("error_type=\"rejected\"")
                && l.contains("version=\"5\"")
        })
        .unwrap_or_else(|| panic!("no rejected-copy counter in\n{metrics}"));
    assert!(line.ends_with(" 1"), "{line}");
    ts.stop().await;
}

/// Triton's repository `load` and `unload`: a version dropped in is loaded
/// and answers without a restart; a model no deployment uses is unloaded
/// and loaded again; a deployment's model, an unknown model and parameters
/// contender does not take are refused; another origin's page is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_load_and_unload() {
    let repo = writable_repository();
    let mut config = test_config("", "");
    config.repository.path = repo.path().to_path_buf();
    let ts = TestServer::start_config(config).await;
    let row = classifier_request(&breast_cancer_features()[..1]);

    // A version dropped in: unknown until loaded, then it answers.
    drop_in_version(repo.path(), 9, "");
    let (status, body) = ts
        .post_json("/v2/models/breast_cancer/versions/9/infer", &row)
        .await;
    assert_error(status, &body, 404, &["9"]);
    let (status, body) = ts
        .post_json("/v2/repository/models/breast_cancer/load", &json!({}))
        .await;
    if cfg!(feature = "torchscript") {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["versions"], json!(["1", "2", "3", "4", "9"]), "{body}");
    } else {
        // Version 4 is TorchScript, which this build cannot load: the load
        // says so, and loads the others.
        assert_error(status, &body, 400, &["breast_cancer@4", "torchscript"]);
    }
    let (status, body) = ts
        .post_json("/v2/models/breast_cancer/versions/9/infer", &row)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model_version"], "9");
    assert_eq!(
        i64_data(output(&body, "label")),
        vec![expected_classes(2)[0]]
    );
    let (_, index) = ts.post_json("/v2/repository/index", &json!({})).await;
    assert_eq!(index_entry(&index, "9").expect("9")["state"], "READY");

    // `dtypes` serves no deployment: unloaded, it answers 503; loaded, 200.
    let dtypes = json!({"inputs": [
        {"name": "x_fp32", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]},
        {"name": "x_fp64", "shape": [1, 3], "datatype": "FP64", "data": [1.0, 2.0, 3.0]},
        {"name": "x_i32", "shape": [1, 3], "datatype": "INT32", "data": [1, 2, 3]},
        {"name": "x_i64", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]},
        {"name": "x_bool", "shape": [1, 3], "datatype": "BOOL", "data": [true, false, true]},
        {"name": "x_u8", "shape": [1, 3], "datatype": "UINT8", "data": [1, 2, 3]}
    ]});
    let (status, body) = ts.post_json("/v2/models/dtypes/infer", &dtypes).await;
    assert_eq!(status, 200, "{body}");
    // As `tritonclient`'s unload_model() sends it.
    let r = ts
        .client
        .post(ts.url("/v2/repository/models/dtypes/unload"))
        .json(&json!({"parameters": {"unload_dependents": false}}))
        .send()
        .await
        .expect("unload");
    let (status, body) = support::json_of(r).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["versions"], json!(["1"]), "{body}");
    let (status, body) = ts.post_json("/v2/models/dtypes/infer", &dtypes).await;
    assert_error(status, &body, 503, &["dtypes"]);
    let (_, index) = ts.post_json("/v2/repository/index", &json!({})).await;
    let entry = index
        .as_array()
        .expect("index")
        .iter()
        .find(|m| m["name"] == "dtypes")
        .expect("dtypes listed")
        .clone();
    assert_eq!(entry["state"], "UNAVAILABLE", "{entry}");
    assert!(
        entry["reason"]
            .as_str()
            .is_some_and(|r| r.contains("unloaded")),
        "{entry}"
    );
    let (status, body) = ts
        .post_json(
            "/v2/repository/models/dtypes/load",
            &json!({"parameters": {}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = ts.post_json("/v2/models/dtypes/infer", &dtypes).await;
    assert_eq!(status, 200, "{body}");

    // Refusals.
    let (status, body) = ts
        .post_json("/v2/repository/models/breast_cancer/unload", &json!({}))
        .await;
    assert_error(
        status,
        &body,
        400,
        &["breast_cancer@1", "deployment 'breast_cancer'"],
    );
    let (status, body) = ts.post_json("/v2/models/breast_cancer/infer", &row).await;
    assert_eq!(status, 200, "the champion still answers: {body}");
    for action in ["load", "unload"] {
        let (status, body) = ts
            .post_json(
                &format!("/v2/repository/models/no_such_model/{action}"),
                &json!({}),
            )
            .await;
        assert_error(status, &body, 404, &["no_such_model"]);
    }
    let (status, body) = ts
        .post_json(
            "/v2/repository/models/dtypes/load",
            &json!({"parameters": {"config": "{\"max_batch_size\": 8}"}}),
        )
        .await;
    assert_error(status, &body, 501, &["config"]);
    let r = ts
        .client
        .post(ts.url("/v2/repository/models/dtypes/unload"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .expect("unload");
    let (status, body) = support::json_of(r).await;
    assert_error(status, &body, 403, &["cross-origin"]);
    let (status, body) = ts.post_json("/v2/models/dtypes/infer", &dtypes).await;
    assert_eq!(status, 200, "still loaded: {body}");
    ts.stop().await;
}

/// How many times `model` version 1 was loaded and warmed, from the
/// process-wide load-duration metric.
async fn loads_of(ts: &TestServer, model: &str) -> u64 {
    let metrics = ts.metrics_text().await;
    let label = format!("model=\"{model}\"");
    metrics
        .lines()
        .find(|l| {
            l.starts_with("contender_model_load_duration_seconds_count{") && l.contains(&label)
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no load count for {model}: {metrics}"))
}

/// The repository index's state of `model` version 1.
async fn index_state(ts: &TestServer, model: &str) -> String {
    let (_, index) = ts.post_json("/v2/repository/index", &json!({})).await;
    index
        .as_array()
        .expect("index")
        .iter()
        .find(|m| m["name"] == model)
        .and_then(|m| m["state"].as_str())
        .unwrap_or_else(|| panic!("{model} not indexed: {index}"))
        .to_owned()
}

/// Repository loads of one model at once load it once (the others find it
/// ready and succeed); an unload racing loads is never undone by one: the
/// index's state always matches whether the model answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_repository_loads_load_once_and_unloads_stay_consistent() {
    // `dtypes` under a name no other test uses: the load metric (shared by
    // every server in this process) counts this test's loads alone.
    let repo = support::repository_with(&[("dtrace", &models_dir().join("dtypes"))]);
    let mut config = test_config("", "");
    config.repository.path = repo.path().to_path_buf();
    let ts = TestServer::start_config(config).await;
    ts.wait_all_loaded().await;
    let infer = json!({"inputs": [
        {"name": "x_fp32", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]},
        {"name": "x_fp64", "shape": [1, 3], "datatype": "FP64", "data": [1.0, 2.0, 3.0]},
        {"name": "x_i32", "shape": [1, 3], "datatype": "INT32", "data": [1, 2, 3]},
        {"name": "x_i64", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]},
        {"name": "x_bool", "shape": [1, 3], "datatype": "BOOL", "data": [true, false, true]},
        {"name": "x_u8", "shape": [1, 3], "datatype": "UINT8", "data": [1, 2, 3]}
    ]});
    let empty = json!({});
    let load = || ts.post_json("/v2/repository/models/dtrace/load", &empty);
    let unload = || ts.post_json("/v2/repository/models/dtrace/unload", &empty);
    if index_state(&ts, "dtrace").await != "READY" {
        let (status, body) = load().await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = unload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(index_state(&ts, "dtrace").await, "UNAVAILABLE");

    // Four loads at once: all succeed, one of them loads.
    let before = loads_of(&ts, "dtrace").await;
    let answers = tokio::join!(load(), load(), load(), load());
    for (status, body) in [answers.0, answers.1, answers.2, answers.3] {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["versions"], json!(["1"]), "{body}");
    }
    assert_eq!(loads_of(&ts, "dtrace").await, before + 1);
    assert_eq!(index_state(&ts, "dtrace").await, "READY");
    let (status, body) = ts.post_json("/v2/models/dtrace/infer", &infer).await;
    assert_eq!(status, 200, "{body}");

    // An unload among loads: whichever runs last wins, and the index says
    // which (never UNAVAILABLE while it answers, or READY while it does not).
    for _ in 0..3 {
        let (a, u, b) = tokio::join!(load(), unload(), load());
        for (status, body) in [a, u, b] {
            assert_eq!(status, 200, "{body}");
        }
        let state = index_state(&ts, "dtrace").await;
        let (status, body) = ts.post_json("/v2/models/dtrace/infer", &infer).await;
        match state.as_str() {
            "READY" => assert_eq!(status, 200, "{body}"),
            "UNAVAILABLE" => {
                assert_error(status, &body, 503, &["dtrace"]);
            }
            other => panic!("dtrace is {other}"),
        }
    }
    ts.stop().await;
}

/// DELETE a challenger of breast_cancer; `suffix` is a query string or
/// empty, `body` an optional JSON body.
async fn delete_challenger(
    ts: &TestServer,
    version: u64,
    suffix: &str,
    body: Option<&Value>,
) -> (reqwest::StatusCode, Value) {
    let mut req = ts.client.delete(ts.url(&format!(
        "/admin/deployments/breast_cancer/challengers/breast_cancer/{version}{suffix}"
    )));
    if let Some(b) = body {
        req = req.json(b);
    }
    json_of(req.send().await.expect("DELETE")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenger_changes_record_who_and_why_and_a_readded_challenger_counts_afresh() {
    let ts = TestServer::start().await;
    let (status, d) = post_challenger(
        &ts,
        &json!({"model": "breast_cancer", "version": 2, "mode": "shadow",
                "queue_capacity": 1024, "timeout_ms": 60000,
                "by": "alice", "reason": "try v2 on live traffic"}),
    )
    .await;
    assert_eq!(status, 201, "{d}");
    let rows = breast_cancer_features();
    let n = 10u64;
    ts.infer_rows("breast_cancer", &rows[..n as usize]).await;
    ts.wait_deployment("breast_cancer", "v2 answered every copy", |d| {
        challenger_stat(d, "breast_cancer", 2, "completed") == n
            && logged(d, "breast_cancer", 2) == n
    })
    .await;

    // Malformed notes are refused and change nothing.
    let (status, v) = post_challenger(
        &ts,
        &json!({"model": "breast_cancer", "version": 3, "mode": "shadow", "by": 5}),
    )
    .await;
    assert_error(status, &v, 400, &["by", "string"]);
    let (status, v) = delete_challenger(&ts, 2, "?who=bob", None).await;
    assert_error(status, &v, 400, &["who"]);
    let (status, v) = delete_challenger(&ts, 2, "?by=bob", Some(&json!({"by": "bob"}))).await;
    assert_error(status, &v, 400, &["not both"]);
    assert_eq!(
        challenger_stat(
            &ts.deployment("breast_cancer").await,
            "breast_cancer",
            2,
            "completed"
        ),
        n
    );

    let (status, d) = delete_challenger(&ts, 2, "?by=bob&reason=too%20slow", None).await;
    assert_eq!(status, 200, "{d}");
    assert!(challenger_of(&d, "breast_cancer", 2).is_none(), "{d}");

    // Added again, its traffic counters start from zero; its logged
    // predictions (and metrics) are the model version's and stay.
    let (status, d) = post_challenger(
        &ts,
        &json!({"model": "breast_cancer", "version": 2, "mode": "shadow"}),
    )
    .await;
    assert_eq!(status, 201, "{d}");
    let stats = &challenger_of(&d, "breast_cancer", 2).expect("v2")["stats"];
    for key in [
        "served",
        "mirrored",
        "dropped",
        "errors",
        "timeouts",
        "rejected",
        "completed",
    ] {
        assert_eq!(stats[key], 0, "{key}: {stats}");
    }
    assert_eq!(stats["p99_us"], Value::Null, "{stats}");
    assert_eq!(logged(&d, "breast_cancer", 2), n, "{d}");

    let (status, d) =
        delete_challenger(&ts, 2, "", Some(&json!({"by": "carol", "reason": "done"}))).await;
    assert_eq!(status, 200, "{d}");

    let h = history(&ts).await;
    let entries: Vec<(&str, &Value, &str)> = h
        .iter()
        .map(|r| {
            (
                r["action"].as_str().expect("action"),
                &r["trigger"],
                r["reason"].as_str().expect("reason"),
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            (
                "challenger_added",
                &json!({"kind": "person", "name": "alice"}),
                "try v2 on live traffic"
            ),
            (
                "challenger_removed",
                &json!({"kind": "person", "name": "bob"}),
                "too slow"
            ),
            (
                "challenger_added",
                &json!({"kind": "person", "name": null}),
                ""
            ),
            (
                "challenger_removed",
                &json!({"kind": "person", "name": "carol"}),
                "done"
            ),
        ],
        "{h:#?}"
    );
    ts.stop().await;
}
