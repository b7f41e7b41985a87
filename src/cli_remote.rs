//! CLI commands that talk to a running gateway over its admin API.

use std::io::Write as _;
use std::process::ExitCode;

use serde_json::Value;

use crate::cli::Remote;
use crate::config::Config;

/// The base URL: `--url`, else the configured listen address (0.0.0.0 → 127.0.0.1).
pub fn base_url(config: &Config, remote: &Remote) -> String {
    if let Some(url) = &remote.url {
        return url.trim_end_matches('/').to_owned();
    }
    let mut addr = config.server.http_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}")
}

/// Sends one request and returns the JSON body, or a message for the user.
pub fn call(method: reqwest::Method, url: &str, body: Option<Value>) -> Result<Value, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|e| e.to_string())?;
        let mut req = client.request(method, url);
        if let Ok(token) = std::env::var("CONTENDER_ADMIN_TOKEN")
            && !token.is_empty()
        {
            req = req.bearer_auth(token);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("cannot reach the gateway at {url}: {e}"))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            Ok(v)
        } else {
            let msg = v
                .get("error")
                .and_then(Value::as_str)
                .map_or_else(|| v.to_string(), str::to_owned);
            Err(format!("{status}: {msg}"))
        }
    })
}

fn fmt_opt(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or_else(|| "-".into(), |x| format!("{x:.digits$}"))
}

fn table(out: &mut impl std::io::Write, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let _ = writeln!(out, "{}", line(&header));
    for row in rows {
        let _ = writeln!(out, "{}", line(row));
    }
}

/// Prints one deployment as a person reads it.
pub fn print_deployment(out: &mut impl std::io::Write, d: &Value) {
    let ev = &d["evaluation"];
    let _ = writeln!(
        out,
        "deployment {}  ({})  champion {}@{}",
        d["name"].as_str().unwrap_or("?"),
        if d["ready"].as_bool() == Some(true) {
            "ready"
        } else {
            "not ready"
        },
        d["champion"]["model"].as_str().unwrap_or("?"),
        d["champion"]["version"],
    );
    let _ = writeln!(
        out,
        "  rows served {}  labelled {}  coverage {}  window {} labels",
        ev["rows_served"],
        ev["rows_labelled"],
        ev["label_coverage"]
            .as_f64()
            .map_or_else(|| "-".into(), |c| format!("{:.1}%", c * 100.0)),
        ev["window_labels"],
    );
    let mut members = vec![d["champion"].clone()];
    members.extend(d["challengers"].as_array().cloned().unwrap_or_default());
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            let model = m["model"].as_str().unwrap_or("?");
            let version = m["version"].as_u64().unwrap_or(0);
            let e = ev["models"]
                .as_array()
                .and_then(|ms| {
                    ms.iter()
                        .find(|x| x["model"] == model && x["version"] == version)
                })
                .cloned()
                .unwrap_or(Value::Null);
            let s = &m["stats"];
            let role = m["role"]
                .as_str()
                .or(m["mode"].as_str())
                .unwrap_or("champion");
            // A challenger that is not running is marked, never shown as
            // a working shadow or canary.
            let role = if m["live"] == false {
                format!("{role}:DOWN")
            } else {
                role.to_owned()
            };
            let share = m["fraction"]
                .as_f64()
                .map_or_else(|| "-".into(), |f| format!("{:.0}%", f * 100.0));
            let (w, c) = (&e["window"], &e["cumulative"]);
            let quality = if c["accuracy"].is_number() {
                format!(
                    "{} / {}",
                    fmt_opt(&w["accuracy"], 4),
                    fmt_opt(&c["accuracy"], 4)
                )
            } else if c["mae"].is_number() {
                format!("mae {} / {}", fmt_opt(&w["mae"], 3), fmt_opt(&c["mae"], 3))
            } else {
                "-".into()
            };
            vec![
                format!("{model}@{version}"),
                role,
                share,
                s["served"].to_string(),
                s["mirrored"].to_string(),
                s["dropped"].to_string(),
                format!("{}/{}", s["errors"], s["timeouts"]),
                e["labelled"].as_u64().unwrap_or(0).to_string(),
                quality,
                fmt_opt(&w["log_loss"], 4),
                e["agreement_with_champion"]
                    .as_f64()
                    .map_or_else(|| "-".into(), |a| format!("{:.1}%", a * 100.0)),
            ]
        })
        .collect();
    table(
        out,
        &[
            "MODEL",
            "ROLE",
            "SHARE",
            "SERVED",
            "MIRRORED",
            "DROPPED",
            "ERR/TIMEOUT",
            "LABELLED",
            "ACCURACY (window / all)",
            "LOG LOSS (window)",
            "AGREES",
        ],
        &rows,
    );
    print_comparisons(out, d);
    for c in d["challengers"].as_array().into_iter().flatten() {
        if c["live"] == false {
            let _ = writeln!(
                out,
                "  DOWN {}@{}: {}",
                c["model"].as_str().unwrap_or("?"),
                c["version"],
                c["reason"].as_str().unwrap_or("not running")
            );
        }
    }
}

