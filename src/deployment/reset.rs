//! The audit record of a deployment whose stored state is replaced by its
//! config entry at start (the entry was edited, or the stored state cannot
//! be used): what the reset dropped or changed, for the history.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::StoredDeployment;
use super::promotion::{HistoryRecord, Trigger};
use crate::config::{ChallengerConfig, DeploymentConfig};

/// `config_changed`: the config entry differs from the one the stored state
/// was seeded from, so the deployment starts from the config.
pub(super) fn config_changed(stored: &StoredDeployment, seed: &DeploymentConfig) -> HistoryRecord {
    let mut keys = Vec::new();
    changed_keys(
        "",
        &serde_json::to_value(&stored.seed).unwrap_or(Value::Null),
        &serde_json::to_value(seed).unwrap_or(Value::Null),
        &mut keys,
    );
    record(
        "config_changed",
        format!(
            "the config entry changed since the state was stored ({})",
            keys.join(", ")
        ),
        keys,
        stored,
        seed,
    )
}

/// `state_reset`: the stored state cannot be used (`why`), so the
/// deployment starts from the config.
pub(super) fn state_unusable(
    stored: &StoredDeployment,
    seed: &DeploymentConfig,
    why: &str,
) -> HistoryRecord {
    record(
        "state_reset",
        format!("the stored state is not usable: {why}"),
        Vec::new(),
        stored,
        seed,
    )
}

/// `state_reset`: the stored state cannot be read (`why`); what it held is
/// unknown.
pub(super) fn state_unreadable(seed: &DeploymentConfig, why: &str) -> HistoryRecord {
    HistoryRecord {
        action: "state_reset".into(),
        trigger: Trigger::Config,
        from: None,
        to: None,
        reason: format!(
            "the stored state is unreadable ({why}); the deployment was reset from the config"
        ),
        evidence: None,
        config: seed.clone(),
        challenger: None,
        changes: None,
    }
}

/// Whether two entries of one challenger have the same settings; the slice
/// counts only when the config entry pins one (a canary reset from the
/// config keeps the slice it held).
fn same_settings(stored: &ChallengerConfig, seed: &ChallengerConfig) -> bool {
    if seed.slice.is_empty() {
        ChallengerConfig {
            slice: Vec::new(),
            ..stored.clone()
        } == *seed
    } else {
        stored == seed
    }
}

