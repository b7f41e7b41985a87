//! Promotion on a real server with the real example models, the real store
//! and real labels: a clearly better challenger is promoted by the policy
//! (and then answers), an equal or worse one is not, a challenger worse on
//! one segment is refused with that reason, manual promotion and rollback
//! through the admin API and the CLI, zero failed requests while the live set
//! is swapped under concurrent load, the state and audit trail survive a
//! restart, and the post-promotion watch rolls back by itself.
//!
//! The example models (held-out accuracy): breast_cancer@1 0.986 (logistic
//! regression), @2 0.958 (gradient-boosted trees), @3 0.867 (weak). On the
//! 143 held-out rows @1 alone is right on 18 rows and @3 alone on 1, so one
//! labelled pass of the held-out set already decides @1 vs @3 at α = 0.05
//! (always-valid p ≈ 0.0045); the tests send two or more where it matters.

mod support;

use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{
    SETTLE_TIMEOUT, TestServer, assert_error, breast_cancer_features, breast_cancer_labels,
    challenger_of, classifier_request, expected_class_probabilities, expected_classes, f64_data,
    i64_data, logged, model_dir, output, repository_with, test_config,
};

const BIN: &str = env!("CARGO_BIN_EXE_contender");
const BC: &str = "breast_cancer";
/// Pause between two polls (bounded by [`SETTLE_TIMEOUT`]).
const POLL: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------
// Configuration.

/// A deployment `name` of `model`: champion `model@champion`, each of
/// `shadows` a shadow challenger with a generous queue and timeout (these
/// tests count every mirrored row), plus `[promotion]` and `[evaluation]`
/// keys.
fn deployment(
    name: &str,
    model: &str,
    champion: u64,
    shadows: &[u64],
    promotion: &str,
    evaluation: &str,
) -> String {
    let mut s =
        format!("\n[deployments.{name}.champion]\nmodel = \"{model}\"\nversion = {champion}\n");
    for v in shadows {
        s.push_str(&format!(
            "\n[[deployments.{name}.challengers]]\nmodel = \"{model}\"\nversion = {v}\nmode = \"shadow\"\nqueue_capacity = 1024\ntimeout_ms = 60000\n"
        ));
    }
    s.push_str(&format!("\n[deployments.{name}.promotion]\n{promotion}\n"));
    s.push_str(&format!(
        "\n[deployments.{name}.evaluation]\n{evaluation}\n"
    ));
    s
}

// ---------------------------------------------------------------------------
// Reading the admin JSON.

/// `(model, version)` of the champion in an admin deployment JSON.
fn champion(d: &Value) -> (String, u64) {
    (
        d["champion"]["model"]
            .as_str()
            .unwrap_or_else(|| panic!("no champion model in {d}"))
            .to_owned(),
        d["champion"]["version"]
            .as_u64()
            .unwrap_or_else(|| panic!("no champion version in {d}")),
    )
}

fn is_champion(d: &Value, model: &str, version: u64) -> bool {
    champion(d) == (model.to_owned(), version)
}

/// The comparison of `champion` with `challenger` (`model@version` labels).
fn comparison<'a>(d: &'a Value, champion: &str, challenger: &str) -> Option<&'a Value> {
    d["evaluation"]["comparisons"]
        .as_array()?
        .iter()
        .find(|c| c["champion"] == champion && c["challenger"] == challenger)
}

/// The evidence of one segment of a comparison.
fn segment<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["segments"]
        .as_array()
        .unwrap_or_else(|| panic!("no segments in {c}"))
        .iter()
        .find(|s| s["segment"] == name)
        .unwrap_or_else(|| panic!("no segment {name:?} in {c:#}"))
}

fn model_ref(model: &str, version: u64) -> Value {
    json!({ "model": model, "version": version })
}

/// A model's failed mirrored work: errors, timeouts and drops.
fn shadow_failures(d: &Value, model: &str, version: u64) -> u64 {
    challenger_of(d, model, version).map_or(0, |c| {
        ["errors", "timeouts", "dropped"]
            .iter()
            .map(|k| c["stats"][*k].as_u64().unwrap_or(0))
            .sum()
    })
}

/// `GET /admin/deployments/{name}/history`: the records, oldest first.
async fn history(ts: &TestServer, name: &str) -> Vec<Value> {
    let (status, body) = ts
        .get_json(&format!("/admin/deployments/{name}/history"))
        .await;
    assert_eq!(status, 200, "history of {name}: {body}");
    assert_eq!(body["deployment"], name, "{body}");
    body["history"]
        .as_array()
        .unwrap_or_else(|| panic!("no history array: {body}"))
        .clone()
}

fn records<'a>(history: &'a [Value], action: &str) -> Vec<&'a Value> {
    history.iter().filter(|r| r["action"] == action).collect()
}

// ---------------------------------------------------------------------------
// Traffic and labels.

