//! Feedback on a real server: labels for the held-out sample give each
//! model the accuracy its expected outputs give, and every documented answer
//! (accepted, duplicate, conflict, unknown, expired, malformed, batches,
//! class names, regression labels, rows of batch requests) is what the
//! feedback module documents.

mod support;

use serde_json::{Value, json};
use support::{
    TestServer, assert_error, breast_cancer_features, breast_cancer_labels, classifier_request,
    diabetes_features, diabetes_labels, eval_of, expected_class_probabilities, expected_classes,
    expected_diabetes, f64_data, logged, output,
};

/// Shadows v2 and v3 of breast_cancer, never dropping or timing out.
const SHADOWS: &str = r#"
[[deployments.breast_cancer.challengers]]
model = "breast_cancer"
version = 2
mode = "shadow"
queue_capacity = 1024
timeout_ms = 60000

[[deployments.breast_cancer.challengers]]
model = "breast_cancer"
version = 3
mode = "shadow"
queue_capacity = 1024
timeout_ms = 60000
"#;

/// Classification metrics computed here from `expected.json` and the
/// held-out labels, as the metrics module defines them.
struct Reference {
    accuracy: f64,
    confusion: Vec<Vec<u64>>,
    precision: f64,
    recall: f64,
    f1: f64,
    log_loss: f64,
    brier: f64,
}

fn reference(predicted: &[i64], probabilities: &[Vec<f64>], truth: &[i64]) -> Reference {
    let n = truth.len();
    let mut confusion = vec![vec![0u64; 2]; 2];
    for (p, t) in predicted.iter().zip(truth) {
        confusion[*t as usize][*p as usize] += 1;
    }
    let correct = predicted.iter().zip(truth).filter(|(p, t)| p == t).count();
    let (mut precision, mut recall, mut f1) = (0.0, 0.0, 0.0);
    for (k, row) in confusion.iter().enumerate() {
        let tp = row[k] as f64;
        let truth_k = row.iter().sum::<u64>() as f64;
        let predicted_k = confusion.iter().map(|r| r[k]).sum::<u64>() as f64;
        let ratio = |a: f64, b: f64| if b == 0.0 { 0.0 } else { a / b };
        precision += ratio(tp, predicted_k);
        recall += ratio(tp, truth_k);
        f1 += ratio(2.0 * tp, truth_k + predicted_k);
    }
    let log_loss = probabilities
        .iter()
        .zip(truth)
        .map(|(p, &t)| -p[t as usize].clamp(1e-15, 1.0 - 1e-15).ln())
        .sum::<f64>()
        / n as f64;
    let brier = probabilities
        .iter()
        .zip(truth)
        .map(|(p, &t)| (p[1] - if t == 1 { 1.0 } else { 0.0 }).powi(2))
        .sum::<f64>()
        / n as f64;
    Reference {
        accuracy: correct as f64 / n as f64,
        confusion,
        precision: precision / 2.0,
        recall: recall / 2.0,
        f1: f1 / 2.0,
        log_loss,
        brier,
    }
}

