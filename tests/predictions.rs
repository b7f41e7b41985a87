//! The real example models answer what Python onnxruntime answered
//! (`models/<name>/<v>/expected.json`), whole batch and row by row, and every
//! datatype survives the trip.

mod support;

use serde_json::{Value, json};
use support::{
    TestServer, breast_cancer_features, classifier_request, diabetes_features, expected, f64_data,
    i64_data, output,
};

/// Absolute tolerance on probabilities.
const PROB_TOL: f64 = 1e-6;
/// Relative tolerance on regression predictions.
const REG_TOL: f64 = 1e-4;

fn expected_labels(e: &Value) -> Vec<i64> {
    e["label"]
        .as_array()
        .expect("label array")
        .iter()
        .map(|l| l.as_i64().expect("integer label"))
        .collect()
}

fn expected_probabilities(e: &Value) -> Vec<[f64; 2]> {
    e["probabilities"]
        .as_array()
        .expect("probabilities array")
        .iter()
        .map(|p| {
            [
                p[0].as_f64().expect("probability"),
                p[1].as_f64().expect("probability"),
            ]
        })
        .collect()
}

fn assert_classifier_rows(
    resp: &Value,
    rows: &[usize],
    labels: &[i64],
    probabilities: &[[f64; 2]],
    what: &str,
) {
    let label = output(resp, "label");
    assert_eq!(label["datatype"], "INT64", "{what}");
    assert_eq!(label["shape"], json!([rows.len()]), "{what}");
    let got_labels = i64_data(label);
    let probs = output(resp, "probabilities");
    assert_eq!(probs["datatype"], "FP32", "{what}");
    assert_eq!(probs["shape"], json!([rows.len(), 2]), "{what}");
    let got_probs = f64_data(probs);
    assert_eq!(got_probs.len(), rows.len() * 2, "{what}");
    for (k, &i) in rows.iter().enumerate() {
        assert_eq!(
            got_labels[k], labels[i],
            "{what}: label of held-out row {i}"
        );
        for c in 0..2 {
            let (got, want) = (got_probs[k * 2 + c], probabilities[i][c]);
            assert!(
                (got - want).abs() <= PROB_TOL,
                "{what}: probability {c} of held-out row {i}: got {got}, expected {want}"
            );
        }
    }
}