/// One request carrying the whole held-out set (143 rows), optionally in a
/// segment; a fresh request id each time. Waits until the champion and every
/// shadow in `shadows` logged its rows. Returns the request id, or `None`
/// when a shadow failed to answer it (timeout, error or drop): its rows then
/// make no pairs, and the caller sends another pass.
async fn pass(
    ts: &TestServer,
    name: &str,
    champion: (&str, u64),
    shadows: &[(&str, u64)],
    segment: Option<&str>,
) -> Option<String> {
    let rows = breast_cancer_features();
    let n = rows.len() as u64;
    let before = ts.deployment(name).await;
    let mut body = classifier_request(&rows);
    if let Some(s) = segment {
        body["parameters"] = json!({ "segment": s });
    }
    let answer = ts.infer_ok(name, &body, None).await;
    assert_eq!(
        answer.model_version,
        champion.1.to_string(),
        "{}",
        answer.response
    );
    let want: Vec<(&str, u64, u64, u64)> = std::iter::once(champion)
        .chain(shadows.iter().copied())
        .map(|(m, v)| {
            (
                m,
                v,
                logged(&before, m, v) + n,
                shadow_failures(&before, m, v),
            )
        })
        .collect();
    let d = ts
        .wait_deployment(name, "the pass's rows are logged by every model", |d| {
            // The champion's rows always; a shadow's, or its failure.
            want.iter().enumerate().all(|(i, &(m, v, rows, f))| {
                logged(d, m, v) >= rows || (i > 0 && shadow_failures(d, m, v) > f)
            })
        })
        .await;
    (!failed_since(&d, &want)).then_some(answer.id)
}

/// Whether a model of `want` failed mirrored work since `want` was taken.
fn failed_since(d: &Value, want: &[(&str, u64, u64, u64)]) -> bool {
    want.iter()
        .any(|&(m, v, _, f)| shadow_failures(d, m, v) > f)
}

/// Sends passes until `count` of them were answered by every model
/// (bounded: a few failed passes are tolerated, not an endless stream).
async fn passes(
    ts: &TestServer,
    name: &str,
    champion: (&str, u64),
    shadows: &[(&str, u64)],
    segment: Option<&str>,
    count: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    let mut attempts = 0;
    while ids.len() < count {
        attempts += 1;
        assert!(
            attempts <= count + 5,
            "shadows of {name} kept failing mirrored requests: {:#}",
            ts.deployment(name).await["challengers"]
        );
        if let Some(id) = pass(ts, name, champion, shadows, segment).await {
            ids.push(id);
        }
    }
    ids
}

/// Posts one label per row of each request in `ids` (a batch), asserting
/// every label is accepted.
async fn label(ts: &TestServer, name: &str, ids: &[String], labels: &[i64]) {
    let items: Vec<Value> = ids
        .iter()
        .flat_map(|id| {
            labels
                .iter()
                .enumerate()
                .map(move |(row, l)| json!({ "id": id, "row": row, "label": l }))
        })
        .collect();
    let n = items.len();
    let (status, body) = ts.feedback(name, &json!({ "labels": items })).await;
    assert_eq!(status, 200, "feedback: {body}");
    assert_eq!(
        body["summary"]["accepted"], n,
        "every label is accepted: {}",
        body["summary"]
    );
}

/// Waits until the champion of `name` is `model@version`.
async fn wait_champion(
    ts: &TestServer,
    name: &str,
    model: &str,
    version: u64,
    what: &str,
) -> Value {
    ts.wait_deployment(name, what, |d| is_champion(d, model, version))
        .await
}

/// Asserts a response came from `breast_cancer@version`: it names it, and
/// its outputs are that version's expected outputs for the held-out rows.
fn assert_answered_by(resp: &Value, version: u32) {
    assert_eq!(resp["model_name"], BC, "{resp}");
    assert_eq!(resp["model_version"], version.to_string(), "{resp}");
    let labels = i64_data(output(resp, "label"));
    assert_eq!(labels, expected_classes(version), "labels of v{version}");
    let probs = f64_data(output(resp, "probabilities"));
    let want: Vec<f64> = expected_class_probabilities(version)
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(probs.len(), want.len());
    for (i, (a, b)) in probs.iter().zip(&want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-6,
            "probability {i} of v{version}: {a} vs {b}"
        );
    }
}

// ---------------------------------------------------------------------------
// 1. A clearly better challenger is promoted by the policy.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clearly_better_challenger_is_promoted_automatically() {
    let name = "auto";
    let extra = deployment(name, BC, 3, &[1], "mode = \"auto\"\nmin_pairs = 100", "");
    let ts = TestServer::start_with("", &extra).await;
    let truth = breast_cancer_labels();

    // Two passes of the held-out set, answered by v3 and shadowed by v1.
    let ids = passes(&ts, name, (BC, 3), &[(BC, 1)], None, 2).await;
    let d = ts.deployment(name).await;
    assert!(is_champion(&d, BC, 3), "nothing is promoted without labels");
    assert!(
        history(&ts, name)
            .await
            .iter()
            .all(|r| r["action"] != "promotion")
    );

    label(&ts, name, &ids, &truth).await;
    let d = wait_champion(&ts, name, BC, 1, "the policy promotes breast_cancer@1").await;

    // v3 now shadows, as the previous champion.
    let prev = challenger_of(&d, BC, 3).unwrap_or_else(|| panic!("v3 shadows: {d:#}"));
    assert_eq!(prev["mode"], "shadow", "{prev}");
    assert_eq!(
        d["promotion"]["previous_champion"]["model"],
        model_ref(BC, 3),
        "{:#}",
        d["promotion"]
    );
    assert!(d["promotion"]["previous_champion"]["until_ms"].is_u64());
    assert!(
        challenger_of(&d, BC, 1).is_none(),
        "v1 is no longer a challenger"
    );

    // The audit trail: one promotion by the policy, with its evidence and
    // the configuration in force (v3 the champion, auto mode).
    let h = history(&ts, name).await;
    let promotions = records(&h, "promotion");
    assert_eq!(promotions.len(), 1, "{h:#?}");
    let r = promotions[0];
    assert_eq!(r["trigger"], json!({ "kind": "policy" }), "{r:#}");
    assert_eq!(r["from"], model_ref(BC, 3));
    assert_eq!(r["to"], model_ref(BC, 1));
    assert!(
        r["reason"]
            .as_str()
            .is_some_and(|s| s.contains("breast_cancer@1")),
        "{r:#}"
    );
    assert!(r["at_ms"].as_i64().is_some_and(|t| t > 0), "{r:#}");
    let ev = &r["evidence"];
    let alpha = r["config"]["promotion"]["alpha"]
        .as_f64()
        .expect("alpha in force");
    assert_eq!(alpha, 0.05);
    assert!(ev["p_value"].as_f64().is_some_and(|p| p <= alpha), "{ev:#}");
    assert!(ev["pairs"].as_u64().is_some_and(|p| p >= 100), "{ev:#}");
    assert_eq!(ev["decision"], "challenger_better", "{ev:#}");
    assert_eq!(ev["challenger"], "breast_cancer@1");
    assert_eq!(ev["champion"], "breast_cancer@3");
    assert!(ev["effect"].as_f64().is_some_and(|e| e > 0.0), "{ev:#}");
    assert!(ev["ci_low"].as_f64().is_some_and(|l| l >= 0.0), "{ev:#}");
    assert!(ev["guardrails"].is_object(), "{ev:#}");
    assert_eq!(r["config"]["champion"], model_ref(BC, 3));
    assert_eq!(r["config"]["promotion"]["mode"], "auto");
    assert_eq!(r["config"]["promotion"]["min_pairs"], 100);

    // New responses come from v1, and v3 sees them as a shadow.
    let ids = passes(&ts, name, (BC, 1), &[(BC, 3)], None, 1).await;
    assert_eq!(ids.len(), 1);
    let resp = ts
        .infer_ok(name, &classifier_request(&breast_cancer_features()), None)
        .await;
    assert_answered_by(&resp.response, 1);
    ts.stop().await;
}