/// A signed effect or bound, 4 decimals.
fn signed(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "-".into(), |x| format!("{x:+.4}"))
}

/// One line per challenger compared with the current champion (overall
/// evidence: pairs, effect with its interval, always-valid p-value,
/// decision, and the segments where the challenger is worse), then what
/// the promotion policy recommends.
fn print_comparisons(out: &mut impl std::io::Write, d: &Value) {
    let champion = format!(
        "{}@{}",
        d["champion"]["model"].as_str().unwrap_or("?"),
        d["champion"]["version"]
    );
    let current: Vec<&Value> = d["evaluation"]["comparisons"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["champion"].as_str() == Some(champion.as_str()))
        .collect();
    if !current.is_empty() {
        let _ = writeln!(
            out,
            "  comparisons with the champion {champion} (effect > 0: the challenger is better):"
        );
    }
    for c in current {
        let worse: Vec<&str> = c["segments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["decision"] == "champion_better")
            .filter_map(|s| s["segment"].as_str())
            .collect();
        let _ = writeln!(
            out,
            "    {}  {}  {} pairs  effect {} [{}, {}]  p = {}  {}{}",
            c["challenger"].as_str().unwrap_or("?"),
            c["metric"].as_str().unwrap_or("?"),
            c["pairs"],
            signed(&c["effect"]),
            signed(&c["ci_low"]),
            signed(&c["ci_high"]),
            fmt_opt(&c["p_value"], 4),
            c["decision"].as_str().unwrap_or("?"),
            if worse.is_empty() {
                String::new()
            } else {
                format!("  (worse on segment {})", worse.join(", "))
            }
        );
    }
    let p = &d["promotion"];
    let mode = p["policy"]["mode"].as_str().unwrap_or("?");
    let recommendation = p["recommendation"].as_str().unwrap_or(if mode == "off" {
        "none (promotion policy off)"
    } else {
        "none"
    });
    let _ = writeln!(out, "  recommendation ({mode}): {recommendation}");
}

/// Prints what every deployment shares: the gateway's one prediction log,
/// with every counter the gateway reports (new ones appear as `name: value`).
fn print_gateway(out: &mut impl std::io::Write, g: &Value) {
    let Some(log) = g["prediction_log"].as_object() else {
        return;
    };
    // The three counters every gateway has, worded; any other as `name: value`.
    const WORDED: [&str; 3] = ["rows", "dropped", "evicted"];
    let mut parts: Vec<String> = WORDED
        .iter()
        .filter_map(|k| log.get(*k).map(|v| format!("{v} {k}")))
        .collect();
    parts.extend(
        log.iter()
            .filter(|(k, _)| !WORDED.contains(&k.as_str()))
            .map(|(k, v)| format!("{k}: {v}")),
    );
    let _ = writeln!(
        out,
        "gateway prediction log (all deployments together): {}",
        parts.join(", ")
    );
}

pub fn status(config: &Config, deployment: Option<&str>, remote: &Remote) -> ExitCode {
    let base = base_url(config, remote);
    let url = match deployment {
        Some(d) => format!("{base}/admin/deployments/{d}"),
        None => format!("{base}/admin/deployments"),
    };
    match call(reqwest::Method::GET, &url, None) {
        Ok(v) => {
            let mut out = std::io::stdout().lock();
            if remote.json {
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&v).expect("JSON values serialise")
                );
                return ExitCode::SUCCESS;
            }
            let list = match deployment {
                Some(_) => vec![v.clone()],
                None => v["deployments"].as_array().cloned().unwrap_or_default(),
            };
            for d in &list {
                print_deployment(&mut out, d);
                let _ = writeln!(out);
            }
            print_gateway(&mut out, &v["gateway"]);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("contender: {e}");
            ExitCode::FAILURE
        }
    }
}