async fn check_breast_cancer_version(s: &TestServer, version: u32) {
    let features = breast_cancer_features();
    let e = expected("breast_cancer", version);
    let labels = expected_labels(&e);
    let probabilities = expected_probabilities(&e);
    assert_eq!(labels.len(), features.len());
    assert_eq!(probabilities.len(), features.len());
    let path = format!("/v2/models/breast_cancer/versions/{version}/infer");

    // The whole held-out set in one batch.
    let (status, resp) = s.post_json(&path, &classifier_request(&features)).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["model_version"], version.to_string());
    let all: Vec<usize> = (0..features.len()).collect();
    assert_classifier_rows(
        &resp,
        &all,
        &labels,
        &probabilities,
        &format!("v{version} batch"),
    );

    // Every 10th row on its own (nested data), and the last row.
    let mut sample: Vec<usize> = (0..features.len()).step_by(10).collect();
    sample.push(features.len() - 1);
    for &i in &sample {
        let (status, resp) = s
            .post_json(&path, &classifier_request(&features[i..=i]))
            .await;
        assert_eq!(status, 200, "{resp}");
        assert_classifier_rows(
            &resp,
            &[0],
            &labels[i..=i],
            &probabilities[i..=i],
            &format!("v{version} row {i}"),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breast_cancer_versions_match_onnxruntime() {
    let s = TestServer::start().await;
    for version in [1, 2, 3] {
        check_breast_cancer_version(&s, version).await;
    }
    s.stop().await;
}

/// Concurrent requests of different sizes on one worker thread (where the
/// waiting ones are batched together): every response holds exactly its own
/// rows' predictions, for the deployment and for a repository model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_batched_together_each_get_their_own_rows() {
    let s = std::sync::Arc::new(
        TestServer::start_with(
            "",
            "[models.breast_cancer]\nexecution = \"pool\"\ninstances = 1\n",
        )
        .await,
    );
    s.wait_all_loaded().await;
    let features = breast_cancer_features();
    let mut tasks = Vec::new();
    for version in [1, 2] {
        let mut at = 0;
        for n in [1usize, 3, 2, 4].into_iter().cycle() {
            if at + n > features.len() {
                break;
            }
            let rows: Vec<usize> = (at..at + n).collect();
            let body = classifier_request(&features[at..at + n]);
            at += n;
            let s = std::sync::Arc::clone(&s);
            let path = if version == 1 {
                "/v2/models/breast_cancer/infer".to_owned()
            } else {
                format!("/v2/models/breast_cancer/versions/{version}/infer")
            };
            tasks.push(tokio::spawn(async move {
                let (status, resp) = s.post_json(&path, &body).await;
                (version, rows, status, resp)
            }));
        }
    }
    let mut sent = std::collections::BTreeMap::<u32, (u64, u64)>::new();
    for t in tasks {
        let (version, rows, status, resp) = t.await.expect("the request task completes");
        let e = sent.entry(version).or_default();
        e.0 += 1;
        e.1 += rows.len() as u64;
        assert_eq!(status, 200, "{resp}");
        assert_eq!(resp["model_version"], version.to_string(), "{resp}");
        let e = expected("breast_cancer", version);
        let local: Vec<usize> = (0..rows.len()).collect();
        let labels: Vec<i64> = rows.iter().map(|&i| expected_labels(&e)[i]).collect();
        let probabilities: Vec<[f64; 2]> = rows
            .iter()
            .map(|&i| expected_probabilities(&e)[i])
            .collect();
        assert_classifier_rows(
            &resp,
            &local,
            &labels,
            &probabilities,
            &format!("v{version} rows {rows:?}"),
        );
    }
    // Triton statistics: every row is an inference; a batch is one execution.
    for (version, (requests, rows)) in sent {
        let (status, stats) = s
            .get_json(&format!(
                "/v2/models/breast_cancer/versions/{version}/stats"
            ))
            .await;
        assert_eq!(status, 200, "{stats}");
        let m = &stats["model_stats"][0];
        assert_eq!(m["inference_count"], rows, "{m}");
        let executions = m["execution_count"].as_u64().expect("execution_count");
        assert!((1..=requests).contains(&executions), "{m}");
        assert_eq!(m["inference_stats"]["success"]["count"], requests, "{m}");
        // Per batch size: every execution once, and its rows add up to
        // every row inferred.
        let batches = m["batch_stats"].as_array().expect("batch_stats");
        let count = |b: &serde_json::Value| b["compute_infer"]["count"].as_u64().unwrap();
        let size = |b: &serde_json::Value| b["batch_size"].as_u64().unwrap();
        assert_eq!(batches.iter().map(count).sum::<u64>(), executions, "{m}");
        assert_eq!(
            batches.iter().map(|b| size(b) * count(b)).sum::<u64>(),
            rows,
            "{m}"
        );
        assert!(batches.windows(2).all(|w| size(&w[0]) < size(&w[1])), "{m}");
        for b in batches {
            for k in ["compute_input", "compute_infer", "compute_output"] {
                assert_eq!(b[k]["count"], b["compute_infer"]["count"], "{b}");
            }
        }
    }
    // The batch-size histogram is exported for every runner that batches.
    let metrics = s.metrics_text().await;
    assert!(
        metrics.contains("contender_inference_batch_requests"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_answers_with_its_champion() {
    let s = TestServer::start().await;
    let features = breast_cancer_features();
    let e = expected("breast_cancer", 1);
    let (status, resp) = s
        .post_json(
            "/v2/models/breast_cancer/infer",
            &classifier_request(&features),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["model_name"], "breast_cancer");
    assert_eq!(resp["model_version"], "1");
    let all: Vec<usize> = (0..features.len()).collect();
    assert_classifier_rows(
        &resp,
        &all,
        &expected_labels(&e),
        &expected_probabilities(&e),
        "deployment",
    );

    // Flat data decodes the same as nested.
    let flat: Vec<f64> = features[..3].iter().flatten().copied().collect();
    let req =
        json!({"inputs": [{"name": "input", "shape": [3, 30], "datatype": "FP32", "data": flat}]});
    let (status, resp) = s.post_json("/v2/models/breast_cancer/infer", &req).await;
    assert_eq!(status, 200, "{resp}");
    assert_classifier_rows(
        &resp,
        &[0, 1, 2],
        &expected_labels(&e)[..3],
        &expected_probabilities(&e)[..3],
        "flat",
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_outputs_are_the_only_outputs() {
    let s = TestServer::start().await;
    let features = breast_cancer_features();
    let e = expected("breast_cancer", 1);

    let mut req = classifier_request(&features[..5]);
    req["outputs"] = json!([{"name": "probabilities"}]);
    let (status, resp) = s.post_json("/v2/models/breast_cancer/infer", &req).await;
    assert_eq!(status, 200, "{resp}");
    let outputs = resp["outputs"].as_array().expect("outputs");
    assert_eq!(outputs.len(), 1, "{resp}");
    assert_eq!(outputs[0]["name"], "probabilities");
    let got = f64_data(&outputs[0]);
    for (i, want) in expected_probabilities(&e)[..5].iter().enumerate() {
        assert!((got[i * 2] - want[0]).abs() <= PROB_TOL);
        assert!((got[i * 2 + 1] - want[1]).abs() <= PROB_TOL);
    }

    req["outputs"] = json!([{"name": "label"}]);
    let (status, resp) = s.post_json("/v2/models/breast_cancer/infer", &req).await;
    assert_eq!(status, 200, "{resp}");
    let outputs = resp["outputs"].as_array().expect("outputs");
    assert_eq!(outputs.len(), 1, "{resp}");
    assert_eq!(i64_data(&outputs[0]), expected_labels(&e)[..5].to_vec());

    // Both, in the order asked.
    req["outputs"] = json!([{"name": "probabilities"}, {"name": "label"}]);
    let (status, resp) = s.post_json("/v2/models/breast_cancer/infer", &req).await;
    assert_eq!(status, 200, "{resp}");
    let names: Vec<&Value> = resp["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .map(|o| &o["name"])
        .collect();
    assert_eq!(names, [&json!("probabilities"), &json!("label")]);

    // An empty list means every output.
    req["outputs"] = json!([]);
    let (status, resp) = s.post_json("/v2/models/breast_cancer/infer", &req).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["outputs"].as_array().map(Vec::len), Some(2), "{resp}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diabetes_matches_onnxruntime() {
    let s = TestServer::start().await;
    let features = diabetes_features();
    let e = expected("diabetes", 1);
    let want: Vec<f64> = e["prediction"]
        .as_array()
        .expect("prediction array")
        .iter()
        .map(|p| p[0].as_f64().expect("number"))
        .collect();
    assert_eq!(want.len(), features.len());
    let check = |got: f64, want: f64, what: &str| {
        assert!(
            (got - want).abs() <= REG_TOL * want.abs().max(1.0),
            "{what}: got {got}, expected {want}"
        );
    };

    let (status, resp) = s
        .post_json("/v2/models/diabetes/infer", &classifier_request(&features))
        .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["model_name"], "diabetes");
    let pred = output(&resp, "prediction");
    assert_eq!(pred["datatype"], "FP32");
    assert_eq!(pred["shape"], json!([features.len(), 1]));
    let got = f64_data(pred);
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        check(g, w, &format!("batch row {i}"));
    }

    for i in (0..features.len()).step_by(10) {
        let (status, resp) = s
            .post_json(
                "/v2/models/diabetes/versions/1/infer",
                &classifier_request(&features[i..=i]),
            )
            .await;
        assert_eq!(status, 200, "{resp}");
        let got = f64_data(output(&resp, "prediction"));
        assert_eq!(got.len(), 1);
        check(got[0], want[i], &format!("row {i}"));
    }
    s.stop().await;
}

/// One dtypes-model case: input name, datatype, input rows, expected output rows.
struct DtypeCase {
    input: &'static str,
    output: &'static str,
    datatype: &'static str,
    x: Value,
    y: Value,
}

fn dtype_cases() -> Vec<DtypeCase> {
    vec![
        DtypeCase {
            input: "x_fp32",
            output: "y_fp32",
            datatype: "FP32",
            x: json!([[1.5, -2.0, 0.0], [0.25, 1e6, -3.75]]),
            y: json!([[3.0, -4.0, 0.0], [0.5, 2e6, -7.5]]),
        },
        DtypeCase {
            input: "x_fp64",
            output: "y_fp64",
            datatype: "FP64",
            x: json!([[0.1, -1.0, 1e300], [2.5, -0.5, 123456789.125]]),
            y: json!([[0.1 + 1.0, 0.0, 1e300], [3.5, 0.5, 123456790.125]]),
        },
        DtypeCase {
            input: "x_i32",
            output: "y_i32",
            datatype: "INT32",
            x: json!([[1, -2, 0], [700000000, -700000000, 7]]),
            y: json!([[3, -6, 0], [2100000000, -2100000000, 21]]),
        },
        DtypeCase {
            input: "x_i64",
            output: "y_i64",
            datatype: "INT64",
            // Beyond 2^53: must not pass through a double.
            x: json!([
                [0, 9007199254740993_i64, -9007199254740993_i64],
                [1, i64::MAX, -5]
            ]),
            y: json!([
                [-1, 9007199254740992_i64, -9007199254740994_i64],
                [0, i64::MAX - 1, -6]
            ]),
        },
        DtypeCase {
            input: "x_bool",
            output: "y_bool",
            datatype: "BOOL",
            x: json!([[true, false, true], [false, false, true]]),
            y: json!([[false, true, false], [true, true, false]]),
        },
        DtypeCase {
            input: "x_u8",
            output: "y_u8",
            datatype: "UINT8",
            x: json!([[0, 1, 255], [128, 7, 42]]),
            y: json!([[0, 1, 255], [128, 7, 42]]),
        },
    ]
}

fn flatten(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items.iter().flat_map(flatten).collect(),
        other => vec![other.clone()],
    }
}

fn dtypes_request(cases: &[DtypeCase], flat: bool) -> Value {
    let inputs: Vec<Value> = cases
        .iter()
        .map(|c| {
            let data = if flat {
                json!(flatten(&c.x))
            } else {
                c.x.clone()
            };
            json!({"name": c.input, "shape": [2, 3], "datatype": c.datatype, "data": data})
        })
        .collect();
    json!({ "inputs": inputs })
}

fn assert_dtype_outputs(resp: &Value, cases: &[DtypeCase], what: &str) {
    for c in cases {
        let t = output(resp, c.output);
        assert_eq!(t["datatype"], c.datatype, "{what}: {}", c.output);
        assert_eq!(t["shape"], json!([2, 3]), "{what}: {}", c.output);
        let got = t["data"].as_array().expect("data array");
        let want = flatten(&c.y);
        assert_eq!(got.len(), want.len(), "{what}: {}", c.output);
        for (g, w) in got.iter().zip(&want) {
            let same = match c.datatype {
                // Compare as f32 (the model computes in f32).
                "FP32" => g.as_f64().map(|x| x as f32) == w.as_f64().map(|x| x as f32),
                "FP64" => g.as_f64() == w.as_f64(),
                _ => g == w,
            };
            assert!(
                same,
                "{what}: {} got {:?}, expected {:?}",
                c.output,
                t["data"],
                flatten(&c.y)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtypes_round_trip_every_datatype() {
    let s = TestServer::start().await;
    let cases = dtype_cases();
    for flat in [false, true] {
        let what = if flat { "flat" } else { "nested" };
        let (status, resp) = s
            .post_json("/v2/models/dtypes/infer", &dtypes_request(&cases, flat))
            .await;
        assert_eq!(status, 200, "{what}: {resp}");
        assert_eq!(resp["model_name"], "dtypes");
        assert_eq!(resp["model_version"], "1");
        assert_eq!(resp["outputs"].as_array().map(Vec::len), Some(6), "{resp}");
        assert_dtype_outputs(&resp, &cases, what);
    }

    // Integral floats are accepted for integer inputs; fractions are not.
    let mut req = dtypes_request(&cases, true);
    req["inputs"][2]["data"] = json!([1.0, -2.0, 0.0, 700000000.0, -700000000.0, 7.0]);
    let (status, resp) = s.post_json("/v2/models/dtypes/infer", &req).await;
    assert_eq!(status, 200, "{resp}");
    assert_dtype_outputs(&resp, &cases, "integral floats");
    req["inputs"][2]["data"] = json!([1.5, -2, 0, 1, 2, 3]);
    let (status, resp) = s.post_json("/v2/models/dtypes/infer", &req).await;
    support::assert_error(status, &resp, 400, &["x_i32"]);
    // Out of range for UINT8.
    let mut req = dtypes_request(&cases, true);
    req["inputs"][5]["data"] = json!([0, 1, 256, 3, 4, 5]);
    let (status, resp) = s.post_json("/v2/models/dtypes/infer", &req).await;
    support::assert_error(status, &resp, 400, &["x_u8"]);
    // BOOL takes true/false only.
    let mut req = dtypes_request(&cases, true);
    req["inputs"][4]["data"] = json!([1, 0, 1, 0, 0, 1]);
    let (status, resp) = s.post_json("/v2/models/dtypes/infer", &req).await;
    support::assert_error(status, &resp, 400, &["x_bool"]);
    // Rows must agree across inputs.
    let mut req = dtypes_request(&cases, true);
    req["inputs"][0]["shape"] = json!([1, 3]);
    req["inputs"][0]["data"] = json!([1, 2, 3]);
    let (status, resp) = s.post_json("/v2/models/dtypes/infer", &req).await;
    support::assert_error(status, &resp, 400, &["rows"]);
    s.stop().await;
}