// ---------------------------------------------------------------------------
// 2. An equal challenger, and a worse one, are not promoted.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_and_worse_challengers_are_not_promoted() {
    // `bc` has versions 1 and 2, both the very same files as breast_cancer@1.
    let bc = tempfile::tempdir().expect("a temporary model directory");
    for v in ["1", "2"] {
        std::os::unix::fs::symlink(model_dir(BC, 1), bc.path().join(v)).expect("a version symlink");
    }
    let repo = repository_with(&[("bc", bc.path())]);
    let auto = "mode = \"auto\"\nmin_pairs = 50";
    let extra = [
        deployment("same", "bc", 1, &[2], auto, ""),
        deployment("worse", BC, 1, &[3], auto, ""),
        // A deployment the policy does promote: its promotion marks the
        // moment the policy has acted on the labels posted before it.
        deployment("marker", BC, 3, &[1], auto, ""),
    ]
    .concat();
    let mut config = test_config("", &extra);
    config.repository.path = repo.path().to_path_buf();
    let ts = TestServer::start_config(config).await;
    let truth = breast_cancer_labels();

    let same = passes(&ts, "same", ("bc", 1), &[("bc", 2)], None, 3).await;
    let worse = passes(&ts, "worse", (BC, 1), &[(BC, 3)], None, 3).await;
    let marker = passes(&ts, "marker", (BC, 3), &[(BC, 1)], None, 1).await;
    label(&ts, "same", &same, &truth).await;
    label(&ts, "worse", &worse, &truth).await;
    label(&ts, "marker", &marker, &truth).await;
    // The policy handles deployments in the order their labels arrived.
    wait_champion(&ts, "marker", BC, 1, "the marker deployment is promoted").await;

    let d = ts.deployment("same").await;
    assert!(
        is_champion(&d, "bc", 1),
        "an equal challenger is not promoted: {d:#}"
    );
    let c = comparison(&d, "bc@1", "bc@2").unwrap_or_else(|| panic!("no comparison: {d:#}"));
    assert_eq!(c["pairs"], 3 * 143, "{c:#}");
    assert_eq!(c["discordant"], 0, "identical models never disagree: {c:#}");
    assert_ne!(c["decision"], "challenger_better", "{c:#}");
    assert!(c["p_value"].as_f64().is_some_and(|p| p > 0.05), "{c:#}");
    assert!(
        d["promotion"]["recommendation"].is_null(),
        "{:#}",
        d["promotion"]
    );
    assert!(challenger_of(&d, "bc", 2).is_some());
    let h = history(&ts, "same").await;
    assert!(records(&h, "promotion").is_empty(), "{h:#?}");

    let d = ts.deployment("worse").await;
    assert!(
        is_champion(&d, BC, 1),
        "a worse challenger is not promoted: {d:#}"
    );
    let c = comparison(&d, "breast_cancer@1", "breast_cancer@3")
        .unwrap_or_else(|| panic!("no comparison: {d:#}"));
    assert_eq!(c["decision"], "champion_better", "{c:#}");
    assert!(c["effect"].as_f64().is_some_and(|e| e < 0.0), "{c:#}");
    assert!(c["p_value"].as_f64().is_some_and(|p| p <= 0.05), "{c:#}");
    let h = history(&ts, "worse").await;
    assert!(records(&h, "promotion").is_empty(), "{h:#?}");
    ts.stop().await;
}