fn num(v: &Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

/// The window's metrics equal the cumulative ones when the window holds
/// every labelled row: counts exactly, float metrics to within rounding (the
/// window sums exactly, the cumulative state sums as rows arrive).
fn assert_window_is_everything(m: &Value, what: &str) {
    let (w, c) = (&m["window"], &m["cumulative"]);
    let keys: Vec<&String> = c.as_object().expect("metrics object").keys().collect();
    assert_eq!(
        w.as_object()
            .expect("metrics object")
            .keys()
            .collect::<Vec<_>>(),
        keys,
        "{what}"
    );
    for k in keys {
        match (&w[k], &c[k]) {
            (Value::Number(a), Value::Number(b)) if a.is_f64() || b.is_f64() => {
                let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
                assert_close(
                    a,
                    b,
                    1e-12 * b.abs().max(1e-300),
                    &format!("{what} window {k}"),
                );
            }
            (a, b) => assert_eq!(a, b, "{what} window {k}"),
        }
    }
}

fn assert_close(got: f64, want: f64, tol: f64, what: &str) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got}, expected {want} (± {tol})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_out_labels_give_each_model_its_expected_accuracy() {
    let ts = TestServer::start_with("", SHADOWS).await;
    let rows = breast_cancer_features();
    let truth = breast_cancer_labels();
    let n = rows.len() as u64;

    let answers = ts.infer_rows("breast_cancer", &rows).await;
    let d = ts
        .wait_deployment(
            "breast_cancer",
            "every model's predictions are logged",
            |d| {
                [1, 2, 3]
                    .iter()
                    .all(|&v| logged(d, "breast_cancer", v) == n)
                    && [2, 3].iter().all(|&v| {
                        eval_of(d, "breast_cancer", v)
                            .is_some_and(|m| m["compared_with_champion"].as_u64() == Some(n))
                    })
            },
        )
        .await;

    // Before any label: agreement with the champion, and no quality metric.
    let champion = expected_classes(1);
    for v in [2u32, 3] {
        let theirs = expected_classes(v);
        let agree = theirs.iter().zip(&champion).filter(|(a, b)| a == b).count();
        let m = eval_of(&d, "breast_cancer", u64::from(v)).expect("evaluated");
        assert_eq!(
            num(&m["agreement_with_champion"], "agreement"),
            agree as f64 / n as f64,
            "v{v}: {m}"
        );
        assert!(m["cumulative"]["accuracy"].is_null(), "{m}");
        assert_eq!(m["labelled"], 0, "{m}");
    }
    let ev = &d["evaluation"];
    assert_eq!(ev["rows_served"], n, "{ev}");
    assert_eq!(ev["rows_labelled"], 0, "{ev}");
    assert_eq!(ev["label_coverage"], 0.0, "{ev}");
    let champ = eval_of(&d, "breast_cancer", 1).expect("champion evaluated");
    assert!(champ["agreement_with_champion"].is_null(), "{champ}");

    // The whole held-out sample's labels, in one batch.
    let labels: Vec<Value> = answers
        .iter()
        .zip(&truth)
        .map(|(a, t)| json!({ "id": a.id, "label": t }))
        .collect();
    let (status, body) = ts
        .feedback("breast_cancer", &json!({ "labels": labels }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["summary"]["accepted"], n, "{}", body["summary"]);
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len() as u64, n);
    for (r, a) in results.iter().zip(&answers) {
        assert_eq!(r["id"], a.id.as_str(), "{r}");
        assert_eq!(r["row"], 0, "{r}");
        assert_eq!(r["status"], "accepted", "{r}");
    }

    let d = ts.deployment("breast_cancer").await;
    let ev = &d["evaluation"];
    assert_eq!(ev["rows_labelled"], n, "{ev}");
    assert_eq!(ev["label_coverage"], 1.0, "{ev}");
    for v in [1u32, 2, 3] {
        let want = reference(
            &expected_classes(v),
            &expected_class_probabilities(v),
            &truth,
        );
        let m = eval_of(&d, "breast_cancer", u64::from(v)).expect("evaluated");
        let c = &m["cumulative"];
        let what = format!("breast_cancer@{v}");
        assert_eq!(m["labelled"], n, "{what}: {m}");
        assert_eq!(c["labelled"], n, "{what}: {m}");
        assert_eq!(
            num(&c["accuracy"], "accuracy"),
            want.accuracy,
            "{what} accuracy"
        );
        assert_eq!(c["confusion_matrix"], json!(want.confusion), "{what}");
        assert_close(
            num(&c["precision_macro"], "precision"),
            want.precision,
            1e-12,
            &format!("{what} precision"),
        );
        assert_close(
            num(&c["recall_macro"], "recall"),
            want.recall,
            1e-12,
            &format!("{what} recall"),
        );
        assert_close(
            num(&c["f1_macro"], "f1"),
            want.f1,
            1e-12,
            &format!("{what} F1"),
        );
        // Probabilities are the gateway's own float32 outputs; expected.json
        // has Python onnxruntime's, equal to within 1e-6.
        assert_close(
            num(&c["log_loss"], "log loss"),
            want.log_loss,
            1e-5,
            &format!("{what} log loss"),
        );
        assert_close(
            num(&c["brier"], "brier"),
            want.brier,
            1e-5,
            &format!("{what} Brier"),
        );
        // Fewer labels than the window: the window is everything.
        assert_window_is_everything(m, &what);
    }
    // The weak baseline (v3) trails: the numbers are distinct per model.
    let acc = |v: u64| {
        num(
            &eval_of(&d, "breast_cancer", v).unwrap()["cumulative"]["accuracy"],
            "a",
        )
    };
    assert!(acc(3) < acc(1), "v3 {} vs v1 {}", acc(3), acc(1));
    ts.stop().await;
}

