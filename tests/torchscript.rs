//! TorchScript beside ONNX: one server, one process, both engines.

mod support;

use serde_json::json;
use support::*;

/// Labels exact, probabilities within `tol`.
#[cfg(feature = "torchscript")]
fn assert_matches_expected(
    resp: &serde_json::Value,
    expected: &serde_json::Value,
    rows: &[usize],
    tol: f64,
) {
    let labels = i64_data(output(resp, "label"));
    let probs = f64_data(output(resp, "probabilities"));
    assert_eq!(labels.len(), rows.len());
    for (i, &row) in rows.iter().enumerate() {
        assert_eq!(
            labels[i],
            expected["label"][row].as_i64().unwrap(),
            "row {row}"
        );
        for k in 0..2 {
            let want = expected["probabilities"][row][k].as_f64().unwrap();
            let got = probs[i * 2 + k];
            assert!(
                close(got, want, tol),
                "row {row} class {k}: {got} vs {want}"
            );
        }
    }
}

#[cfg(feature = "torchscript")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onnx_champion_and_torchscript_model_answer_from_one_process() {
    // A second deployment whose champion is the TorchScript model, so both
    // engines are champions in the same process.
    let s = TestServer::start_with(
        "",
        "[deployments.cancer_mlp.champion]\nmodel = \"breast_cancer\"\nversion = 4\n",
    )
    .await;
    let features = breast_cancer_features();
    let all: Vec<usize> = (0..features.len()).collect();
    let body = classifier_request(&features);

    // The ONNX champion.
    let (status, resp) = s.post_json("/v2/models/breast_cancer/infer", &body).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["model_version"], "1");
    assert_matches_expected(&resp, &expected("breast_cancer", 1), &all, 1e-6);

    // The TorchScript model, through the repository path and through its deployment.
    for path in [
        "/v2/models/breast_cancer/versions/4/infer",
        "/v2/models/cancer_mlp/infer",
    ] {
        let (status, resp) = s.post_json(path, &body).await;
        assert_eq!(status, 200, "{path}: {resp}");
        assert_eq!(resp["model_name"], "breast_cancer");
        assert_eq!(resp["model_version"], "4");
        assert_matches_expected(&resp, &expected("breast_cancer", 4), &all, 1e-5);
    }

    // Row by row (new batch shapes after warm-up), interleaved with ONNX.
    for row in (0..features.len()).step_by(13) {
        let one = classifier_request(&features[row..=row]);
        let (status, resp) = s
            .post_json("/v2/models/breast_cancer/versions/4/infer", &one)
            .await;
        assert_eq!(status, 200, "{resp}");
        assert_matches_expected(&resp, &expected("breast_cancer", 4), &[row], 1e-5);
        let (status, resp) = s.post_json("/v2/models/breast_cancer/infer", &one).await;
        assert_eq!(status, 200, "{resp}");
        assert_matches_expected(&resp, &expected("breast_cancer", 1), &[row], 1e-6);
    }

    // Metadata comes from the model.toml declaration.
    let (status, meta) = s.get_json("/v2/models/breast_cancer/versions/4").await;
    assert_eq!(status, 200);
    assert_eq!(meta["platform"], "pytorch_torchscript");
    assert_eq!(
        meta["inputs"][0],
        json!({"name": "input", "datatype": "FP32", "shape": [-1, 30]})
    );
    assert_eq!(meta["outputs"][1]["name"], "probabilities");
    let (status, config) = s.get_json("/v2/models/cancer_mlp/config").await;
    assert_eq!(status, 200);
    assert_eq!(config["platform"], "pytorch_libtorch");
    s.stop().await;
}

#[cfg(feature = "torchscript")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torchscript_bad_input_gets_the_same_v2_errors_as_onnx() {
    let s = TestServer::start().await;
    let row: Vec<f64> = breast_cancer_features()[0].clone();
    let cases: Vec<(serde_json::Value, &[&str])> = vec![
        // wrong shape
        (
            json!({"inputs": [{"name": "input", "shape": [1, 29], "datatype": "FP32", "data": &row[..29]}]}),
            &["shape [1, 29]", "[-1, 30]"],
        ),
        // wrong datatype
        (
            json!({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP64", "data": row}]}),
            &["datatype FP64", "FP32"],
        ),
        // wrong name
        (
            json!({"inputs": [{"name": "features", "shape": [1, 30], "datatype": "FP32", "data": row}]}),
            &["unexpected input 'features'"],
        ),
        // unknown output
        (
            json!({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row}],
                   "outputs": [{"name": "score"}]}),
            &["unknown output 'score'"],
        ),
    ];
    for (body, needles) in &cases {
        let mut messages = Vec::new();
        for version in [1, 4] {
            let path = format!("/v2/models/breast_cancer/versions/{version}/infer");
            let (status, resp) = s.post_json(&path, body).await;
            messages.push(assert_error(status, &resp, 400, needles));
        }
        assert_eq!(
            messages[0], messages[1],
            "ONNX and TorchScript give the same error"
        );
    }
    // Still serving.
    let (status, resp) = s
        .post_json(
            "/v2/models/breast_cancer/versions/4/infer",
            &classifier_request(&[row]),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    s.stop().await;
}

/// A build without the `torchscript` feature keeps serving ONNX and reports
/// the TorchScript version unavailable, naming the feature.
#[cfg(not(feature = "torchscript"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_feature_a_torchscript_model_is_refused_with_the_reason() {
    let s = TestServer::start().await;
    let (status, index) = s.post_json("/v2/repository/index", &json!({})).await;
    assert_eq!(status, 200);
    let v4 = index
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "breast_cancer" && m["version"] == "4")
        .unwrap_or_else(|| panic!("v4 is not indexed: {index}"));
    assert_eq!(v4["state"], "UNAVAILABLE");
    assert!(
        v4["reason"]
            .as_str()
            .unwrap()
            .contains("`torchscript` cargo feature"),
        "{v4}"
    );
    let (status, resp) = s
        .post_json(
            "/v2/models/breast_cancer/versions/4/infer",
            &classifier_request(&breast_cancer_features()[..1]),
        )
        .await;
    assert_error(status, &resp, 503, &["torchscript"]);
    s.stop().await;
}