fn record(
    action: &str,
    why: String,
    config_keys: Vec<String>,
    stored: &StoredDeployment,
    seed: &DeploymentConfig,
) -> HistoryRecord {
    let old = &stored.state;
    let in_list = |list: &[ChallengerConfig], c: &ChallengerConfig| {
        list.iter().any(|x| x.model_ref() == c.model_ref())
    };
    let mut lost = Vec::new();
    let mut dropped = Vec::new();
    for c in &old.challengers {
        if in_list(&seed.challengers, c) {
            continue;
        }
        let at_run_time = !in_list(&stored.seed.challengers, c);
        lost.push(format!(
            "challenger {} dropped{}",
            c.model_ref(),
            if at_run_time {
                " (added at run time)"
            } else {
                ""
            }
        ));
        dropped.push(json!({ "challenger": c, "added_at_run_time": at_run_time }));
    }
    let added: Vec<&ChallengerConfig> = seed
        .challengers
        .iter()
        .filter(|c| !in_list(&old.challengers, c))
        .collect();
    for c in &added {
        lost.push(format!("challenger {} added", c.model_ref()));
    }
    let mut changed = Vec::new();
    for c in &seed.challengers {
        if let Some(o) = old
            .challengers
            .iter()
            .find(|o| o.model_ref() == c.model_ref() && !same_settings(o, c))
        {
            lost.push(format!("challenger {}'s settings replaced", c.model_ref()));
            changed.push(json!({ "from": o, "to": c }));
        }
    }
    let champion_changed = old.champion != seed.champion;
    if champion_changed {
        lost.push(format!(
            "champion {} replaced by {}",
            old.champion, seed.champion
        ));
    }
    let runtime = &stored.runtime;
    if let Some(p) = &runtime.previous {
        lost.push(format!("previous champion {} no longer kept", p.model));
    }
    if !runtime.blocked.is_empty() {
        lost.push(format!(
            "rollback blocks on {} lifted",
            runtime
                .blocked
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let outcome = if lost.is_empty() {
        "; the deployment was reset from the config (nothing set at run time was lost)".to_owned()
    } else {
        format!(
            "; the deployment was reset from the config: {}",
            lost.join("; ")
        )
    };
    HistoryRecord {
        action: action.into(),
        trigger: Trigger::Config,
        from: champion_changed.then(|| old.champion.clone()),
        to: champion_changed.then(|| seed.champion.clone()),
        reason: format!("{why}{outcome}"),
        evidence: None,
        config: old.clone(),
        challenger: None,
        changes: Some(json!({
            "config_keys": config_keys,
            "champion": champion_changed.then(|| json!({ "from": old.champion, "to": seed.champion })),
            "challengers_dropped": dropped,
            "challengers_added": added,
            "challengers_changed": changed,
            "previous_champion_dropped": runtime.previous,
            "blocked_dropped": runtime.blocked,
        })),
    }
}

/// Dotted paths of the keys whose values differ between `a` and `b`
/// (objects are compared key by key; anything else whole).
fn changed_keys(prefix: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(a), Some(b)) => changed_keys(&path, a, b, out),
                    _ => out.push(path),
                }
            }
        }
        _ if a != b => out.push(prefix.to_owned()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ChallengerMode, ModelRef};
    use crate::deployment::{Previous, Runtime};

    fn challenger(version: u64) -> ChallengerConfig {
        ChallengerConfig {
            model: "m".into(),
            version,
            mode: ChallengerMode::Shadow,
            fraction: 1.0,
            workers: 1,
            queue_capacity: 64,
            timeout_ms: 1000,
            low_priority: true,
            slice: Vec::new(),
        }
    }

    fn deployment(champion: u64, challengers: &[u64]) -> DeploymentConfig {
        let text = format!(
            "champion = {{ model = \"m\", version = {champion} }}\n{}",
            challengers
                .iter()
                .map(|v| format!(
                    "[[challengers]]\nmodel = \"m\"\nversion = {v}\nmode = \"shadow\"\n"
                ))
                .collect::<String>()
        );
        toml::from_str(&text).expect("a deployment entry")
    }

    #[test]
    fn a_changed_entry_names_the_keys_and_what_run_time_changes_are_lost() {
        // Seeded with champion 1 and challenger 2; at run time 3 was added
        // and promoted (1 shadows as the previous champion).
        let old_seed = deployment(1, &[2]);
        let mut state = deployment(3, &[2]);
        state.challengers.push(challenger(1));
        let stored = StoredDeployment {
            seed: old_seed.clone(),
            state,
            runtime: Runtime {
                previous: Some(Previous {
                    model: ModelRef {
                        model: "m".into(),
                        version: 1,
                    },
                    until_ms: None,
                }),
                ..Runtime::default()
            },
        };
        let mut seed = old_seed;
        seed.promotion.min_pairs += 1;

        let r = config_changed(&stored, &seed);
        assert_eq!(r.action, "config_changed");
        assert_eq!(r.trigger, Trigger::Config);
        assert_eq!(r.from.as_ref().map(|m| m.version), Some(3));
        assert_eq!(r.to.as_ref().map(|m| m.version), Some(1));
        let changes = r.changes.expect("changes");
        assert_eq!(changes["config_keys"], json!(["promotion.min_pairs"]));
        assert_eq!(
            changes["challengers_dropped"][0]["challenger"]["version"],
            1
        );
        assert_eq!(changes["challengers_dropped"][0]["added_at_run_time"], true);
        assert_eq!(changes["champion"]["from"]["version"], 3);
        assert!(r.reason.contains("promotion.min_pairs"), "{}", r.reason);
        assert!(
            r.reason
                .contains("challenger m@1 dropped (added at run time)"),
            "{}",
            r.reason
        );
        assert!(
            r.reason.contains("champion m@3 replaced by m@1"),
            "{}",
            r.reason
        );
        assert!(r.reason.contains("previous champion m@1"), "{}", r.reason);
    }

    #[test]
    fn nothing_lost_says_so() {
        let old_seed = deployment(1, &[2]);
        let stored = StoredDeployment {
            seed: old_seed.clone(),
            state: old_seed.clone(),
            runtime: Runtime::default(),
        };
        let mut seed = old_seed;
        seed.routing.seed += 1;
        let r = config_changed(&stored, &seed);
        assert_eq!(r.from, None);
        assert!(r.reason.contains("(routing.seed)"), "{}", r.reason);
        assert!(
            r.reason.contains("nothing set at run time was lost"),
            "{}",
            r.reason
        );
    }
}