/// A canary answering all live traffic: the champion sees mirrored copies,
/// logged after the canary's answers.
const CANARY: &str = r#"
[[deployments.breast_cancer.challengers]]
model = "breast_cancer"
version = 2
mode = "canary"
fraction = 1.0
queue_capacity = 1024
timeout_ms = 60000
"#;

/// Labels posted as soon as each answer comes back, before the shadows'
/// answers (or, with a canary answering, the champion's mirrored copy) are
/// logged, still join every model's prediction: each model's metrics are
/// those of its expected outputs, each comparison has every pair once, and
/// a restart on the same data gives the same evaluation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_posted_before_the_challengers_answer_join_them_later() {
    let rows = breast_cancer_features();
    let truth = breast_cancer_labels();
    let n = rows.len() as u64;
    for (extra, versions) in [(SHADOWS, &[1u32, 2, 3][..]), (CANARY, &[1u32, 2][..])] {
        let config = support::test_config("", extra);
        let mut ts = TestServer::start_config(config.clone()).await;
        for (row, label) in rows.iter().zip(&truth) {
            let a = ts
                .infer_ok(
                    "breast_cancer",
                    &classifier_request(std::slice::from_ref(row)),
                    None,
                )
                .await;
            let (status, body) = ts
                .feedback("breast_cancer", &json!({"id": a.id, "label": label}))
                .await;
            assert_eq!(
                (status.as_u16(), &body["status"]),
                (200, &json!("accepted")),
                "{body}"
            );
        }
        // Once every prediction is logged, every label has joined it.
        let d = ts
            .wait_deployment("breast_cancer", "every prediction is logged", |d| {
                versions
                    .iter()
                    .all(|&v| logged(d, "breast_cancer", u64::from(v)) == n)
            })
            .await;
        let ev = &d["evaluation"];
        assert_eq!(ev["rows_labelled"], n, "{ev}");
        for &v in versions {
            let m = eval_of(&d, "breast_cancer", u64::from(v)).expect("evaluated");
            let expected = expected_classes(v);
            let right = expected.iter().zip(&truth).filter(|(p, t)| p == t).count();
            assert_eq!(m["labelled"], n, "v{v}: {m}");
            assert_eq!(
                m["cumulative"]["accuracy"].as_f64(),
                Some(right as f64 / n as f64),
                "v{v}: {m}"
            );
        }
        let comparisons = ev["comparisons"].as_array().expect("comparisons");
        assert_eq!(comparisons.len(), versions.len() - 1, "{ev}");
        for c in comparisons {
            assert_eq!(c["pairs"], n, "{c}");
        }
        // Restarted on the same data: the same evaluation.
        let dir = ts
            .data_dir
            .take()
            .expect("the harness made the data directory");
        ts.stop().await;
        let mut again = config;
        again.store.data_dir = dir.path().to_path_buf();
        let ts = TestServer::start_in(again).await;
        let after = ts.deployment("breast_cancer").await;
        assert_eq!(after["evaluation"], d["evaluation"]);
        ts.stop().await;
    }
}