fn who() -> Option<String> {
    std::env::var("USER").ok().filter(|u| !u.is_empty())
}

fn print_or_fail(
    result: Result<Value, String>,
    remote: &Remote,
    done: impl FnOnce(&Value) -> String,
) -> ExitCode {
    match result {
        Ok(v) => {
            let mut out = std::io::stdout().lock();
            if remote.json {
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&v).expect("JSON values serialise")
                );
            } else {
                let _ = writeln!(out, "{}", done(&v));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("contender: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn promote(
    config: &Config,
    deployment: &str,
    model: &str,
    reason: Option<String>,
    remote: &Remote,
) -> ExitCode {
    let (name, version) = match model.split_once('@') {
        Some((m, v)) => match v.parse::<u64>() {
            Ok(v) => (m, Some(v)),
            Err(_) => {
                eprintln!("contender: {model:?}: the version after '@' must be a positive integer");
                return ExitCode::from(crate::cli::EXIT_CONFIG);
            }
        },
        None => (model, None),
    };
    let url = format!(
        "{}/admin/deployments/{deployment}/promote",
        base_url(config, remote)
    );
    let body =
        serde_json::json!({ "model": name, "version": version, "by": who(), "reason": reason });
    print_or_fail(call(reqwest::Method::POST, &url, Some(body)), remote, |v| {
        format!(
            "{deployment}: champion is now {}@{}",
            v["champion"]["model"].as_str().unwrap_or("?"),
            v["champion"]["version"]
        )
    })
}

pub fn rollback(
    config: &Config,
    deployment: &str,
    reason: Option<String>,
    remote: &Remote,
) -> ExitCode {
    let url = format!(
        "{}/admin/deployments/{deployment}/rollback",
        base_url(config, remote)
    );
    let body = serde_json::json!({ "by": who(), "reason": reason });
    print_or_fail(call(reqwest::Method::POST, &url, Some(body)), remote, |v| {
        format!(
            "{deployment}: rolled back; champion is now {}@{}",
            v["champion"]["model"].as_str().unwrap_or("?"),
            v["champion"]["version"]
        )
    })
}

fn model_text(v: &Value) -> String {
    match (v["model"].as_str(), v["version"].as_u64()) {
        (Some(m), Some(ver)) => format!("{m}@{ver}"),
        _ => "-".into(),
    }
}

pub fn history(config: &Config, deployment: &str, remote: &Remote) -> ExitCode {
    let url = format!(
        "{}/admin/deployments/{deployment}/history",
        base_url(config, remote)
    );
    print_or_fail(call(reqwest::Method::GET, &url, None), remote, |v| {
        let rows: Vec<Vec<String>> = v["history"]
            .as_array()
            .map(|h| {
                h.iter()
                    .map(|r| {
                        let at = r["at_ms"].as_u64().unwrap_or(0);
                        let when = humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH + std::time::Duration::from_millis(at),
                        )
                        .to_string();
                        let trigger = match r["trigger"]["kind"].as_str() {
                            Some("person") => {
                                format!("person {}", r["trigger"]["name"].as_str().unwrap_or(""))
                            }
                            Some(k) => k.to_owned(),
                            None => "-".into(),
                        };
                        vec![
                            when,
                            r["action"].as_str().unwrap_or("?").to_owned(),
                            trigger.trim().to_owned(),
                            model_text(&r["from"]),
                            model_text(&r["to"]),
                            r["reason"].as_str().unwrap_or("").to_owned(),
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut buf = Vec::new();
        table(
            &mut buf,
            &["WHEN", "ACTION", "TRIGGER", "FROM", "TO", "REASON"],
            &rows,
        );
        String::from_utf8_lossy(&buf).trim_end().to_owned()
    })
}

pub fn drift(config: &Config, deployment: &str, remote: &Remote) -> ExitCode {
    let url = format!(
        "{}/admin/deployments/{deployment}/drift",
        base_url(config, remote)
    );
    print_or_fail(call(reqwest::Method::GET, &url, None), remote, |v| {
        let mut buf = Vec::new();
        let _ = writeln!(
            buf,
            "deployment {deployment}: {}  (champion {}, window {} rows{})",
            v["state"].as_str().unwrap_or("?").to_uppercase(),
            v["champion"].as_str().unwrap_or("-"),
            v["window_rows"],
            if v["enabled"] == Value::Bool(false) {
                ", monitoring off"
            } else {
                ""
            }
        );
        let rows: Vec<Vec<String>> = v["features"]
            .as_array()
            .map(|fs| {
                fs.iter()
                    .map(|f| {
                        vec![
                            f["name"].as_str().unwrap_or("?").to_owned(),
                            f["state"].as_str().unwrap_or("-").to_owned(),
                            fmt_opt(&f["psi"], 3),
                            fmt_opt(&f["ks_p_value"], 4),
                            fmt_opt(&f["wasserstein_normalised"], 3),
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default();
        table(
            &mut buf,
            &["FEATURE", "STATE", "PSI", "KS P", "WASSERSTEIN/STD"],
            &rows,
        );
        for p in v["predictions"].as_array().into_iter().flatten() {
            let _ = writeln!(
                buf,
                "predictions {}: {} (psi {}, chi2 p {})",
                p["model"].as_str().unwrap_or("?"),
                p["state"].as_str().unwrap_or("-"),
                fmt_opt(&p["psi"], 3),
                fmt_opt(&p["chi2_p_value"], 4)
            );
        }
        if let Some(a) = v["accuracy"].as_object() {
            let _ = writeln!(
                buf,
                "accuracy: {} in window vs {} at training ({})",
                fmt_opt(&a["window"], 4),
                fmt_opt(&a["training"], 4),
                a.get("state").and_then(Value::as_str).unwrap_or("-")
            );
        }
        let b = &v["before_labels"];
        if b["estimated_accuracy"].is_number() {
            let _ = writeln!(
                buf,
                "estimated accuracy before labels: {}",
                fmt_opt(&b["estimated_accuracy"], 4)
            );
        }
        for e in v["events"].as_array().into_iter().flatten().rev().take(5) {
            let _ = writeln!(
                buf,
                "event {} at {}: {}",
                e["event"].as_str().unwrap_or("?"),
                e["at_ms"],
                e["reason"].as_str().map(str::to_owned).unwrap_or_else(|| {
                    e["drifted"]
                        .as_array()
                        .map(|d| {
                            d.iter()
                                .filter_map(|x| x["key"].as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default()
                })
            );
        }
        String::from_utf8_lossy(&buf).trim_end().to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn printed(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut buf = Vec::new();
        f(&mut buf);
        String::from_utf8(buf).expect("UTF-8")
    }

    #[test]
    fn every_prediction_log_counter_is_printed_new_ones_by_name() {
        let g = serde_json::json!({ "prediction_log": {
            "rows": 120, "dropped": 2, "evicted": 7,
            "write_failures": 1, "duplicate_ids": 3,
        }});
        let line = printed(|b| print_gateway(b, &g));
        assert_eq!(
            line.trim_end(),
            "gateway prediction log (all deployments together): 120 rows, 2 dropped, 7 evicted, duplicate_ids: 3, write_failures: 1"
        );
    }

    #[test]
    fn comparisons_with_the_current_champion_and_the_recommendation_are_printed() {
        let d = serde_json::json!({
            "champion": { "model": "m", "version": 3 },
            "promotion": { "policy": { "mode": "manual" }, "recommendation": "promote m@1: better" },
            "evaluation": { "comparisons": [
                { "champion": "m@3", "challenger": "m@1", "metric": "accuracy", "pairs": 143,
                  "effect": 0.119, "ci_low": 0.02, "ci_high": 0.2, "p_value": 0.0045,
                  "decision": "challenger_better",
                  "segments": [{ "segment": "eu", "decision": "champion_better" }] },
                { "champion": "m@1", "challenger": "m@2", "metric": "accuracy", "pairs": 9,
                  "effect": 0.0, "ci_low": -1.0, "ci_high": 1.0, "p_value": 1.0,
                  "decision": "collecting", "segments": [] }
            ]}
        });
        let text = printed(|b| print_comparisons(b, &d));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].contains("champion m@3"), "{text}");
        assert_eq!(
            lines[1].trim(),
            "m@1  accuracy  143 pairs  effect +0.1190 [+0.0200, +0.2000]  p = 0.0045  challenger_better  (worse on segment eu)"
        );
        assert_eq!(
            lines[2].trim(),
            "recommendation (manual): promote m@1: better"
        );
    }
}
