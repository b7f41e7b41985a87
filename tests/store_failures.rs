//! A store contender cannot use is refused at start, never served with
//! predictions silently lost: the data directory held by another contender,
//! the database locked by another process, or read-only. At run time a
//! reused request id is counted, and a label whose served answer is gone
//! from the log expires instead of joining the other models alone.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use contender::Config;
use contender::deployment::StartError;
use contender::server::{BindError, Server};
use serde_json::{Value, json};
use support::{TestServer, breast_cancer_features, classifier_request, logged, test_config};

/// Binds `config`, expecting start-up to be refused for `store.data_dir`;
/// returns the reason.
async fn refused(config: Config) -> String {
    match Server::bind(config).await {
        Ok(_) => panic!("the server started on a data directory it cannot use"),
        Err(BindError::Start(StartError::Config(e))) => {
            assert_eq!(e.key, "store.data_dir", "{e}");
            e.reason
        }
        Err(e) => panic!("refused, but not for store.data_dir: {e}"),
    }
}

fn config_in(dir: &Path) -> Config {
    let mut c = test_config("", "");
    c.store.data_dir = dir.to_path_buf();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_contender_on_the_same_data_dir_refuses_to_start() {
    let data = tempfile::tempdir().expect("a data directory");
    let ts = TestServer::start_in(config_in(data.path())).await;
    let reason = refused(config_in(data.path())).await;
    assert!(
        reason.contains(&data.path().display().to_string()),
        "{reason}"
    );
    assert!(
        reason.contains(&format!("pid {}", std::process::id())),
        "{reason}"
    );
    // A clean shutdown releases the directory: it starts again.
    ts.stop().await;
    let ts = TestServer::start_in(config_in(data.path())).await;
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_another_process_holds_is_refused_at_start() {
    let data = tempfile::tempdir().expect("a data directory");
    let db = data.path().join("contender.db");
    let other = rusqlite::Connection::open(&db).expect("opens");
    other
        .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x); BEGIN EXCLUSIVE;")
        .expect("holds the database");
    let reason = refused(config_in(data.path())).await;
    assert!(reason.contains("locked by another process"), "{reason}");
    // Released, the same directory serves.
    other.execute_batch("ROLLBACK").expect("releases");
    drop(other);
    let ts = TestServer::start_in(config_in(data.path())).await;
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_is_refused_at_start() {
    let data = tempfile::tempdir().expect("a data directory");
    let ts = TestServer::start_in(config_in(data.path())).await;
    ts.stop().await;
    let db = data.path().join("contender.db");
    let mut perms = std::fs::metadata(&db).expect("the database").permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(&db, perms).expect("chmod a-w");
    if std::fs::OpenOptions::new().write(true).open(&db).is_ok() {
        // root (CAP_DAC_OVERRIDE) writes a read-only file anyway; the check
        // itself is covered by store::writer::tests::a_read_only_database_is_refused.
        eprintln!("skipped: this user can write a read-only file (running as root)");
        return;
    }
    let reason = refused(config_in(data.path())).await;
    assert!(reason.contains("read-only"), "{reason}");
}

/// The gateway section of `GET /admin/deployments`, once `done` holds.
async fn wait_gateway(ts: &TestServer, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = ts.get_json("/admin/deployments").await;
        assert_eq!(status, 200, "{body}");
        if done(&body["gateway"]) {
            return body["gateway"].clone();
        }
        assert!(Instant::now() < deadline, "not settled: {body:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_request_id_is_counted_and_the_first_request_kept() {
    let ts = TestServer::start().await;
    let rows = breast_cancer_features();
    let mut first = classifier_request(&rows[0..1]);
    first["id"] = json!("order-7");
    let mut second = classifier_request(&rows[1..3]);
    second["id"] = json!("order-7");
    ts.infer_ok("breast_cancer", &first, None).await;
    ts.infer_ok("breast_cancer", &second, None).await;
    // Row 0 of the second request is not logged; its row 1 is new.
    let g = wait_gateway(&ts, |g| g["prediction_log"]["rows"] == 2).await;
    assert_eq!(g["prediction_log"]["duplicate_ids"], 1, "{g}");
    assert_eq!(g["prediction_log"]["write_failed"], 0, "{g}");
    assert_eq!(g["prediction_log"]["dropped"], 0, "{g}");
    let metrics = ts.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("contender_prediction_log_duplicate_ids_total ")),
        "{metrics}"
    );
    // The label joins the first request's prediction.
    let (status, body) = ts
        .feedback("breast_cancer", &json!({"id": "order-7", "label": 1}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "accepted", "{body}");
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_whose_served_answer_was_evicted_joins_the_rest() {
    let shadow = r#"
[[deployments.breast_cancer.challengers]]
model = "breast_cancer"
version = 2
mode = "shadow"
queue_capacity = 1024
timeout_ms = 60000
"#;
    let ts = TestServer::start_with("", shadow).await;
    let rows = breast_cancer_features();
    let answers = ts.infer_rows("breast_cancer", &rows[0..2]).await;
    ts.wait_deployment("breast_cancer", "both models' rows logged", |d| {
        logged(d, "breast_cancer", 1) == 2 && logged(d, "breast_cancer", 2) == 2
    })
    .await;
    // What the size cap's sweep may do: the served row evicted, the
    // shadow's kept.
    let db = ts
        .data_dir
        .as_ref()
        .expect("the harness made the data directory")
        .path()
        .join("contender.db");
    let conn = rusqlite::Connection::open(db).expect("opens");
    conn.busy_timeout(Duration::from_secs(30)).expect("timeout");
    let n = conn
        .execute(
            "DELETE FROM predictions WHERE request_id = ?1 AND served = 1",
            [&answers[0].id],
        )
        .expect("deleted");
    assert_eq!(n, 1);
    drop(conn);
    let (status, body) = ts
        .feedback("breast_cancer", &json!({"id": answers[0].id, "label": 1}))
        .await;
    // Accepted, joined to the shadow's row alone, and saying so.
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "accepted", "{body}");
    let message = body["message"].as_str().unwrap_or("");
    assert!(message.contains("joined to breast_cancer@2;"), "{body}");
    assert!(
        message.contains("no longer in the prediction log"),
        "{body}"
    );
    // The other request, whole, joins both models.
    let (status, body) = ts
        .feedback("breast_cancer", &json!({"id": answers[1].id, "label": 1}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("message").is_none(), "{body}");
    let d = ts.deployment("breast_cancer").await;
    for (v, labelled) in [(1, 1), (2, 2)] {
        let m = support::eval_of(&d, "breast_cancer", v).expect("evaluated");
        assert_eq!(m["labelled"], labelled, "v{v}: {m}");
    }
    ts.stop().await;
}