/// An FP32 request with a NaN feature, in the binary tensor extension (JSON
/// numbers cannot be NaN): the model's NaN probabilities are logged, the
/// label joins them, and the row counts with the worst clipped log loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nan_prediction_is_logged_labelled_and_counted() {
    let ts = TestServer::start().await;
    let mut row = breast_cancer_features()[0].clone();
    row[3] = f64::NAN;
    let payload: Vec<u8> = row.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect();
    let header = json!({
        "id": "order-42",
        "inputs": [{
            "name": "input", "shape": [1, 30], "datatype": "FP32",
            "parameters": {"binary_data_size": payload.len()},
        }],
        "parameters": {"binary_data_output": true},
    });
    let mut body = serde_json::to_vec(&header).expect("the header serialises");
    let json_len = body.len();
    body.extend_from_slice(&payload);
    let r = ts
        .client
        .post(ts.url("/v2/models/breast_cancer/infer"))
        .header("content-type", "application/octet-stream")
        .header("Inference-Header-Content-Length", json_len.to_string())
        .body(body)
        .send()
        .await
        .expect("the request is sent");
    assert_eq!(r.status(), 200);
    let len: usize = r.headers()["Inference-Header-Content-Length"]
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("a length");
    let bytes = r.bytes().await.expect("the body");
    let answer: Value = serde_json::from_slice(&bytes[..len]).expect("a JSON header");
    assert_eq!(answer["id"], "order-42", "{answer}");
    // The probabilities the model answered are NaN.
    let probabilities = answer["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .position(|o| o["name"] == "probabilities")
        .expect("probabilities");
    let skip: usize = answer["outputs"].as_array().unwrap()[..probabilities]
        .iter()
        .map(|o| o["parameters"]["binary_data_size"].as_u64().unwrap() as usize)
        .sum();
    let p = &bytes[len + skip..len + skip + 8];
    let p: Vec<f32> = p
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert!(p.iter().all(|x| x.is_nan()), "{p:?}");

    ts.wait_deployment("breast_cancer", "the prediction is logged", |d| {
        logged(d, "breast_cancer", 1) == 1
    })
    .await;
    let (status, body) = ts
        .feedback("breast_cancer", &json!({"id": "order-42", "label": 1}))
        .await;
    assert_eq!(
        (status.as_u16(), &body["status"]),
        (200, &json!("accepted")),
        "{body}"
    );
    let d = ts.deployment("breast_cancer").await;
    let c = &eval_of(&d, "breast_cancer", 1).expect("evaluated")["cumulative"];
    assert_eq!(c["labelled"], 1, "{c}");
    assert_eq!(c["non_finite"], 1, "{c}");
    assert_close(
        num(&c["log_loss"], "log loss"),
        -(1e-15f64.ln()),
        1e-9,
        "log loss",
    );
    assert_eq!(num(&c["brier"], "brier"), 1.0, "{c}");
    ts.stop().await;
}

