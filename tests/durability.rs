//! Durable state through a crash and a graceful restart: the real binary
//! serves, takes traffic, a challenger added through the admin API and
//! labels (each acknowledged with a 200); then it is killed with SIGKILL (or
//! stopped with SIGTERM) and started again on the same data directory. Every
//! label is still there (posting it again answers "duplicate"), every
//! deployment change is still there, and the admin evaluation (metrics per
//! model and window, coverage, agreement) is identical to before — and so
//! are each member's traffic counters and latency evidence (after SIGKILL,
//! once the periodic save holds them), which then keep counting.
//!
//! A restart with an edited config entry resets the deployment to it and
//! records what that dropped in the history.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{
    TestServer, assert_error, breast_cancer_features, breast_cancer_labels, challenger_of,
    challenger_stat, classifier_request, diabetes_features, diabetes_labels, eval_of, json_of,
    logged, models_dir,
};

/// Bound on start-up (the logged address) and on exits.
const TIMEOUT: Duration = Duration::from_secs(120);

/// A `contender --config FILE serve --http-addr 127.0.0.1:0` child; killed
/// when dropped.
struct Served {
    child: Child,
    addr: SocketAddr,
    lines: mpsc::Receiver<String>,
    stderr: Vec<String>,
}

impl Served {
    fn start(config: &Path) -> Served {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_contender"));
        for (key, _) in std::env::vars_os() {
            if let Some(k) = key.to_str()
                && k.starts_with("CONTENDER_")
                && k != "CONTENDER_CACHE_DIR"
            {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .current_dir(config.parent().expect("the config's directory"))
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .arg("--config")
            .arg(config)
            .args(["serve", "--http-addr", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("contender serve starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut served = Served {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            lines,
            stderr: Vec::new(),
        };
        let deadline = Instant::now() + TIMEOUT;
        let line = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match served.lines.recv_timeout(left) {
                Ok(line) => {
                    served.stderr.push(line.clone());
                    if line.contains("listening") && line.contains("addr=") {
                        break line;
                    }
                }
                Err(e) => panic!(
                    "no `listening addr=` line ({e}); stderr:\n{}",
                    served.stderr.join("\n")
                ),
            }
        };
        served.addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no addr=IP:PORT in {line:?}"));
        served
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Sends `signal` and waits (bounded) for the exit.
    fn stop_with(&mut self, signal: &str) -> ExitStatus {
        self.signal(signal);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
                    self.stderr.push(line);
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit {TIMEOUT:?} after SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Writes the configuration: breast_cancer (shadow v2) and diabetes, models
/// loaded on demand, the store in `<dir>/data` (a path relative to the file).
fn write_config(dir: &Path) -> PathBuf {
    write_config_with(dir, "")
}

/// [`write_config`] with `extra` TOML appended.
fn write_config_with(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("contender.toml");
    let text = format!(
        r#"
[server]
http_addr = "127.0.0.1:0"
drain_timeout_secs = 10

[repository]
path = {models:?}
preload = "deployed"

[store]
data_dir = "data"

[deployments.breast_cancer.champion]
model = "breast_cancer"
version = 1

[[deployments.breast_cancer.challengers]]
model = "breast_cancer"
version = 2
mode = "shadow"
queue_capacity = 1024
timeout_ms = 60000

[deployments.diabetes.champion]
model = "diabetes"
version = 1
{extra}
"#,
        models = models_dir().display().to_string(),
    );
    std::fs::write(&path, text).expect("write the config");
    path
}

async fn start(config: &Path) -> (Served, TestServer) {
    let served = tokio::task::block_in_place(|| Served::start(config));
    let ts = TestServer::attach(served.addr).await;
    (served, ts)
}

/// Waits until every challenger the deployment lists is live.
async fn wait_challengers_live(ts: &TestServer) -> Value {
    ts.wait_deployment("breast_cancer", "every challenger is live", |d| {
        d["challengers"]
            .as_array()
            .is_some_and(|cs| cs.iter().all(|c| c["live"] == true))
    })
    .await
}

fn challengers(d: &Value) -> Vec<(u64, String)> {
    d["challengers"]
        .as_array()
        .expect("challengers")
        .iter()
        .map(|c| {
            (
                c["version"].as_u64().expect("version"),
                c["mode"].as_str().expect("mode").to_owned(),
            )
        })
        .collect()
}

/// Every label posted, as it was posted: (deployment, body).
type Posted = Vec<(&'static str, Value)>;

/// Each member's traffic counters and p99 latency, champion first:
/// `[model, version, stats]`.
fn member_stats(d: &Value) -> Vec<Value> {
    std::iter::once(&d["champion"])
        .chain(d["challengers"].as_array().expect("challengers"))
        .map(|m| json!([m["model"], m["version"], m["stats"]]))
        .collect()
}

/// The members' counters as the store holds them: `[model, version,
/// served, mirrored, dropped, errors, timeouts, rejected, completed]`.
fn stored_counters(db: &Path, deployment: &str) -> Vec<Value> {
    let conn = rusqlite::Connection::open(db).expect("open the store");
    let mut stmt = conn
        .prepare(
            "SELECT model, version, served, mirrored, dropped, errors, timeouts, rejected, completed
             FROM member_stats WHERE deployment = ?1 ORDER BY model, version",
        )
        .expect("the store has member counters");
    stmt.query_map([deployment], |r| {
        let mut row = vec![json!(r.get::<_, String>(0)?)];
        for i in 1..9 {
            row.push(json!(r.get::<_, u64>(i)?));
        }
        Ok(Value::Array(row))
    })
    .expect("query")
    .collect::<Result<_, _>>()
    .expect("rows")
}

/// The same counters, from the admin API.
fn live_counters(d: &Value) -> Vec<Value> {
    let mut rows: Vec<Value> = member_stats(d)
        .into_iter()
        .map(|m| {
            let s = &m[2];
            json!([
                m[0],
                m[1],
                s["served"],
                s["mirrored"],
                s["dropped"],
                s["errors"],
                s["timeouts"],
                s["rejected"],
                s["completed"]
            ])
        })
        .collect();
    rows.sort_by_key(|r| (r[0].as_str().map(str::to_owned), r[1].as_u64()));
    rows
}

/// Waits (bounded) until the store holds every member's counters as the
/// admin API shows them: what a SIGKILL then keeps.
async fn wait_counters_saved(ts: &TestServer, db: &Path) {
    for name in ["breast_cancer", "diabetes"] {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let live = live_counters(&ts.deployment(name).await);
            let stored = tokio::task::block_in_place(|| stored_counters(db, name));
            if live == stored {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: counters not saved within {TIMEOUT:?}\nlive: {live:?}\nstored: {stored:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The state that must survive: each deployment's evaluation, challengers
/// and members' traffic counters, and the prediction log's row count.
async fn durable_view(ts: &TestServer) -> Value {
    let (status, all) = ts.get_json("/admin/deployments").await;
    assert_eq!(status, 200, "{all}");
    let deployments: Vec<Value> = all["deployments"]
        .as_array()
        .expect("deployments")
        .iter()
        .map(|d| {
            json!({
                "name": d["name"],
                "champion": [d["champion"]["model"], d["champion"]["version"]],
                "challengers": challengers(d),
                "evaluation": d["evaluation"],
                "member_stats": member_stats(d),
                "prediction_log_rows": all["gateway"]["prediction_log"]["rows"],
            })
        })
        .collect();
    json!(deployments)
}

/// Traffic, a challenger added at run time (and, when `remove_v2`, one
/// removed), and labels; returns what was posted and the durable view.
async fn before_the_stop(ts: &TestServer, remove_v2: bool) -> (Posted, Value) {
    let d = wait_challengers_live(ts).await;
    assert_eq!(challengers(&d), [(2, "shadow".to_owned())]);
    let rows = breast_cancer_features();
    let truth = breast_cancer_labels();
    let split = 60;

    let mut answers = ts.infer_rows("breast_cancer", &rows[..split]).await;
    let (status, d) = ts
        .post_json(
            "/admin/deployments/breast_cancer/challengers",
            &json!({"model": "breast_cancer", "version": 3, "mode": "shadow",
                    "queue_capacity": 1024, "timeout_ms": 60000}),
        )
        .await;
    assert_eq!(status, 201, "{d}");
    assert_eq!(challenger_of(&d, "breast_cancer", 3).unwrap()["live"], true);
    answers.extend(ts.infer_rows("breast_cancer", &rows[split..]).await);

    let diabetes_rows = diabetes_features();
    let diabetes_truth = diabetes_labels();
    let batch = ts
        .infer_ok("diabetes", &classifier_request(&diabetes_rows), None)
        .await;

    let n = rows.len() as u64;
    let later = n - split as u64;
    ts.wait_deployment("breast_cancer", "every prediction is logged", |d| {
        logged(d, "breast_cancer", 1) == n
            && logged(d, "breast_cancer", 2) == n
            && logged(d, "breast_cancer", 3) == later
            && eval_of(d, "breast_cancer", 3)
                .is_some_and(|m| m["compared_with_champion"].as_u64() == Some(later))
    })
    .await;
    ts.wait_deployment("diabetes", "every prediction is logged", |d| {
        logged(d, "diabetes", 1) == diabetes_rows.len() as u64
    })
    .await;
    // Every mirrored copy is counted as answered.
    let bc = ts
        .wait_deployment("breast_cancer", "every mirrored copy is counted", |d| {
            challenger_stat(d, "breast_cancer", 2, "completed") == n
                && challenger_stat(d, "breast_cancer", 3, "completed") == later
        })
        .await;
    assert_eq!(bc["champion"]["stats"]["served"], n, "{bc}");
    assert!(bc["champion"]["stats"]["p99_us"].as_f64().is_some(), "{bc}");

    if remove_v2 {
        let r = ts
            .client
            .delete(ts.url("/admin/deployments/breast_cancer/challengers/breast_cancer/2"))
            .send()
            .await
            .expect("DELETE");
        let (status, d) = json_of(r).await;
        assert_eq!(status, 200, "{d}");
    }

    // Labels: some one at a time (one by class name), the rest in batches;
    // every one acknowledged.
    let mut posted: Posted = Vec::new();
    for (i, a) in answers.iter().enumerate().take(20) {
        let label = if i == 0 {
            json!(["malignant", "benign"][truth[0] as usize])
        } else {
            json!(truth[i])
        };
        let body = json!({"id": a.id, "label": label});
        let (status, r) = ts.feedback("breast_cancer", &body).await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["status"], "accepted", "{r}");
        posted.push(("breast_cancer", body));
    }
    let items: Vec<Value> = answers
        .iter()
        .zip(&truth)
        .skip(20)
        .map(|(a, t)| json!({"id": a.id, "label": t}))
        .collect();
    let body = json!({ "labels": items });
    let (status, r) = ts.feedback("breast_cancer", &body).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["summary"]["accepted"], n - 20, "{}", r["summary"]);
    posted.push(("breast_cancer", body));
    let items: Vec<Value> = diabetes_truth
        .iter()
        .enumerate()
        .map(|(row, t)| json!({"id": batch.id, "row": row, "label": t}))
        .collect();
    let body = json!(items);
    let (status, r) = ts.feedback("diabetes", &body).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        r["summary"]["accepted"],
        diabetes_truth.len() as u64,
        "{}",
        r["summary"]
    );
    posted.push(("diabetes", body));

    let view = durable_view(ts).await;
    // Sanity: the view holds what was done.
    let bc = &view[0];
    assert_eq!(bc["name"], "breast_cancer");
    assert_eq!(bc["evaluation"]["rows_labelled"], n, "{bc}");
    assert_eq!(view[1]["evaluation"]["rows_labelled"], 111, "{view}");
    (posted, view)
}

/// After the restart: the same durable view, every label a duplicate (and
/// still the same view), and a different label refused.
async fn after_the_restart(ts: &TestServer, posted: &Posted, before: &Value) {
    wait_challengers_live(ts).await;
    let after = durable_view(ts).await;
    assert_eq!(
        &after, before,
        "the durable state changed across the restart\nbefore: {before:#}\nafter: {after:#}"
    );
    for (deployment, body) in posted {
        let (status, r) = ts.feedback(deployment, body).await;
        assert_eq!(status, 200, "{r}");
        if body.get("id").is_some() {
            assert_eq!(r["status"], "duplicate", "{body} -> {r}");
        } else {
            let s = &r["summary"];
            let total = r["results"].as_array().expect("results").len() as u64;
            assert_eq!(s["duplicate"], total, "{deployment}: {s}");
        }
    }
    assert_eq!(
        &durable_view(ts).await,
        before,
        "duplicates changed the state"
    );
    // The stored label is the one posted: another one conflicts.
    let (_, first) = &posted[0];
    let mut other = first.clone();
    other["label"] = json!(if first["label"] == "benign" {
        "malignant"
    } else {
        "benign"
    });
    let (status, r) = ts.feedback("breast_cancer", &other).await;
    assert_error(status, &r, 409, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_label_or_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path());
    let (mut served, ts) = start(&config).await;
    let (posted, before) = before_the_stop(&ts, false).await;
    assert_eq!(
        before[0]["challengers"],
        json!([[2, "shadow"], [3, "shadow"]]),
        "{before}"
    );
    let db = dir.path().join("data").join("contender.db");
    // Counters are saved every few seconds; what the last save holds survives.
    wait_counters_saved(&ts, &db).await;
    let status = tokio::task::block_in_place(|| served.stop_with("KILL"));
    assert!(!status.success(), "SIGKILL: {status:?}");
    drop(served);
    assert!(db.is_file());

    let (mut served, ts) = start(&config).await;
    after_the_restart(&ts, &posted, &before).await;
    // Counting resumes from the restored values.
    let saved = &before[0]["member_stats"];
    assert_eq!(saved[1][1], 2, "{saved}");
    let (served_before, completed_before) = (
        saved[0][2]["served"].as_u64().expect("served"),
        saved[1][2]["completed"].as_u64().expect("completed"),
    );
    let rows = breast_cancer_features();
    ts.infer_rows("breast_cancer", &rows[..1]).await;
    ts.wait_deployment("breast_cancer", "one more request is counted", |d| {
        d["champion"]["stats"]["served"].as_u64() == Some(served_before + 1)
            && challenger_stat(d, "breast_cancer", 2, "completed") == completed_before + 1
    })
    .await;
    let status = tokio::task::block_in_place(|| served.stop_with("TERM"));
    assert!(status.success(), "{status:?}\n{}", served.stderr.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_keeps_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path());
    let (mut served, ts) = start(&config).await;
    let (posted, before) = before_the_stop(&ts, true).await;
    assert_eq!(before[0]["challengers"], json!([[3, "shadow"]]), "{before}");
    let status = tokio::task::block_in_place(|| served.stop_with("TERM"));
    assert!(status.success(), "{status:?}\n{}", served.stderr.join("\n"));
    drop(served);

    let (mut served, ts) = start(&config).await;
    after_the_restart(&ts, &posted, &before).await;
    let status = tokio::task::block_in_place(|| served.stop_with("TERM"));
    assert!(status.success(), "{status:?}\n{}", served.stderr.join("\n"));
}

async fn history(ts: &TestServer, deployment: &str) -> Vec<Value> {
    let (status, h) = ts
        .get_json(&format!("/admin/deployments/{deployment}/history"))
        .await;
    assert_eq!(status, 200, "{h}");
    h["history"].as_array().expect("history").clone()
}

/// `contender --config FILE history DEPLOYMENT --url URL`; its stdout.
fn history_command(config: &Path, deployment: &str, ts: &TestServer) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_contender"))
        .current_dir(config.parent().expect("the config's directory"))
        .env("NO_COLOR", "1")
        .env_remove("CONTENDER_URL")
        .arg("--config")
        .arg(config)
        .args(["history", deployment, "--url", &ts.base])
        .stdin(Stdio::null())
        .output()
        .expect("contender history runs");
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_config_entry_resets_the_deployment_and_says_what_it_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path());
    let (mut served, ts) = start(&config).await;
    wait_challengers_live(&ts).await;
    let (status, d) = ts
        .post_json(
            "/admin/deployments/breast_cancer/challengers",
            &json!({"model": "breast_cancer", "version": 3, "mode": "shadow",
                    "by": "alice", "reason": "try v3"}),
        )
        .await;
    assert_eq!(status, 201, "{d}");
    let status = tokio::task::block_in_place(|| served.stop_with("TERM"));
    assert!(status.success(), "{status:?}\n{}", served.stderr.join("\n"));
    drop(served);

    // Only promotion.min_pairs changes in the breast_cancer entry.
    let config = write_config_with(
        dir.path(),
        "[deployments.breast_cancer.promotion]\nmin_pairs = 123\n",
    );
    let (mut served, ts) = start(&config).await;
    let d = wait_challengers_live(&ts).await;
    assert_eq!(challengers(&d), [(2, "shadow".to_owned())], "{d}");
    let h = history(&ts, "breast_cancer").await;
    let actions: Vec<&str> = h.iter().filter_map(|r| r["action"].as_str()).collect();
    assert_eq!(actions, ["challenger_added", "config_changed"], "{h:#?}");
    let r = &h[1];
    assert_eq!(r["trigger"], json!({"kind": "config"}), "{r}");
    assert_eq!(r["changes"]["config_keys"], json!(["promotion.min_pairs"]));
    assert_eq!(
        r["changes"]["challengers_dropped"],
        json!([{"challenger": h[0]["challenger"], "added_at_run_time": true}]),
        "{r}"
    );
    let reason = r["reason"].as_str().expect("reason");
    for needle in [
        "promotion.min_pairs",
        "challenger breast_cancer@3 dropped (added at run time)",
    ] {
        assert!(reason.contains(needle), "{reason:?} lacks {needle:?}");
    }
    // The state it replaced: champion v1 with challengers v2 and v3.
    assert_eq!(r["config"]["challengers"].as_array().map(Vec::len), Some(2));
    // The unchanged deployment records nothing.
    assert!(history(&ts, "diabetes").await.is_empty());
    // `contender history` shows it.
    let text = tokio::task::block_in_place(|| history_command(&config, "breast_cancer", &ts));
    let line = text
        .lines()
        .find(|l| l.contains("config_changed"))
        .unwrap_or_else(|| panic!("no config_changed line:\n{text}"));
    assert!(line.contains("config"), "{line}");
    assert!(line.contains("breast_cancer@3 dropped"), "{line}");
    let status = tokio::task::block_in_place(|| served.stop_with("TERM"));
    assert!(status.success(), "{status:?}\n{}", served.stderr.join("\n"));
    drop(served);

    // The same config again: nothing is reset, nothing recorded.
    let (mut served, ts) = start(&config).await;
    wait_challengers_live(&ts).await;
    assert_eq!(history(&ts, "breast_cancer").await, h);
    let status = tokio::task::block_in_place(|| served.stop_with("TERM"));
    assert!(status.success(), "{status:?}\n{}", served.stderr.join("\n"));
}