// ---------------------------------------------------------------------------
// 3. No harm to a segment.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenger_worse_on_one_segment_is_refused_with_that_reason() {
    let name = "segments";
    let extra = deployment(
        name,
        BC,
        3,
        &[1],
        "mode = \"auto\"\nmin_pairs = 50",
        "segment_min_pairs = 50",
    );
    let ts = TestServer::start_with("", &extra).await;
    let truth = breast_cancer_labels();
    let (v1, v3) = (expected_classes(1), expected_classes(3));
    // In "bad", where the two disagree, v3's answer is the label: v1 is
    // wrong on every row where they differ (19 per pass), right on none.
    let bad_labels: Vec<i64> = (0..truth.len())
        .map(|i| if v1[i] != v3[i] { v3[i] } else { truth[i] })
        .collect();
    assert!(
        (0..truth.len()).filter(|&i| v1[i] != v3[i]).count() >= 15,
        "the models disagree on enough rows"
    );

    let bad = passes(&ts, name, (BC, 3), &[(BC, 1)], Some("bad"), 1).await;
    let good = passes(&ts, name, (BC, 3), &[(BC, 1)], Some("good"), 5).await;
    // The bad segment's labels first: when the overall comparison turns in
    // v1's favour, the segment already holds its evidence.
    label(&ts, name, &bad, &bad_labels).await;
    label(&ts, name, &good, &truth).await;

    let d = ts
        .wait_deployment(name, "the promotion is refused", |d| {
            d["promotion"]["refused"]["breast_cancer@1"].is_string()
        })
        .await;
    let refused = d["promotion"]["refused"]["breast_cancer@1"]
        .as_str()
        .unwrap();
    assert!(refused.contains("segment 'bad'"), "{refused}");
    assert!(is_champion(&d, BC, 3), "no promotion: {d:#}");

    // Overall v1 is better; in "good" too; in "bad" it is worse.
    let c = comparison(&d, "breast_cancer@3", "breast_cancer@1")
        .unwrap_or_else(|| panic!("no comparison: {d:#}"));
    assert_eq!(c["decision"], "challenger_better", "{c:#}");
    assert_eq!(c["pairs"], 6 * 143);
    assert_eq!(segment(c, "good")["decision"], "challenger_better", "{c:#}");
    let bad_seg = segment(c, "bad");
    assert_eq!(bad_seg["decision"], "champion_better", "{c:#}");
    assert_eq!(bad_seg["pairs"], 143);

    let h = history(&ts, name).await;
    assert!(records(&h, "promotion").is_empty(), "{h:#?}");
    let refusals = records(&h, "promotion_refused");
    assert_eq!(refusals.len(), 1, "a refusal is recorded once: {h:#?}");
    let r = refusals[0];
    assert_eq!(r["trigger"], json!({ "kind": "policy" }));
    assert_eq!(r["from"], model_ref(BC, 3));
    assert_eq!(r["to"], model_ref(BC, 1));
    assert!(
        r["reason"]
            .as_str()
            .is_some_and(|s| s.contains("segment 'bad'")),
        "{r:#}"
    );
    assert_eq!(r["config"]["evaluation"]["segment_min_pairs"], 50);
    assert_eq!(
        segment(&r["evidence"], "bad")["decision"],
        "champion_better"
    );

    // Still refused, still answering from v3.
    let resp = ts
        .infer_ok(name, &classifier_request(&breast_cancer_features()), None)
        .await;
    assert_answered_by(&resp.response, 3);
    ts.stop().await;
}

// ---------------------------------------------------------------------------
// 4. Manual control: recommendation, promote, rollback, errors, CLI.