/// A request id contender could have issued (UUID v7) in September 2020.
const OLD_UUID_V7: &str = "0174876e-8000-7000-8000-000000000000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_gets_the_documented_answers() {
    let ts = TestServer::start().await;
    let rows = breast_cancer_features();
    let truth = breast_cancer_labels();

    // Six single-row requests and one batch request of five rows.
    let single = ts.infer_rows("breast_cancer", &rows[..6]).await;
    let batch = ts
        .infer_ok("breast_cancer", &classifier_request(&rows[10..15]), None)
        .await;
    ts.wait_deployment("breast_cancer", "predictions logged", |d| {
        logged(d, "breast_cancer", 1) == 11
    })
    .await;
    let id = |i: usize| single[i].id.clone();
    let evaluation = || async { ts.deployment("breast_cancer").await["evaluation"].clone() };

    // Accepted, then the same label again: a duplicate, counted once.
    let (status, body) = ts
        .feedback("breast_cancer", &json!({"id": id(0), "label": truth[0]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "accepted", "{body}");
    assert_eq!(body["id"], id(0).as_str());
    assert_eq!(body["row"], 0);
    let after_one = evaluation().await;
    assert_eq!(after_one["rows_labelled"], 1, "{after_one}");
    let (status, body) = ts
        .feedback(
            "breast_cancer",
            &json!({"id": id(0), "label": truth[0], "row": 0}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "duplicate", "{body}");
    assert_eq!(evaluation().await, after_one, "a duplicate changes nothing");

    // A different label for a labelled id: 409, nothing changes.
    let (status, body) = ts
        .feedback(
            "breast_cancer",
            &json!({"id": id(0), "label": 1 - truth[0]}),
        )
        .await;
    assert_error(status, &body, 409, &[&id(0)]);
    assert_eq!(evaluation().await, after_one, "a conflict changes nothing");

    // Unknown ids and rows: 404; ids from another deployment are unknown here.
    let (status, body) = ts
        .feedback("breast_cancer", &json!({"id": "never-issued", "label": 1}))
        .await;
    assert_error(status, &body, 404, &["never-issued"]);
    let (status, body) = ts
        .feedback("breast_cancer", &json!({"id": id(1), "label": 1, "row": 1}))
        .await;
    assert_error(status, &body, 404, &[&id(1)]);
    let (status, body) = ts
        .feedback("diabetes", &json!({"id": id(1), "label": 100.0}))
        .await;
    assert_error(status, &body, 404, &[&id(1)]);
    // An id contender issued long ago (past the retention window): 410.
    let (status, body) = ts
        .feedback("breast_cancer", &json!({"id": OLD_UUID_V7, "label": 1}))
        .await;
    assert_error(status, &body, 410, &[OLD_UUID_V7]);

    // Malformed feedback: 400, nothing changes.
    let r = ts
        .post_raw("/v2/models/breast_cancer/feedback", "this is not JSON")
        .await;
    let (status, body) = support::json_of(r).await;
    assert_error(status, &body, 400, &["malformed"]);
    let malformed: &[(Value, &[&str])] = &[
        (json!({"label": 1}), &["id"]),
        (json!({"id": id(1)}), &["label"]),
        (json!({"id": id(1), "label": null}), &["label"]),
        (json!({"id": "", "label": 1}), &["id"]),
        (json!({"id": 7, "label": 1}), &["id"]),
        (json!({"id": id(1), "label": "cat"}), &["cat"]),
        (json!({"id": id(1), "label": 0.5}), &["0.5"]),
        (json!({"id": id(1), "label": -1}), &["-1"]),
        (json!({"id": id(1), "label": [1]}), &["label"]),
        (json!({"id": id(1), "label": 5}), &["5"]),
        (
            json!({"id": id(1), "label": 1, "colour": "red"}),
            &["colour"],
        ),
        (json!({"id": id(1), "label": 1, "row": -1}), &["row"]),
        (json!({"id": id(1), "label": 1, "row": "first"}), &["row"]),
        (json!([]), &["no labels"]),
        (json!({"labels": "all of them"}), &["labels"]),
        (json!(42), &[]),
    ];
    for (body, needles) in malformed {
        let (status, answer) = ts.feedback("breast_cancer", body).await;
        assert_error(status, &answer, 400, needles);
        let now = evaluation().await;
        assert_eq!(now, after_one, "after posting {body}");
    }

    // Class names are labels too.
    let (status, body) = ts
        .feedback("breast_cancer", &json!({"id": id(1), "label": "benign"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "accepted", "{body}");
    let (status, body) = ts
        .feedback("breast_cancer", &json!({"id": id(1), "label": 1}))
        .await;
    assert_eq!(
        (status.as_u16(), body["status"].clone()),
        (200, json!("duplicate"))
    );
    let (status, body) = ts
        .feedback("breast_cancer", &json!({"id": id(1), "label": "malignant"}))
        .await;
    assert_error(status, &body, 409, &[]);

    // A batch with an item that is not a {"id", "label"} object is refused
    // whole: 400 naming the item, nothing stored (not even its good items).
    let before = evaluation().await;
    let structural: &[(Value, &str)] = &[
        (json!([1, 2]), "labels[0]"),
        (json!([[{"id": id(4), "label": 1}]]), "labels[0]"),
        (
            json!([{"id": id(4), "label": 1}, {"label": 1}]),
            "labels[1]",
        ),
        (
            json!({"labels": [{"id": id(4), "label": 1}, {"id": id(5)}]}),
            "labels[1]",
        ),
        (
            json!([{"id": id(4), "label": 1}, {"id": id(5), "label": 1, "row": -1}]),
            "labels[1]",
        ),
        (
            json!([{"id": id(4), "label": 1}, {"id": id(5), "label": 1, "extra": 0}]),
            "labels[1]",
        ),
    ];
    for (body, needle) in structural {
        let (status, answer) = ts.feedback("breast_cancer", body).await;
        assert_error(status, &answer, 400, &[needle, "nothing was stored"]);
        assert_eq!(evaluation().await, before, "after posting {body}");
    }

    // A batch of every kind: 200, one result per item, in order, and a summary.
    let mut items = vec![
        json!({"id": id(2), "label": truth[2]}),     // accepted
        json!({"id": id(0), "label": truth[0]}),     // duplicate
        json!({"id": id(0), "label": 1 - truth[0]}), // conflict
        json!({"id": "never-issued", "label": 0}),   // unknown_id
        json!({"id": id(3), "label": "cat"}),        // invalid: not a class
        json!({"id": OLD_UUID_V7, "label": 0}),      // expired
        json!({"id": batch.id, "label": truth[10], "row": 7}), // unknown_id: no row 7
    ];
    // The rows of the batch request, addressed with `row`.
    for r in 0..5 {
        items.push(json!({"id": batch.id, "label": truth[10 + r], "row": r}));
    }
    let (status, body) = ts.feedback("breast_cancer", &json!(items)).await;
    assert_eq!(status, 200, "{body}");
    let statuses: Vec<&str> = body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_str().expect("a status"))
        .collect();
    assert_eq!(
        statuses,
        [
            "accepted",
            "duplicate",
            "conflict",
            "unknown_id",
            "invalid",
            "expired",
            "unknown_id",
            "accepted",
            "accepted",
            "accepted",
            "accepted",
            "accepted"
        ],
        "{body:#}"
    );
    let results = body["results"].as_array().unwrap();
    for (i, r) in results.iter().enumerate() {
        if r["status"] != "accepted" && r["status"] != "duplicate" {
            assert!(
                r["message"].as_str().is_some_and(|m| !m.is_empty()),
                "item {i} has no message: {r}"
            );
        }
    }
    for r in 0..5u64 {
        let item = &results[7 + r as usize];
        assert_eq!(item["id"], batch.id.as_str(), "{item}");
        assert_eq!(item["row"], r, "{item}");
    }
    assert_eq!(
        body["summary"],
        json!({"accepted": 6, "duplicate": 1, "conflict": 1, "unknown_id": 2,
               "expired": 1, "invalid": 1}),
        "{body:#}"
    );
    // The same batch again, as `{"labels": [...]}`: what was accepted is now a duplicate.
    let (status, again) = ts
        .feedback("breast_cancer", &json!({ "labels": items }))
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["summary"]["accepted"], 0, "{again}");
    assert_eq!(again["summary"]["duplicate"], 7, "{again}");

    // Labelled rows: id(0), id(1), id(2) and the five batch rows.
    let ev = evaluation().await;
    assert_eq!(ev["rows_served"], 11, "{ev}");
    assert_eq!(ev["rows_labelled"], 8, "{ev}");
    assert_eq!(ev["label_coverage"], 8.0 / 11.0, "{ev}");
    let m = ev["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "breast_cancer" && m["version"] == 1)
        .expect("champion evaluated")
        .clone();
    assert_eq!(m["cumulative"]["labelled"], 8, "{m}");

    // Deployments only: an unknown name, or a bare model, is 404.
    let (status, body) = ts
        .feedback("nowhere", &json!({"id": id(4), "label": 1}))
        .await;
    assert_error(status, &body, 404, &["nowhere"]);
    let (status, body) = ts
        .feedback("dtypes", &json!({"id": id(4), "label": 1}))
        .await;
    assert_error(status, &body, 404, &["dtypes"]);
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regression_deployment_takes_numeric_labels_and_reports_mae_rmse() {
    let ts = TestServer::start().await;
    let rows = diabetes_features();
    let truth = diabetes_labels();
    let n = rows.len();

    // The whole held-out set in one request; its rows labelled by `row`.
    let a = ts
        .infer_ok("diabetes", &classifier_request(&rows), None)
        .await;
    // JSON carries the shortest decimal of each float32; back to float32
    // it is the gateway's exact value.
    let served: Vec<f64> = f64_data(output(&a.response, "prediction"))
        .into_iter()
        .map(|x| f64::from(x as f32))
        .collect();
    assert_eq!(served.len(), n);
    ts.wait_deployment("diabetes", "predictions logged", |d| {
        logged(d, "diabetes", 1) == n as u64
    })
    .await;

    // Single labels first (one integer-valued), then the rest in a batch.
    let (status, body) = ts
        .feedback("diabetes", &json!({"id": a.id, "label": truth[0]}))
        .await;
    assert_eq!(
        (status.as_u16(), &body["status"]),
        (200, &json!("accepted")),
        "{body}"
    );
    let (status, body) = ts
        .feedback(
            "diabetes",
            &json!({"id": a.id, "row": 1, "label": truth[1] as i64}),
        )
        .await;
    assert_eq!(truth[1].fract(), 0.0, "held-out values are integers");
    assert_eq!(
        (status.as_u16(), &body["status"]),
        (200, &json!("accepted")),
        "{body}"
    );
    // Same value: duplicate; another value: conflict; a class name: invalid.
    let (status, body) = ts
        .feedback(
            "diabetes",
            &json!({"id": a.id, "row": 1, "label": truth[1]}),
        )
        .await;
    assert_eq!(
        (status.as_u16(), &body["status"]),
        (200, &json!("duplicate")),
        "{body}"
    );
    let (status, body) = ts
        .feedback(
            "diabetes",
            &json!({"id": a.id, "row": 1, "label": truth[1] + 0.5}),
        )
        .await;
    assert_error(status, &body, 409, &[]);
    for bad in [json!("benign"), json!(true), json!([1.0])] {
        let (status, body) = ts
            .feedback("diabetes", &json!({"id": a.id, "row": 2, "label": bad}))
            .await;
        assert_error(status, &body, 400, &[]);
    }
    // A label whose errors could not be summed is refused, never accepted
    // and then left out of the metrics; per item in a batch.
    for huge in [1e308, -1e150] {
        let (status, body) = ts
            .feedback("diabetes", &json!({"id": a.id, "row": 2, "label": huge}))
            .await;
        assert_error(status, &body, 400, &["out of range"]);
    }
    let (status, body) = ts
        .feedback("diabetes", &json!([{"id": a.id, "row": 2, "label": 1e308}]))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "invalid", "{body}");
    assert!(
        body["results"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("out of range")),
        "{body}"
    );
    let items: Vec<Value> = (2..n)
        .map(|r| json!({"id": a.id, "row": r, "label": truth[r]}))
        .collect();
    let (status, body) = ts.feedback("diabetes", &json!(items)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["summary"]["accepted"], (n - 2) as u64, "{body}");

    let d = ts.deployment("diabetes").await;
    let ev = &d["evaluation"];
    assert_eq!(ev["rows_served"], n as u64, "{ev}");
    assert_eq!(ev["rows_labelled"], n as u64, "{ev}");
    assert_eq!(ev["label_coverage"], 1.0, "{ev}");
    let m = eval_of(&d, "diabetes", 1).expect("evaluated");
    let c = &m["cumulative"];
    assert_eq!(c["labelled"], n as u64, "{m}");
    assert!(c["accuracy"].is_null(), "{m}");
    let mae = num(&c["mae"], "mae");
    let rmse = num(&c["rmse"], "rmse");

    // From the gateway's own answers: equal up to rounding.
    let errors = |preds: &[f64]| -> (f64, f64) {
        let abs = preds
            .iter()
            .zip(&truth)
            .map(|(p, t)| (p - t).abs())
            .sum::<f64>();
        let sq = preds
            .iter()
            .zip(&truth)
            .map(|(p, t)| (p - t).powi(2))
            .sum::<f64>();
        (abs / n as f64, (sq / n as f64).sqrt())
    };
    let (want_mae, want_rmse) = errors(&served);
    assert_close(
        mae,
        want_mae,
        1e-9 * want_mae,
        "MAE from served predictions",
    );
    assert_close(
        rmse,
        want_rmse,
        1e-9 * want_rmse,
        "RMSE from served predictions",
    );
    // From expected.json (Python onnxruntime), float32 apart.
    let (want_mae, want_rmse) = errors(&expected_diabetes());
    assert_close(mae, want_mae, 1e-5 * want_mae, "MAE from expected.json");
    assert_close(rmse, want_rmse, 1e-5 * want_rmse, "RMSE from expected.json");
    assert_window_is_everything(m, "diabetes@1");
    ts.stop().await;
}

/// Single labels posted concurrently (the store commits the waiting ones
/// together): every post is answered `accepted` and counted once, and the
/// metrics equal those of the same labels posted one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_labels_are_each_durable_and_counted_once() {
    let s = std::sync::Arc::new(TestServer::start().await);
    let features = breast_cancer_features();
    let labels = breast_cancer_labels();
    let answers = s.infer_rows("breast_cancer", &features).await;
    let mut tasks = Vec::new();
    for (a, &label) in answers.iter().zip(&labels) {
        let s = std::sync::Arc::clone(&s);
        let body = json!({ "id": a.id, "label": label });
        tasks.push(tokio::spawn(async move {
            s.feedback("breast_cancer", &body).await
        }));
    }
    for t in tasks {
        let (status, body) = t.await.expect("the task completes");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "accepted", "{body}");
    }
    let d = s.deployment("breast_cancer").await;
    assert_eq!(d["evaluation"]["rows_labelled"], labels.len() as u64, "{d}");
    let m = eval_of(&d, "breast_cancer", 1).expect("champion evaluated");
    let expected = expected_classes(1);
    let right = expected.iter().zip(&labels).filter(|(p, l)| p == l).count();
    let accuracy = right as f64 / labels.len() as f64;
    assert_eq!(m["cumulative"]["accuracy"].as_f64(), Some(accuracy), "{m}");
}
