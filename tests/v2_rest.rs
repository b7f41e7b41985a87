//! Every Open Inference Protocol REST endpoint (and Triton extension) of the
//! real server, success and error paths.

mod support;

use std::collections::HashSet;

use serde_json::{Value, json};
use support::{
    ONNX_MODELS, TestServer, assert_error, breast_cancer_features, classifier_request, expected,
    i64_data, json_of, output,
};

fn one_row() -> Value {
    classifier_request(&breast_cancer_features()[..1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_metadata_and_health() {
    let s = TestServer::start().await;

    let (status, meta) = s.get_json("/v2").await;
    assert_eq!(status, 200, "{meta}");
    assert_eq!(meta["name"], "contender");
    assert!(
        meta["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{meta}"
    );
    let extensions: Vec<&str> = meta["extensions"]
        .as_array()
        .expect("extensions is an array")
        .iter()
        .map(|e| e.as_str().expect("extension names are strings"))
        .collect();
    for ext in [
        "binary_tensor_data",
        "statistics",
        "model_repository",
        "classification",
    ] {
        assert!(extensions.contains(&ext), "{ext} missing from {meta}");
    }

    let (status, live) = s.get_json("/v2/health/live").await;
    assert_eq!(status, 200);
    assert_eq!(live["live"], true);

    let (status, ready) = s.get_json("/v2/health/ready").await;
    assert_eq!(status, 200);
    assert_eq!(ready["ready"], true);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_metadata_for_deployments_and_repository_models() {
    let s = TestServer::start().await;

    // A deployment: its champion (breast_cancer@1) describes it.
    let (status, m) = s.get_json("/v2/models/breast_cancer").await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["name"], "breast_cancer");
    // Every version `/v2/models/breast_cancer/versions/{v}` serves.
    assert_eq!(m["versions"], json!(["1", "2", "3", "4"]));
    assert_eq!(m["platform"], "onnx_onnxv1");
    assert_eq!(
        m["inputs"],
        json!([{"name": "input", "datatype": "FP32", "shape": [-1, 30]}])
    );
    let outputs = m["outputs"].as_array().expect("outputs array");
    assert!(
        outputs.contains(&json!({"name": "label", "datatype": "INT64", "shape": [-1]})),
        "{m}"
    );
    assert!(
        outputs.contains(&json!({"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]})),
        "{m}"
    );

    let (status, m) = s.get_json("/v2/models/diabetes").await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(
        m["inputs"],
        json!([{"name": "input", "datatype": "FP32", "shape": [-1, 10]}])
    );
    assert_eq!(
        m["outputs"],
        json!([{"name": "prediction", "datatype": "FP32", "shape": [-1, 1]}])
    );

    // A repository model that no deployment uses, without a version: every version.
    let (status, m) = s.get_json("/v2/models/dtypes").await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["name"], "dtypes");
    assert_eq!(m["versions"], json!(["1"]));
    let names: HashSet<&str> = m["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .map(|t| t["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        HashSet::from(["x_fp32", "x_fp64", "x_i32", "x_i64", "x_bool", "x_u8"])
    );

    // A specific version of a repository model.
    let (status, m) = s.get_json("/v2/models/breast_cancer/versions/3").await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["name"], "breast_cancer");
    assert_eq!(m["versions"], json!(["3"]));
    assert_eq!(m["inputs"][0]["shape"], json!([-1, 30]));
    let (status, m) = s.get_json("/v2/models/dtypes/versions/1").await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["versions"], json!(["1"]));

    // Errors.
    let (status, body) = s.get_json("/v2/models/no_such_model").await;
    assert_error(status, &body, 404, &["no_such_model"]);
    let (status, body) = s.get_json("/v2/models/breast_cancer/versions/9").await;
    assert_error(status, &body, 404, &["breast_cancer", "9"]);
    let (status, body) = s.get_json("/v2/models/breast_cancer/versions/two").await;
    assert_error(status, &body, 400, &["two"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_readiness() {
    let s = TestServer::start().await;
    for path in [
        "/v2/models/breast_cancer/ready",
        "/v2/models/diabetes/ready",
        "/v2/models/dtypes/ready",
        "/v2/models/breast_cancer/versions/1/ready",
        "/v2/models/breast_cancer/versions/2/ready",
        "/v2/models/breast_cancer/versions/3/ready",
    ] {
        let (status, body) = s.get_json(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["ready"], true, "{path}: {body}");
    }
    // Every indexed version: READY answers 200; anything else (a version that
    // failed to load: 503; a directory the repository skipped: 404) does not.
    let (_, index) = s.post_json("/v2/repository/index", &json!({})).await;
    for m in index.as_array().expect("index array") {
        if m["version"].as_str().is_none_or(str::is_empty) {
            continue;
        }
        let path = format!(
            "/v2/models/{}/versions/{}/ready",
            m["name"].as_str().expect("name"),
            m["version"].as_str().expect("version")
        );
        let (status, body) = s.get_json(&path).await;
        if m["state"] == "READY" {
            assert_eq!(status, 200, "{path}: {body}");
        } else {
            assert!(
                status == 503 || status == 404,
                "{path}: {m} -> {status} {body}"
            );
            assert_ne!(body["ready"], true, "{path}: {body}");
        }
    }

    let (status, body) = s.get_json("/v2/models/no_such_model/ready").await;
    assert_error(status, &body, 404, &["no_such_model"]);
    let (status, body) = s
        .get_json("/v2/models/breast_cancer/versions/7/ready")
        .await;
    assert_error(status, &body, 404, &["7"]);
    let (status, body) = s
        .get_json("/v2/models/breast_cancer/versions/0/ready")
        .await;
    assert_error(status, &body, 400, &["0"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_configuration() {
    let s = TestServer::start().await;
    let (status, c) = s.get_json("/v2/models/breast_cancer/config").await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["name"], "breast_cancer");
    assert_eq!(c["platform"], "onnxruntime_onnx");
    assert_eq!(c["max_batch_size"], 1024);
    assert_eq!(c["input"][0]["name"], "input");
    assert_eq!(c["input"][0]["data_type"], "TYPE_FP32");
    // Batched models list dims without the batch dimension, int64s as strings.
    assert_eq!(c["input"][0]["dims"], json!(["30"]));
    let out_names: HashSet<&str> = c["output"]
        .as_array()
        .expect("output array")
        .iter()
        .map(|o| o["name"].as_str().expect("name"))
        .collect();
    assert_eq!(out_names, HashSet::from(["label", "probabilities"]));
    // One value per row: dims [1] reshaped to a scalar, as Triton writes it.
    let label = c["output"]
        .as_array()
        .expect("output array")
        .iter()
        .find(|o| o["name"] == "label")
        .expect("label");
    assert_eq!(label["dims"], json!(["1"]), "{label}");
    assert_eq!(label["reshape"], json!({"shape": []}), "{label}");

    let (status, c) = s
        .get_json("/v2/models/breast_cancer/versions/2/config")
        .await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["name"], "breast_cancer");
    assert_eq!(c["version_policy"]["specific"]["versions"], json!(["2"]));

    let (status, body) = s.get_json("/v2/models/no_such_model/config").await;
    assert_error(status, &body, 404, &["no_such_model"]);
    s.stop().await;
}

fn stats_for<'a>(stats: &'a Value, name: &str, version: &str) -> &'a Value {
    stats["model_stats"]
        .as_array()
        .unwrap_or_else(|| panic!("no model_stats array: {stats}"))
        .iter()
        .find(|m| m["name"] == name && m["version"] == version)
        .unwrap_or_else(|| panic!("no stats for {name}@{version}: {stats}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_count_inferences() {
    let s = TestServer::start().await;

    let (status, before) = s
        .get_json("/v2/models/breast_cancer/versions/1/stats")
        .await;
    assert_eq!(status, 200, "{before}");
    let before = stats_for(&before, "breast_cancer", "1").clone();
    assert_eq!(before["inference_count"], 0, "{before}");
    assert_eq!(before["execution_count"], 0, "{before}");

    // Two requests of 3 and 1 rows, and one that fails validation.
    let rows = breast_cancer_features();
    let (status, body) = s
        .post_json(
            "/v2/models/breast_cancer/infer",
            &classifier_request(&rows[..3]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s
        .post_json("/v2/models/breast_cancer/infer", &one_row())
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s
        .post_json("/v2/models/breast_cancer/infer", &json!({"inputs": []}))
        .await;
    assert_eq!(status, 400, "{body}");

    let (status, after) = s
        .get_json("/v2/models/breast_cancer/versions/1/stats")
        .await;
    assert_eq!(status, 200, "{after}");
    let after = stats_for(&after, "breast_cancer", "1");
    assert_eq!(after["inference_count"], 4, "rows: {after}");
    assert_eq!(after["execution_count"], 2, "requests: {after}");
    assert_eq!(after["inference_stats"]["success"]["count"], 2, "{after}");
    assert_eq!(after["inference_stats"]["fail"]["count"], 1, "{after}");
    assert!(after["last_inference"].as_u64().unwrap_or(0) > 0, "{after}");

    // The deployment's stats and the model's (every ready version).
    let (status, by_model) = s.get_json("/v2/models/breast_cancer/stats").await;
    assert_eq!(status, 200, "{by_model}");
    assert_eq!(
        stats_for(&by_model, "breast_cancer", "1")["inference_count"],
        4
    );
    assert_eq!(
        stats_for(&by_model, "breast_cancer", "2")["inference_count"],
        0
    );
    assert!(
        by_model["model_stats"]
            .as_array()
            .expect("model_stats")
            .iter()
            .all(|m| m["name"] == "breast_cancer"),
        "{by_model}"
    );

    // Every model version.
    let (status, all) = s.get_json("/v2/models/stats").await;
    assert_eq!(status, 200, "{all}");
    for (name, version) in ONNX_MODELS {
        stats_for(&all, name, version);
    }
    assert_eq!(stats_for(&all, "breast_cancer", "1")["inference_count"], 4);
    assert_eq!(stats_for(&all, "diabetes", "1")["inference_count"], 0);
    stats_for(&all, "dtypes", "1");

    let (status, body) = s.get_json("/v2/models/no_such_model/stats").await;
    assert_error(status, &body, 404, &["no_such_model"]);
    let (status, body) = s
        .get_json("/v2/models/breast_cancer/versions/8/stats")
        .await;
    assert_error(status, &body, 404, &["8"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_index() {
    let s = TestServer::start().await;
    let want: HashSet<(String, String)> = ONNX_MODELS
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    // (name, version) of every entry; checks each entry's shape on the way.
    let entries = |index: &Value, ready_only: bool| -> HashSet<(String, String)> {
        index
            .as_array()
            .unwrap_or_else(|| panic!("index is not an array: {index}"))
            .iter()
            .map(|m| {
                let state = m["state"].as_str().expect("state");
                assert!(["READY", "LOADING", "UNAVAILABLE"].contains(&state), "{m}");
                if ready_only {
                    assert_eq!(state, "READY", "{m}");
                }
                if state == "UNAVAILABLE" {
                    assert!(
                        m["reason"].as_str().is_some_and(|r| !r.is_empty()),
                        "an unavailable entry says why: {m}"
                    );
                }
                (
                    m["name"].as_str().expect("name").to_owned(),
                    m["version"]
                        .as_str()
                        .expect("version is a string")
                        .to_owned(),
                )
            })
            .collect()
    };
    let ready_states = |index: &Value| {
        for (name, version) in ONNX_MODELS {
            let m = index
                .as_array()
                .expect("array")
                .iter()
                .find(|m| m["name"] == *name && m["version"] == *version)
                .unwrap_or_else(|| panic!("{name}@{version} missing: {index}"));
            assert_eq!(m["state"], "READY", "{m}");
        }
    };

    for (body, ready_only) in [
        (json!({}), false),
        (json!({"ready": false}), false),
        (json!({"ready": true}), true),
    ] {
        let (status, index) = s.post_json("/v2/repository/index", &body).await;
        assert_eq!(status, 200, "{body}: {index}");
        let got = entries(&index, ready_only);
        assert!(got.is_superset(&want), "{body}: {index}");
        ready_states(&index);
    }
    // Everything listed by `{}` that is READY is listed by `{"ready": true}`.
    let (_, all) = s.post_json("/v2/repository/index", &json!({})).await;
    let (_, ready) = s
        .post_json("/v2/repository/index", &json!({"ready": true}))
        .await;
    let ready_in_all: HashSet<_> = all
        .as_array()
        .expect("array")
        .iter()
        .filter(|m| m["state"] == "READY")
        .map(|m| (m["name"].clone(), m["version"].clone()))
        .collect();
    let listed_ready: HashSet<_> = ready
        .as_array()
        .expect("array")
        .iter()
        .map(|m| (m["name"].clone(), m["version"].clone()))
        .collect();
    assert_eq!(ready_in_all, listed_ready);

    // An empty body is `{}`.
    let (status, index) = json_of(s.post_raw("/v2/repository/index", "").await).await;
    assert_eq!(status, 200, "{index}");
    assert!(entries(&index, false).is_superset(&want), "{index}");

    let (status, body) = json_of(s.post_raw("/v2/repository/index", "{\"ready\":").await).await;
    assert_error(status, &body, 400, &["malformed"]);
    let (status, body) = s
        .post_json("/v2/repository/index", &json!({"ready": "yes"}))
        .await;
    assert_error(status, &body, 400, &["ready"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics() {
    let s = TestServer::start().await;
    let (status, body) = s
        .post_json("/v2/models/breast_cancer/infer", &one_row())
        .await;
    assert_eq!(status, 200, "{body}");
    let r = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(r.status(), 200);
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = r.text().await.expect("metrics text");
    assert!(
        text.contains("# TYPE contender_inference_requests_total counter"),
        "{text}"
    );
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("contender_inference_requests_total{")
                && l.contains("model=\"breast_cancer\"")
                && l.contains("version=\"1\"")
        })
        .unwrap_or_else(|| panic!("no breast_cancer@1 request counter in:\n{text}"));
    let value: f64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unparsable sample {line:?}"));
    assert!(value >= 1.0, "{line}");
    assert!(
        text.contains("contender_inference_request_duration_seconds"),
        "{text}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_names_the_answering_model_and_echoes_ids() {
    let s = TestServer::start().await;
    let rows = breast_cancer_features();

    // Via the deployment: the champion breast_cancer@1 answers.
    let mut req = classifier_request(&rows[..2]);
    req["id"] = json!("my-request-42");
    let r = s
        .client
        .post(s.url("/v2/models/breast_cancer/infer"))
        .json(&req)
        .send()
        .await
        .expect("infer");
    let header_id = r
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (status, body) = json_of(r).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model_name"], "breast_cancer");
    assert_eq!(body["model_version"], "1");
    assert_eq!(body["id"], "my-request-42");
    assert_eq!(header_id.as_deref(), Some("my-request-42"));
    assert_eq!(
        i64_data(output(&body, "label")),
        expected_labels("breast_cancer", 1, &[0, 1])
    );
    assert_eq!(output(&body, "label")["shape"], json!([2]));
    assert_eq!(output(&body, "label")["datatype"], "INT64");
    assert_eq!(output(&body, "probabilities")["shape"], json!([2, 2]));
    assert_eq!(output(&body, "probabilities")["datatype"], "FP32");

    // Via a version path: breast_cancer@2 answers (and says so).
    let (status, body) = s
        .post_json(
            "/v2/models/breast_cancer/versions/2/infer",
            &classifier_request(&rows[..2]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model_name"], "breast_cancer");
    assert_eq!(body["model_version"], "2");

    // Without an id: a generated one, unique, echoed in the header.
    let mut ids = HashSet::new();
    for _ in 0..5 {
        let r = s
            .client
            .post(s.url("/v2/models/breast_cancer/infer"))
            .json(&one_row())
            .send()
            .await
            .expect("infer");
        let header_id = r
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .expect("an x-request-id header");
        let (status, body) = json_of(r).await;
        assert_eq!(status, 200, "{body}");
        let id = body["id"].as_str().expect("a generated id").to_owned();
        assert!(!id.is_empty());
        assert_eq!(header_id, id);
        assert!(ids.insert(id), "ids repeat: {ids:?}");
    }

    // Without a body id, an x-request-id request header is used.
    let r = s
        .client
        .post(s.url("/v2/models/diabetes/infer"))
        .header("x-request-id", "from-header-7")
        .json(&json!({"inputs": [{
            "name": "input", "shape": [1, 10], "datatype": "FP32", "data": vec![0.0; 10]
        }]}))
        .send()
        .await
        .expect("infer");
    let (status, body) = json_of(r).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "from-header-7");
    assert_eq!(body["model_name"], "diabetes");
    assert_eq!(body["model_version"], "1");
    s.stop().await;
}

fn expected_labels(model: &str, version: u32, rows: &[usize]) -> Vec<i64> {
    let e = expected(model, version);
    rows.iter()
        .map(|&i| e["label"][i].as_i64().expect("label"))
        .collect()
}

/// Every invalid request gets the right status and a V2 error body naming the
/// problem; afterwards the server still answers correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_get_v2_errors() {
    let s = TestServer::start().await;
    let infer = "/v2/models/breast_cancer/infer";
    let row: Vec<f64> = breast_cancer_features()[0].clone();

    // Malformed JSON.
    let (status, body) = json_of(s.post_raw(infer, "{\"inputs\": [").await).await;
    assert_error(status, &body, 400, &["malformed"]);
    let (status, body) = json_of(s.post_raw(infer, "not json at all").await).await;
    assert_error(status, &body, 400, &["malformed"]);
    // Valid JSON, wrong structure.
    let (status, body) = s.post_json(infer, &json!({"inputs": 3})).await;
    assert_error(status, &body, 400, &[]);
    let (status, body) = s.post_json(infer, &json!({})).await;
    assert_error(status, &body, 400, &["inputs"]);

    // Unknown input name.
    let bad = json!({"inputs": [{"name": "features", "shape": [1, 30], "datatype": "FP32", "data": row}]});
    let (status, body) = s.post_json(infer, &bad).await;
    assert_error(status, &body, 400, &["features", "input"]);

    // Missing input.
    let (status, body) = s.post_json(infer, &json!({"inputs": []})).await;
    assert_error(status, &body, 400, &["missing input", "input"]);
    let dtypes_partial = json!({"inputs": [
        {"name": "x_fp32", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}
    ]});
    let (status, body) = s
        .post_json("/v2/models/dtypes/infer", &dtypes_partial)
        .await;
    assert_error(status, &body, 400, &["missing input"]);

    // Wrong datatype.
    let bad =
        json!({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP64", "data": row}]});
    let (status, body) = s.post_json(infer, &bad).await;
    assert_error(status, &body, 400, &["FP64", "FP32"]);
    // Unknown datatype.
    let bad =
        json!({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FLOAT", "data": row}]});
    let (status, body) = s.post_json(infer, &bad).await;
    assert_error(status, &body, 400, &["FLOAT"]);

    // Data length not matching the shape.
    let bad = json!({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": &row[..29]}]});
    let (status, body) = s.post_json(infer, &bad).await;
    assert_error(status, &body, 400, &["input", "30", "29"]);
    let bad =
        json!({"inputs": [{"name": "input", "shape": [2, 30], "datatype": "FP32", "data": row}]});
    let (status, body) = s.post_json(infer, &bad).await;
    assert_error(status, &body, 400, &["60", "30"]);

    // A shape the model cannot take (data consistent with it).
    let bad = json!({"inputs": [{"name": "input", "shape": [1, 29], "datatype": "FP32", "data": &row[..29]}]});
    let (status, body) = s.post_json(infer, &bad).await;
    assert_error(status, &body, 400, &["[1, 29]", "[-1, 30]"]);
    let bad =
        json!({"inputs": [{"name": "input", "shape": [30], "datatype": "FP32", "data": row}]});
    let (status, body) = s.post_json(infer, &bad).await;
    assert_error(status, &body, 400, &["shape"]);
    let bad =
        json!({"inputs": [{"name": "input", "shape": [-1, 30], "datatype": "FP32", "data": row}]});
    let (status, body) = s.post_json(infer, &bad).await;
    assert_error(status, &body, 400, &["shape"]);
    // No rows at all.
    let bad =
        json!({"inputs": [{"name": "input", "shape": [0, 30], "datatype": "FP32", "data": []}]});
    let (status, body) = s.post_json(infer, &bad).await;
    assert_error(status, &body, 400, &["rows"]);

    // Non-numeric data.
    let mut strings: Vec<Value> = row.iter().map(|&x| json!(x)).collect();
    strings[4] = json!("abc");
    let bad = json!({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": strings}]});
    let (status, body) = s.post_json(infer, &bad).await;
    assert_error(status, &body, 400, &["input", "string"]);
    let mut nulls: Vec<Value> = row.iter().map(|&x| json!(x)).collect();
    nulls[0] = Value::Null;
    let bad =
        json!({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": nulls}]});
    let (status, body) = s.post_json(infer, &bad).await;
    assert_error(status, &body, 400, &["null"]);
    // No data.
    let bad = json!({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32"}]});
    let (status, body) = s.post_json(infer, &bad).await;
    assert_error(status, &body, 400, &["no data"]);

    // Unknown requested output.
    let mut bad = one_row();
    bad["outputs"] = json!([{"name": "logits"}]);
    let (status, body) = s.post_json(infer, &bad).await;
    assert_error(status, &body, 400, &["logits"]);

    // Unknown model, unknown version, non-numeric version.
    let (status, body) = s
        .post_json("/v2/models/no_such_model/infer", &one_row())
        .await;
    assert_error(status, &body, 404, &["no_such_model"]);
    let (status, body) = s
        .post_json("/v2/models/breast_cancer/versions/9/infer", &one_row())
        .await;
    assert_error(status, &body, 404, &["9"]);
    let (status, body) = s
        .post_json("/v2/models/breast_cancer/versions/latest/infer", &one_row())
        .await;
    assert_error(status, &body, 400, &["latest"]);

    // Unknown route, wrong method.
    let (status, body) = s.get_json("/v2/no/such/route").await;
    assert_error(status, &body, 404, &["/v2/no/such/route"]);
    let (status, body) = s.get_json("/nothing").await;
    assert_error(status, &body, 404, &[]);
    let (status, body) = s.get_json(infer).await;
    assert_error(status, &body, 405, &["GET"]);
    let r = s
        .client
        .delete(s.url("/v2/health/live"))
        .send()
        .await
        .expect("DELETE");
    let (status, body) = json_of(r).await;
    assert_error(status, &body, 405, &["DELETE"]);
    let (status, body) = s.post_json("/v2/health/ready", &json!({})).await;
    assert_error(status, &body, 405, &["POST"]);

    // Still serving, and correctly.
    let (status, body) = s.post_json(infer, &one_row()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        i64_data(output(&body, "label")),
        expected_labels("breast_cancer", 1, &[0])
    );
    let (status, ready) = s.get_json("/v2/health/ready").await;
    assert_eq!(status, 200, "{ready}");
    s.stop().await;
}

/// `server.max_body_bytes` and a model's `max_batch_size`.
///
/// Bodies stay far below hyper's first read (8 KiB), so the server has read
/// the whole over-limit body before it answers 413 and closes: no TCP reset
/// can race the response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_enforced() {
    let s = TestServer::start_with(
        "max_body_bytes = 2048",
        "[models.breast_cancer]\nmax_batch_size = 3\n",
    )
    .await;
    let rows = breast_cancer_features();
    let infer = "/v2/models/breast_cancer/infer";
    let body_len = |v: &Value| serde_json::to_vec(v).expect("json").len();

    // Over the body limit (about 2.4 KB of JSON).
    let big = classifier_request(&rows[..4]);
    assert!(body_len(&big) > 2048);
    let (status, body) = s.post_json(infer, &big).await;
    assert_error(status, &body, 413, &["2048"]);

    // Under the body limit but over max_batch_size.
    let four = json!({"inputs": [{
        "name": "input", "shape": [4, 30], "datatype": "FP32", "data": vec![0.0; 120]
    }]});
    assert!(body_len(&four) <= 2048);
    let (status, body) = s.post_json(infer, &four).await;
    assert_error(status, &body, 400, &["4", "max_batch_size", "3"]);
    // The config endpoint reports the override.
    let (status, c) = s.get_json("/v2/models/breast_cancer/config").await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["max_batch_size"], 3);

    // At both limits: fine.
    let three = classifier_request(&rows[..3]);
    assert!(body_len(&three) <= 2048);
    let (status, body) = s.post_json(infer, &three).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        i64_data(output(&body, "label")),
        expected_labels("breast_cancer", 1, &[0, 1, 2])
    );
    // Other models keep the default batch limit.
    let diabetes = json!({"inputs": [{
        "name": "input", "shape": [5, 10], "datatype": "FP32", "data": vec![0.0; 50]
    }]});
    let (status, body) = s.post_json("/v2/models/diabetes/infer", &diabetes).await;
    assert_eq!(status, 200, "{body}");
    s.stop().await;
}

fn compressed(encoding: &str, body: &[u8]) -> Vec<u8> {
    use flate2::Compression;
    use std::io::Write;
    match encoding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
            e.write_all(body).expect("gzip");
            e.finish().expect("gzip")
        }
        "deflate" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), Compression::default());
            e.write_all(body).expect("zlib");
            e.finish().expect("zlib")
        }
        "raw-deflate" => {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), Compression::default());
            e.write_all(body).expect("deflate");
            e.finish().expect("deflate")
        }
        other => panic!("no encoder for {other}"),
    }
}

/// Request bodies compressed with gzip or deflate (`Content-Encoding`, as
/// `tritonclient` sends them with `request_compression_algorithm`) are
/// inflated under the same size limit; other encodings get 415.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_request_bodies() {
    let s = TestServer::start_with("max_body_bytes = 4096", "").await;
    let infer = "/v2/models/breast_cancer/infer";
    let plain =
        serde_json::to_vec(&classifier_request(&breast_cancer_features()[..2])).expect("json");
    let post = |encoding: &'static str, body: Vec<u8>| {
        s.client
            .post(s.url(infer))
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body(body)
            .send()
    };

    for (header, encoder) in [
        ("gzip", "gzip"),
        ("GZIP", "gzip"),
        ("x-gzip", "gzip"),
        ("deflate", "deflate"),
        ("deflate", "raw-deflate"),
    ] {
        let (status, body) = json_of(
            post(header, compressed(encoder, &plain))
                .await
                .expect("infer"),
        )
        .await;
        assert_eq!(status, 200, "{header} ({encoder}): {body}");
        assert_eq!(
            i64_data(output(&body, "label")),
            expected_labels("breast_cancer", 1, &[0, 1]),
            "{header} ({encoder})"
        );
    }

    // Feedback takes compressed bodies too.
    let r = s
        .client
        .post(s.url(infer))
        .json(&classifier_request(&breast_cancer_features()[..1]))
        .send()
        .await
        .expect("infer");
    let (status, answer) = json_of(r).await;
    assert_eq!(status, 200, "{answer}");
    let label = serde_json::to_vec(&json!({"id": answer["id"], "label": 1})).expect("json");
    let r = s
        .client
        .post(s.url("/v2/models/breast_cancer/feedback"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(compressed("gzip", &label))
        .send()
        .await
        .expect("feedback");
    let (status, body) = json_of(r).await;
    assert_eq!(status, 200, "{body}");

    // An encoding contender does not speak.
    let (status, body) = json_of(post("br", plain.clone()).await.expect("infer")).await;
    assert_error(status, &body, 415, &["br", "gzip"]);
    // A body that is not what its header says.
    let (status, body) = json_of(post("gzip", plain.clone()).await.expect("infer")).await;
    assert_error(status, &body, 400, &["gzip", "inflated"]);
    let mut truncated = compressed("gzip", &plain);
    truncated.truncate(truncated.len() / 2);
    let (status, body) = json_of(post("gzip", truncated).await.expect("infer")).await;
    assert_error(status, &body, 400, &["gzip"]);
    // Small compressed, over the limit inflated (a compression bomb).
    let mut padded = plain.clone();
    padded.splice(1..1, std::iter::repeat_n(b' ', 200_000));
    let bomb = compressed("gzip", &padded);
    assert!(bomb.len() < 4096, "{} bytes", bomb.len());
    let (status, body) = json_of(post("gzip", bomb).await.expect("infer")).await;
    assert_error(status, &body, 413, &["4096", "inflated"]);
    // The server still answers.
    let (status, body) = json_of(
        post("gzip", compressed("gzip", &plain))
            .await
            .expect("infer"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    s.stop().await;
}

/// Any text id comes back in the body and, as UTF-8, in `x-request-id`; an id
/// with a control character (which no header can carry) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_in_any_script_are_echoed() {
    let s = TestServer::start().await;
    for path in [
        "/v2/models/breast_cancer/infer",
        "/v2/models/breast_cancer/versions/2/infer",
    ] {
        let mut req = one_row();
        req["id"] = json!("commande-é-€-注文");
        let r = s
            .client
            .post(s.url(path))
            .json(&req)
            .send()
            .await
            .expect("infer");
        let header = r
            .headers()
            .get("x-request-id")
            .map(|v| v.as_bytes().to_vec());
        let (status, body) = json_of(r).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["id"], "commande-é-€-注文");
        assert_eq!(
            header.as_deref(),
            Some("commande-é-€-注文".as_bytes()),
            "{path}"
        );

        for bad in ["line\nbreak", "tab\there", "nul\u{0}", "del\u{7f}"] {
            let mut req = one_row();
            req["id"] = json!(bad);
            let (status, body) = s.post_json(path, &req).await;
            assert_error(status, &body, 400, &["control character"]);
        }
    }
    // A label for the non-ASCII id joins its prediction.
    let (status, body) = s
        .post_json(
            "/v2/models/breast_cancer/feedback",
            &json!({"id": "commande-é-€-注文", "label": 0}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    s.stop().await;
}

/// Triton's classification extension: `"classification": N` on an output
/// returns each row's top N classes as `"<score>:<index>:<label>"`, in JSON
/// or binary; what cannot be classified gets a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classification_extension_returns_the_top_classes() {
    let s = TestServer::start().await;
    let rows = breast_cancer_features();
    let expected_probs = support::expected_class_probabilities(1);
    for path in [
        "/v2/models/breast_cancer/infer",
        "/v2/models/breast_cancer/versions/1/infer",
    ] {
        let mut req = classifier_request(&rows[..3]);
        req["outputs"] = json!([
            {"name": "probabilities", "parameters": {"classification": 2}},
            {"name": "label"}
        ]);
        let (status, body) = s.post_json(path, &req).await;
        assert_eq!(status, 200, "{body}");
        let top = output(&body, "probabilities");
        assert_eq!(top["datatype"], "BYTES", "{top}");
        assert_eq!(top["shape"], json!([3, 2]), "{top}");
        let labels = ["malignant", "benign"];
        let data: Vec<&str> = top["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|v| v.as_str().expect("strings"))
            .collect();
        for (r, pair) in data.chunks(2).enumerate() {
            let parsed: Vec<(f64, usize, &str)> = pair
                .iter()
                .map(|t| {
                    let mut it = t.splitn(3, ':');
                    let score: f64 = it.next().expect("score").parse().expect("a number");
                    let index: usize = it.next().expect("index").parse().expect("an index");
                    (score, index, it.next().expect("label"))
                })
                .collect();
            assert!(parsed[0].0 >= parsed[1].0, "{pair:?}");
            for (score, index, label) in parsed {
                assert_eq!(label, labels[index], "{pair:?}");
                assert!(
                    (score - expected_probs[r][index]).abs() < 1e-6,
                    "row {r}: {pair:?} against {:?}",
                    expected_probs[r]
                );
            }
        }
        // The other output is untouched.
        assert_eq!(
            i64_data(output(&body, "label")),
            expected_labels("breast_cancer", 1, &[0, 1, 2])
        );

        // Top 1, as binary data.
        let mut req = classifier_request(&rows[..2]);
        req["outputs"] = json!([{"name": "probabilities",
            "parameters": {"classification": 1, "binary_data": true}}]);
        let r = s
            .client
            .post(s.url(path))
            .json(&req)
            .send()
            .await
            .expect("infer");
        assert_eq!(r.status(), 200);
        let json_len: usize = r.headers()["inference-header-content-length"]
            .to_str()
            .expect("ASCII")
            .parse()
            .expect("a length");
        let bytes = r.bytes().await.expect("body");
        let header: Value = serde_json::from_slice(&bytes[..json_len]).expect("JSON header");
        assert_eq!(header["outputs"][0]["datatype"], "BYTES", "{header}");
        assert_eq!(header["outputs"][0]["shape"], json!([2, 1]), "{header}");
        let mut binary = &bytes[json_len..];
        for probs in &expected_probs[..2] {
            let len = u32::from_le_bytes(binary[..4].try_into().expect("4 bytes")) as usize;
            let text = std::str::from_utf8(&binary[4..4 + len]).expect("UTF-8");
            binary = &binary[4 + len..];
            let best = usize::from(probs[1] > probs[0]);
            assert!(
                text.ends_with(&format!(":{best}:{}", labels[best])),
                "{text}"
            );
        }
        assert!(binary.is_empty());
    }

    // Bad requests.
    for (params, needle) in [
        (json!({"classification": 0}), "classification"),
        (json!({"classification": "2"}), "classification"),
        (json!({"classification": -1}), "classification"),
    ] {
        let mut req = classifier_request(&rows[..1]);
        req["outputs"] = json!([{"name": "probabilities", "parameters": params}]);
        let (status, body) = s.post_json("/v2/models/breast_cancer/infer", &req).await;
        assert_error(status, &body, 400, &[needle]);
    }
    let bool_req = json!({
        "inputs": [
            {"name": "x_fp32", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]},
            {"name": "x_fp64", "shape": [1, 3], "datatype": "FP64", "data": [1.0, 2.0, 3.0]},
            {"name": "x_i32", "shape": [1, 3], "datatype": "INT32", "data": [1, 2, 3]},
            {"name": "x_i64", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]},
            {"name": "x_bool", "shape": [1, 3], "datatype": "BOOL", "data": [true, false, true]},
            {"name": "x_u8", "shape": [1, 3], "datatype": "UINT8", "data": [1, 2, 3]}
        ],
        "outputs": [{"name": "y_bool", "parameters": {"classification": 1}}]
    });
    let (status, body) = s.post_json("/v2/models/dtypes/infer", &bool_req).await;
    assert_error(status, &body, 400, &["y_bool", "BOOL", "classification"]);
    s.stop().await;
}

/// Errors from the URL itself are V2 error bodies too, and a long unknown
/// name is not echoed back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_errors_are_v2_errors() {
    let s = TestServer::start().await;
    for path in ["/v2/models/%ff", "/v2/models/%ff/versions/1/ready"] {
        let (status, body) = s.get_json(path).await;
        assert_error(status, &body, 400, &["UTF-8"]);
    }
    let (status, body) = s.post_json("/v2/models/%ff/infer", &one_row()).await;
    assert_error(status, &body, 400, &["UTF-8"]);
    let long = "a".repeat(60_000);
    let (status, body) = s
        .post_json(&format!("/v2/models/{long}/infer"), &one_row())
        .await;
    assert_error(status, &body, 404, &["unknown model", "60000 bytes"]);
    assert!(
        body.to_string().len() < 1_000,
        "{} bytes",
        body.to_string().len()
    );
    s.stop().await;
}

/// Responses are compressed as `Accept-Encoding` asks (gzip, else deflate)
/// when they are large enough to gain from it, binary ones included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_compressed_on_request() {
    use std::io::Read;
    let s = TestServer::start().await;
    let infer = "/v2/models/breast_cancer/infer";
    let rows = breast_cancer_features();
    // 1,024 rows: an answer of about 30 KB (compressed from 16 KiB up).
    let many: Vec<Vec<f64>> = rows.iter().cycle().take(1024).cloned().collect();
    let big = classifier_request(&many);
    let plain = {
        let (status, body) = s.post_json(infer, &big).await;
        assert_eq!(status, 200, "{body}");
        body
    };
    let send = |accept: &'static str, req: Value| {
        s.client
            .post(s.url(infer))
            .header("accept-encoding", accept)
            .json(&req)
            .send()
    };
    for (accept, expected) in [
        ("gzip", Some("gzip")),
        ("br, gzip;q=0.8", Some("gzip")),
        ("deflate", Some("deflate")),
        ("gzip;q=0, deflate", Some("deflate")),
        ("gzip;q=0", None),
        ("br", None),
    ] {
        let r = send(accept, big.clone()).await.expect("infer");
        assert_eq!(r.status(), 200);
        let encoding = r
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().expect("ASCII").to_owned());
        assert_eq!(encoding.as_deref(), expected, "{accept}");
        let bytes = r.bytes().await.expect("body");
        let mut text = Vec::new();
        match expected {
            Some("gzip") => {
                flate2::read::GzDecoder::new(&bytes[..])
                    .read_to_end(&mut text)
                    .expect("gzip");
            }
            Some(_) => {
                flate2::read::ZlibDecoder::new(&bytes[..])
                    .read_to_end(&mut text)
                    .expect("zlib");
            }
            None => text = bytes.to_vec(),
        }
        let body: Value = serde_json::from_slice(&text).expect("JSON");
        assert_eq!(body["outputs"], plain["outputs"], "{accept}");
    }
    // A 32-row answer (about 2 KB) is too small to gain from it.
    let r = send("gzip", classifier_request(&rows[..32]))
        .await
        .expect("infer");
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-encoding").is_none());
    s.stop().await;
}