/// Runs the binary (blocking, off the async workers) from an empty directory
/// (no `contender.toml`), without inherited `CONTENDER_*` variables.
async fn cli(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let envs: Vec<(String, String)> = envs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().expect("a working directory");
        let mut cmd = Command::new(BIN);
        cmd.current_dir(dir.path()).args(&args);
        for (key, _) in std::env::vars_os() {
            if let Some(k) = key.to_str()
                && k.starts_with("CONTENDER_")
                && k != "CONTENDER_CACHE_DIR"
            {
                cmd.env_remove(k);
            }
        }
        cmd.env("NO_COLOR", "1").envs(envs);
        cmd.stdin(Stdio::null()).output().expect("the binary runs")
    })
    .await
    .expect("the CLI thread does not panic")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_promotion_and_rollback_through_the_api_and_the_cli() {
    let name = "manual";
    let extra = [
        deployment(name, BC, 3, &[1], "mode = \"manual\"\nmin_pairs = 50", ""),
        deployment("fresh", BC, 1, &[2], "mode = \"manual\"", ""),
    ]
    .concat();
    let ts = TestServer::start_with("", &extra).await;
    let truth = breast_cancer_labels();

    let ids = passes(&ts, name, (BC, 3), &[(BC, 1)], None, 1).await;
    label(&ts, name, &ids, &truth).await;
    let d = ts
        .wait_deployment(name, "the policy recommends v1", |d| {
            d["promotion"]["recommendation"].is_string()
        })
        .await;
    let rec = d["promotion"]["recommendation"].as_str().unwrap();
    assert!(rec.contains("promote breast_cancer@1"), "{rec}");
    assert!(is_champion(&d, BC, 3), "manual mode only recommends: {d:#}");
    assert!(records(&history(&ts, name).await, "promotion").is_empty());

    // `contender status` shows the comparison and the recommendation.
    let d = ts
        .wait_deployment(name, "every labelled row is paired", |d| {
            comparison(d, "breast_cancer@3", "breast_cancer@1")
                .is_some_and(|c| c["pairs"] == truth.len())
        })
        .await;
    let out = cli(&["status", name, "--url", &ts.base], &[]).await;
    assert!(out.status.success(), "status: {}", text(&out.stderr));
    let status = text(&out.stdout);
    assert!(status.contains("LOG LOSS (window)"), "{status}");
    let c = comparison(&d, "breast_cancer@3", "breast_cancer@1").expect("compared");
    let line = status
        .lines()
        .find(|l| l.trim_start().starts_with("breast_cancer@1  accuracy"))
        .unwrap_or_else(|| panic!("no comparison line in\n{status}"));
    for part in [
        format!("{} pairs", c["pairs"]),
        format!("effect {:+.4}", c["effect"].as_f64().unwrap()),
        format!("p = {:.4}", c["p_value"].as_f64().unwrap()),
        "challenger_better".to_owned(),
    ] {
        assert!(line.contains(&part), "{part:?} not in {line:?}");
    }
    assert!(
        status.contains(&format!("recommendation (manual): {rec}")),
        "{status}"
    );
    let log = status
        .lines()
        .find(|l| l.starts_with("gateway prediction log"))
        .unwrap_or_else(|| panic!("no prediction log line in\n{status}"));
    assert!(
        log.contains(" rows, ") && log.contains(" dropped, "),
        "{log}"
    );

    // Promote by hand.
    let (status, body) = ts
        .post_json(
            &format!("/admin/deployments/{name}/promote"),
            &json!({ "model": BC, "version": 1, "by": "alice" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(is_champion(&body, BC, 1), "{body:#}");
    assert!(body["promotion"]["recommendation"].is_null());
    assert_eq!(
        body["promotion"]["previous_champion"]["model"],
        model_ref(BC, 3)
    );
    let resp = ts
        .infer_ok(name, &classifier_request(&breast_cancer_features()), None)
        .await;
    assert_answered_by(&resp.response, 1);
    let h = history(&ts, name).await;
    let r = h.last().expect("a record");
    assert_eq!(r["action"], "promotion", "{r:#}");
    assert_eq!(r["trigger"], json!({ "kind": "person", "name": "alice" }));
    assert_eq!(r["from"], model_ref(BC, 3));
    assert_eq!(r["to"], model_ref(BC, 1));
    assert_eq!(
        r["evidence"]["challenger"], "breast_cancer@1",
        "the statistics at that moment"
    );
    assert_eq!(r["config"]["promotion"]["mode"], "manual");

    // Roll back by hand.
    let (status, body) = ts
        .post_json(
            &format!("/admin/deployments/{name}/rollback"),
            &json!({ "by": "alice", "reason": "checking the rollback" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(is_champion(&body, BC, 3), "{body:#}");
    assert!(body["promotion"]["previous_champion"].is_null());
    let resp = ts
        .infer_ok(name, &classifier_request(&breast_cancer_features()), None)
        .await;
    assert_answered_by(&resp.response, 3);
    let h = history(&ts, name).await;
    let r = h.last().expect("a record");
    assert_eq!(r["action"], "rollback", "{r:#}");
    assert_eq!(r["trigger"], json!({ "kind": "person", "name": "alice" }));
    assert_eq!(r["from"], model_ref(BC, 1));
    assert_eq!(r["to"], model_ref(BC, 3));
    assert_eq!(r["reason"], "checking the rollback");

    // Errors change nothing.
    let before = ts.deployment(name).await;
    let (status, body) = ts
        .post_json(
            &format!("/admin/deployments/{name}/promote"),
            &json!({ "model": BC, "version": 2 }),
        )
        .await;
    assert_error(status, &body, 404, &["breast_cancer@2", "not a challenger"]);
    let (status, body) = ts
        .post_json(
            &format!("/admin/deployments/{name}/promote"),
            &json!({ "model": "diabetes" }),
        )
        .await;
    assert_error(status, &body, 404, &["diabetes"]);
    let (status, body) = ts
        .post_json(
            &format!("/admin/deployments/{name}/promote"),
            &json!({ "model": BC, "version": 3 }),
        )
        .await;
    assert_error(status, &body, 400, &["already the champion"]);
    // The previous champion is the champion again: nothing to roll back to.
    let (status, body) = ts
        .post_json(&format!("/admin/deployments/{name}/rollback"), &json!({}))
        .await;
    assert_error(status, &body, 400, &[]);
    // Never promoted: no previous champion.
    let (status, body) = ts
        .post_json("/admin/deployments/fresh/rollback", &json!({}))
        .await;
    assert_error(status, &body, 400, &["no previous champion"]);
    let (status, body) = ts
        .post_json("/admin/deployments/nope/rollback", &json!({}))
        .await;
    assert_error(status, &body, 404, &["nope"]);
    let after = ts.deployment(name).await;
    assert_eq!(after["champion"]["version"], before["champion"]["version"]);
    assert_eq!(
        after["challengers"].as_array().map(Vec::len),
        before["challengers"].as_array().map(Vec::len)
    );
    assert_eq!(
        history(&ts, name).await.len(),
        h.len(),
        "refused changes are not recorded"
    );
    assert!(history(&ts, "fresh").await.is_empty());

    // The CLI: promote, rollback, history.
    let url = ts.base.clone();
    let out = cli(
        &["promote", name, "breast_cancer@1", "--url", &url],
        &[("USER", "bob")],
    )
    .await;
    assert!(
        out.status.success(),
        "promote: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("champion is now breast_cancer@1"),
        "{}",
        text(&out.stdout)
    );
    assert!(is_champion(&ts.deployment(name).await, BC, 1));
    let out = cli(
        &["rollback", name, "--url", &url, "--reason", "cli rollback"],
        &[("USER", "bob")],
    )
    .await;
    assert!(
        out.status.success(),
        "rollback: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("champion is now breast_cancer@3"),
        "{}",
        text(&out.stdout)
    );
    assert!(is_champion(&ts.deployment(name).await, BC, 3));
    let out = cli(&["promote", name, "breast_cancer@2", "--url", &url], &[]).await;
    assert!(!out.status.success(), "promoting a non-challenger fails");
    assert!(text(&out.stderr).contains("404"), "{}", text(&out.stderr));

    let out = cli(&["history", name, "--url", &url], &[]).await;
    assert!(out.status.success(), "history: {}", text(&out.stderr));
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].contains("ACTION") && lines[0].contains("TRIGGER"),
        "{table}"
    );
    let h = history(&ts, name).await;
    assert_eq!(lines.len(), 1 + h.len(), "one line per record:\n{table}");
    for (line, want) in [
        (1 + h.len() - 4, ["promotion", "person alice"]),
        (1 + h.len() - 3, ["rollback", "person alice"]),
        (1 + h.len() - 2, ["promotion", "person bob"]),
        (1 + h.len() - 1, ["rollback", "person bob"]),
    ] {
        for w in want {
            assert!(
                lines[line].contains(w),
                "line {line} {:?} lacks {w:?}:\n{table}",
                lines[line]
            );
        }
    }
    assert!(lines[h.len()].contains("cli rollback"), "{table}");
    let out = cli(&["history", name, "--url", &url, "--json"], &[]).await;
    assert!(
        out.status.success(),
        "history --json: {}",
        text(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON history");
    assert_eq!(
        v["history"],
        Value::Array(h),
        "the CLI shows the stored history"
    );
    ts.stop().await;
}

// ---------------------------------------------------------------------------
// 5. Zero failed requests while the live set is swapped under load.

/// A version's expected classes and probabilities, per held-out row.
type Expected = (Vec<i64>, Vec<Vec<f64>>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_during_promotions_and_rollbacks_under_load() {
    const CLIENTS: usize = 16;
    const SWAP_CYCLES: usize = 5;
    /// Responses between two swaps, so that each swap happens under load.
    const BETWEEN: u64 = 200;
    let name = "swap";
    let extra = deployment(name, BC, 1, &[2], "mode = \"off\"", "");
    let ts = TestServer::start_with("", &extra).await;

    let rows = Arc::new(breast_cancer_features());
    let want: Arc<Vec<Expected>> = Arc::new(
        [1u32, 2]
            .iter()
            .map(|&v| (expected_classes(v), expected_class_probabilities(v)))
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (client, url) = (
            ts.client.clone(),
            ts.url(&format!("/v2/models/{name}/infer")),
        );
        let (rows, want, stop, done) = (rows.clone(), want.clone(), stop.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            let mut failures: Vec<String> = Vec::new();
            let mut by_version = [0u64; 2];
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let row = i % rows.len();
                i += CLIENTS;
                let body = classifier_request(std::slice::from_ref(&rows[row]));
                let r = match client.post(&url).json(&body).send().await {
                    Ok(r) => r,
                    Err(e) => {
                        failures.push(format!("row {row}: {e}"));
                        continue;
                    }
                };
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                done.fetch_add(1, Ordering::Relaxed);
                if status != 200 {
                    failures.push(format!("row {row}: {status} {text}"));
                    continue;
                }
                let resp: Value = match serde_json::from_str(&text) {
                    Ok(v) => v,
                    Err(e) => {
                        failures.push(format!("row {row}: not JSON ({e}): {text}"));
                        continue;
                    }
                };
                let v = match resp["model_version"].as_str() {
                    Some("1") => 0,
                    Some("2") => 1,
                    _ => {
                        failures.push(format!("row {row}: answered by {}", resp["model_version"]));
                        continue;
                    }
                };
                let (classes, probs) = &want[v];
                let label = i64_data(output(&resp, "label"));
                let p = f64_data(output(&resp, "probabilities"));
                let matches = resp["model_name"] == BC
                    && label == [classes[row]]
                    && p.len() == 2
                    && p.iter()
                        .zip(&probs[row])
                        .all(|(a, b)| (a - b).abs() <= 1e-6);
                if matches {
                    by_version[v] += 1;
                } else {
                    failures.push(format!(
                        "row {row}: v{} answered {label:?} {p:?}, expected {:?} {:?}",
                        v + 1,
                        classes[row],
                        probs[row]
                    ));
                }
            }
            (failures, by_version)
        }));
    }

    let wait_for = |target: u64| {
        let done = done.clone();
        async move {
            let deadline = Instant::now() + SETTLE_TIMEOUT;
            while done.load(Ordering::Relaxed) < target {
                assert!(Instant::now() < deadline, "the clients stalled");
                tokio::time::sleep(POLL).await;
            }
        }
    };
    let admin = |path: &'static str, body: Value| {
        let ts = &ts;
        async move {
            let (status, resp) = ts
                .post_json(&format!("/admin/deployments/{name}/{path}"), &body)
                .await;
            assert_eq!(status, 200, "{path}: {resp}");
            resp
        }
    };
    wait_for(BETWEEN).await;
    for _ in 0..SWAP_CYCLES {
        let d = admin(
            "promote",
            json!({ "model": BC, "version": 2, "by": "load-test" }),
        )
        .await;
        assert!(is_champion(&d, BC, 2));
        wait_for(done.load(Ordering::Relaxed) + BETWEEN).await;
        let d = admin("rollback", json!({ "by": "load-test" })).await;
        assert!(is_champion(&d, BC, 1));
        wait_for(done.load(Ordering::Relaxed) + BETWEEN).await;
    }
    stop.store(true, Ordering::Relaxed);

    let mut failures = Vec::new();
    let mut by_version = [0u64; 2];
    for c in clients {
        let (f, n) = c.await.expect("a client task does not panic");
        failures.extend(f);
        by_version[0] += n[0];
        by_version[1] += n[1];
    }
    let total = done.load(Ordering::Relaxed);
    eprintln!(
        "{total} requests during {} swaps: {} answered by v1, {} by v2, {} failed",
        2 * SWAP_CYCLES,
        by_version[0],
        by_version[1],
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed; first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert_eq!(by_version[0] + by_version[1], total);
    assert!(total >= (2 * SWAP_CYCLES as u64 + 1) * BETWEEN);
    assert!(
        by_version[0] > 0 && by_version[1] > 0,
        "both versions answered: {by_version:?}"
    );

    let h = history(&ts, name).await;
    assert_eq!(records(&h, "promotion").len(), SWAP_CYCLES);
    assert_eq!(records(&h, "rollback").len(), SWAP_CYCLES);
    let d = ts.deployment(name).await;
    assert!(is_champion(&d, BC, 1));
    assert_eq!(d["champion"]["stats"]["errors"].as_u64().unwrap_or(0), 0);
    ts.stop().await;
}

// ---------------------------------------------------------------------------
// 6. The champion, the challengers and the history survive a restart.

/// The durable parts of a deployment's admin JSON: who is champion, the
/// challengers' settings, the promotion bookkeeping and the comparisons.
fn durable_view(d: &Value) -> Value {
    let challengers: Vec<Value> = d["challengers"]
        .as_array()
        .expect("challengers")
        .iter()
        .map(|c| {
            json!({
                "model": c["model"], "version": c["version"], "mode": c["mode"],
                "fraction": c["fraction"], "live": c["live"],
            })
        })
        .collect();
    json!({
        "champion": { "model": d["champion"]["model"], "version": d["champion"]["version"] },
        "challengers": challengers,
        "promotion": {
            "policy": d["promotion"]["policy"],
            "previous_champion": d["promotion"]["previous_champion"],
            "blocked": d["promotion"]["blocked"],
            "refused": d["promotion"]["refused"],
        },
        "comparisons": d["evaluation"]["comparisons"],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_champion_challengers_and_history_survive_a_restart() {
    let name = "durable";
    let extra = deployment(name, BC, 3, &[1, 2], "mode = \"auto\"\nmin_pairs = 100", "");
    let config = test_config("", &extra);
    let mut ts = TestServer::start_config(config.clone()).await;
    let truth = breast_cancer_labels();

    // The policy promotes v1; a person removes v2, then adds it back.
    let ids = passes(&ts, name, (BC, 3), &[(BC, 1), (BC, 2)], None, 2).await;
    label(&ts, name, &ids, &truth).await;
    wait_champion(&ts, name, BC, 1, "the policy promotes v1").await;
    let r = ts
        .client
        .delete(ts.url(&format!("/admin/deployments/{name}/challengers/{BC}/2")))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(r.status(), 200);
    let (status, body) = ts
        .post_json(
            &format!("/admin/deployments/{name}/challengers"),
            &json!({ "model": BC, "version": 2, "mode": "canary", "fraction": 0.25 }),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    let before = ts.deployment(name).await;
    let history_before = history(&ts, name).await;
    let actions: Vec<&str> = history_before
        .iter()
        .filter_map(|r| r["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        ["promotion", "challenger_removed", "challenger_added"],
        "{history_before:#?}"
    );
    assert!(is_champion(&before, BC, 1));
    assert_eq!(challenger_of(&before, BC, 2).expect("v2")["mode"], "canary");
    assert_eq!(challenger_of(&before, BC, 3).expect("v3")["mode"], "shadow");

    // Restart on the same data directory with the same configuration.
    let dir = ts
        .data_dir
        .take()
        .expect("the harness made the data directory");
    ts.stop().await;
    let mut again = config;
    again.store.data_dir = dir.path().to_path_buf();
    let ts = TestServer::start_in(again).await;

    let after = ts.deployment(name).await;
    assert_eq!(durable_view(&after), durable_view(&before));
    assert_eq!(history(&ts, name).await, history_before);

    // It serves from the restored champion, and the restored previous
    // champion still shadows.
    let before_v3 = logged(&after, BC, 3);
    let resp = ts
        .infer_ok(
            name,
            &classifier_request(&breast_cancer_features()),
            Some("k"),
        )
        .await;
    let version: u32 = resp.model_version.parse().expect("a version");
    assert!(version == 1 || version == 2, "{}", resp.response);
    assert_answered_by(&resp.response, version);
    ts.wait_deployment(name, "v3 still shadows", |d| logged(d, BC, 3) > before_v3)
        .await;
    ts.stop().await;
    drop(dir);
}

// ---------------------------------------------------------------------------
// 7. The watch after a promotion rolls back by itself.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worse_new_champion_is_rolled_back_automatically() {
    let name = "watch";
    let extra = deployment(
        name,
        BC,
        1,
        &[3],
        "mode = \"auto\"\nmin_pairs = 50\nauto_rollback = true",
        "",
    );
    let ts = TestServer::start_with("", &extra).await;
    let truth = breast_cancer_labels();

    // A person promotes the weak v3; v1 keeps shadowing.
    let (status, body) = ts
        .post_json(
            &format!("/admin/deployments/{name}/promote"),
            &json!({ "model": BC, "version": 3, "by": "carol" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(is_champion(&body, BC, 3));
    assert_eq!(
        body["promotion"]["previous_champion"]["model"],
        model_ref(BC, 1)
    );

    // Correctly labelled traffic: the previous champion is clearly better.
    let ids = passes(&ts, name, (BC, 3), &[(BC, 1)], None, 2).await;
    label(&ts, name, &ids, &truth).await;
    let d = wait_champion(&ts, name, BC, 1, "the watch rolls back to v1").await;
    assert!(
        d["promotion"]["previous_champion"].is_null(),
        "{:#}",
        d["promotion"]
    );
    assert_eq!(d["promotion"]["blocked"], json!([model_ref(BC, 3)]));
    assert_eq!(
        challenger_of(&d, BC, 3).expect("v3 still shadows")["mode"],
        "shadow"
    );

    let h = history(&ts, name).await;
    let actions: Vec<&str> = h.iter().filter_map(|r| r["action"].as_str()).collect();
    assert_eq!(actions, ["promotion", "rollback"], "{h:#?}");
    assert_eq!(
        h[0]["trigger"],
        json!({ "kind": "person", "name": "carol" })
    );
    let r = &h[1];
    assert_eq!(r["trigger"], json!({ "kind": "policy" }), "{r:#}");
    assert_eq!(r["from"], model_ref(BC, 3));
    assert_eq!(r["to"], model_ref(BC, 1));
    let reason = r["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("significantly worse"), "{reason}");
    assert!(
        r["evidence"]["p_value"].as_f64().is_some_and(|p| p <= 0.05),
        "{r:#}"
    );
    assert_eq!(r["evidence"]["decision"], "challenger_better");
    assert_eq!(
        r["config"]["champion"],
        model_ref(BC, 3),
        "the configuration in force"
    );
    assert_eq!(r["config"]["promotion"]["auto_rollback"], true);

    let resp = ts
        .infer_ok(name, &classifier_request(&breast_cancer_features()), None)
        .await;
    assert_answered_by(&resp.response, 1);
    ts.stop().await;
}

// ---------------------------------------------------------------------------
// 8. A rollback restores the live set as it was before the promotion.

/// The version answering each routing key `user-0` … `user-{n-1}`.
async fn versions_by_key(ts: &TestServer, name: &str, n: usize) -> Vec<String> {
    let rows = breast_cancer_features();
    let mut out = Vec::with_capacity(n);
    for k in 0..n {
        let body = classifier_request(std::slice::from_ref(&rows[k % rows.len()]));
        let a = ts.infer_ok(name, &body, Some(&format!("user-{k}"))).await;
        out.push(a.model_version);
    }
    out
}

/// The settings of a challenger in the admin JSON, as one comparable value.
fn settings(d: &Value, version: u64) -> Value {
    let c = challenger_of(d, BC, version).unwrap_or_else(|| panic!("no v{version} in {d:#}"));
    json!({
        "mode": c["mode"], "fraction": c["fraction"], "slice": c["slice"],
        "workers": c["workers"], "queue_capacity": c["queue_capacity"],
        "timeout_ms": c["timeout_ms"], "low_priority": c["low_priority"],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_canary_returns_with_its_settings_and_users() {
    const KEYS: usize = 120;
    let name = "canaries";
    let mut extra = deployment(name, BC, 1, &[], "mode = \"manual\"", "");
    extra.push_str(&format!(
        r#"
[deployments.{name}.routing]
seed = 5

[[deployments.{name}.challengers]]
model = "breast_cancer"
version = 3
mode = "canary"
fraction = 0.3

[[deployments.{name}.challengers]]
model = "breast_cancer"
version = 2
mode = "canary"
fraction = 0.2
workers = 2
queue_capacity = 100
timeout_ms = 30000
low_priority = false
"#
    ));
    let ts = TestServer::start_with("", &extra).await;
    let before = ts.deployment(name).await;
    let v2_before = settings(&before, 2);
    let v3_before = settings(&before, 3);
    assert_eq!(v2_before["slice"], json!([[0.3, 0.3 + 0.2]]), "{before:#}");
    let users_before = versions_by_key(&ts, name, KEYS).await;
    assert!(users_before.iter().any(|v| v == "2"), "{users_before:?}");

    let (status, body) = ts
        .post_json(
            &format!("/admin/deployments/{name}/promote"),
            &json!({ "model": BC, "version": 2, "by": "alice" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(is_champion(&body, BC, 2), "{body:#}");
    // The previous champion shadows (for keep_previous_secs), as always.
    assert_eq!(
        challenger_of(&body, BC, 1).expect("v1 shadows")["mode"],
        "shadow"
    );
    assert_eq!(
        settings(&body, 3),
        v3_before,
        "the other canary is untouched"
    );

    let (status, body) = ts
        .post_json(
            &format!("/admin/deployments/{name}/rollback"),
            &json!({ "by": "alice", "reason": "undo" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(is_champion(&body, BC, 1), "{body:#}");
    assert!(challenger_of(&body, BC, 1).is_none(), "{body:#}");
    assert_eq!(settings(&body, 2), v2_before, "v2 is the canary it was");
    assert_eq!(settings(&body, 3), v3_before);
    assert_eq!(
        versions_by_key(&ts, name, KEYS).await,
        users_before,
        "every user is back on the model it had before the promotion"
    );

    let h = history(&ts, name).await;
    let r = h.last().expect("a record");
    assert_eq!(r["action"], "rollback", "{r:#}");
    assert_eq!(r["from"], model_ref(BC, 2));
    assert_eq!(r["changes"]["demoted"]["became"], "canary", "{r:#}");
    assert_eq!(r["challenger"]["mode"], "canary", "{r:#}");
    assert_eq!(r["challenger"]["fraction"], 0.2, "{r:#}");
    assert_eq!(r["challenger"]["workers"], 2, "{r:#}");
    ts.stop().await;
}
