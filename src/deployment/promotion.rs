//! Promotion: the policy that acts on the sequential comparisons, manual
//! promotion and rollback, the post-promotion watch, and the audit trail.
//!
//! A promotion replaces the deployment's live set in one atomic step: the
//! new champion is already loaded and warm (it was a challenger), requests
//! in flight finish on the set they started with, and every request is
//! answered by exactly one model version. The previous champion keeps
//! shadowing for `promotion.keep_previous_secs`, so a rollback is the same
//! instant swap back — and while it shadows, the policy watches the new
//! champion against it and rolls back when it is significantly worse.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ChangeError, Deployment, Gateway, Previous};
use crate::clock::now_ms;
use crate::config::{ChallengerConfig, ChallengerMode, DeploymentConfig, ModelRef, PromotionMode};
use crate::evaluation::ComparisonSnapshot;
use crate::evaluation::sequential::Decision;

/// Who asked for a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum Trigger {
    /// The deployment's promotion policy.
    Policy,
    /// A person, through the admin API or the CLI (optionally named).
    Person(Option<String>),
    /// The configuration file, at start: its entry for the deployment
    /// replaced the stored state.
    Config,
}

/// Who asked for a challenger change and why (both optional).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeNote {
    pub by: Option<String>,
    pub reason: Option<String>,
}

/// One entry of the audit trail.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// `promotion`, `rollback`, `promotion_refused`, `challenger_added`,
    /// `challenger_removed`, `previous_champion_retired`, `config_changed`,
    /// `state_reset`.
    pub action: String,
    pub trigger: Trigger,
    pub from: Option<ModelRef>,
    pub to: Option<ModelRef>,
    pub reason: String,
    /// The statistics at that moment (the comparison's evidence, guardrails).
    pub evidence: Option<Value>,
    /// The deployment's configuration in force when it happened.
    pub config: DeploymentConfig,
    /// `challenger_added`/`challenger_removed`: the challenger's settings
    /// (mode, fraction, slice, workers, queue, timeout) added or removed;
    /// `rollback`: the settings the demoted champion has now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenger: Option<ChallengerConfig>,
    /// `config_changed`/`state_reset`: what replacing the stored state with
    /// the config entry changed (config keys, challengers dropped or added,
    /// champion, promotion bookkeeping dropped); `rollback`: what the
    /// demoted champion became (`demoted`: model, mode, fraction, why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<Value>,
}

fn metric_name(m: crate::evaluation::metrics::MetricKind) -> String {
    serde_json::to_value(m)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn key_of(r: &ModelRef) -> (String, u64) {
    (r.model.clone(), r.version)
}

/// How long between checks for expired previous champions.
const TICK: Duration = Duration::from_secs(5);

impl Gateway {
    /// Runs the promotion policy: after every batch of labels that changed a
    /// comparison, and on a timer (to retire previous champions). Ends when
    /// the gateway is dropped.
    pub async fn run_policy(self: Arc<Self>) {
        let Some(mut rx) = self.policy.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(name) => {
                        // Coalesce a burst of notifications.
                        let mut names = vec![name];
                        while let Ok(more) = rx.try_recv() {
                            if !names.contains(&more) {
                                names.push(more);
                            }
                        }
                        for name in names {
                            self.evaluate_policy(&name).await;
                        }
                    }
                    None => return,
                },
                _ = tick.tick() => self.retire_previous().await,
            }
        }
    }

    /// The comparisons of the current champion with each other model.
    fn current_comparisons(
        &self,
        d: &Deployment,
        state: &DeploymentConfig,
    ) -> Vec<ComparisonSnapshot> {
        let champion = key_of(&state.champion);
        self.evaluator()
            .comparisons(&d.name)
            .into_iter()
            .filter(|c| c.key.0 == champion)
            .collect()
    }

    /// Checks the guardrails for promoting `c`'s challenger; the reason when one fails.
    /// The error rate and both p99s come from the members' counters and
    /// histograms since each joined the deployment, restored across
    /// restarts (see `counters`), like the paired comparison itself.
    pub fn guardrails(
        &self,
        d: &Deployment,
        state: &DeploymentConfig,
        c: &ComparisonSnapshot,
    ) -> Result<Value, String> {
        let p = &state.promotion;
        let challenger = ModelRef {
            model: c.key.1.0.clone(),
            version: c.key.1.1,
        };
        let stats = d.member_stats(&challenger);
        let snap = stats.snapshot();
        let attempts = snap.mirrored + snap.served;
        let failures = snap.errors + snap.timeouts;
        let error_rate = if attempts > 0 {
            failures as f64 / attempts as f64
        } else {
            0.0
        };
        if attempts >= 20 && error_rate > p.max_error_rate {
            return Err(format!(
                "{challenger} failed or timed out on {:.2}% of its requests (budget {:.2}%)",
                error_rate * 100.0,
                p.max_error_rate * 100.0
            ));
        }
        let champion_stats = d.member_stats(&state.champion);
        let (cp99, xp99) = (champion_stats.p99_us(), stats.p99_us());
        if let (Some(cp), Some(xp)) = (cp99, xp99)
            && xp > cp * p.max_latency_ratio
        {
            return Err(format!(
                "{challenger}'s p99 latency {xp:.0} µs exceeds {:.1} × the champion's {cp:.0} µs",
                p.max_latency_ratio
            ));
        }
        let min = self.evaluator().segment_min_pairs(&d.name);
        for s in &c.segments {
            if s.evidence.pairs >= min && s.evidence.decision == Decision::ChampionBetter {
                return Err(format!(
                    "{challenger} is significantly worse on segment '{}' (effect {:+.4}, interval [{:+.4}, {:+.4}], p = {:.3}, {} pairs)",
                    s.segment,
                    s.evidence.effect,
                    s.evidence.ci_low,
                    s.evidence.ci_high,
                    s.evidence.p_value,
                    s.evidence.pairs
                ));
            }
        }
        Ok(serde_json::json!({
            "error_rate": error_rate,
            "champion_p99_us": cp99,
            "challenger_p99_us": xp99,
        }))
    }

    /// Acts on the comparisons of one deployment.
    pub async fn evaluate_policy(&self, name: &str) {
        let Some(d) = self.deployment(name) else {
            return;
        };
        let state = d.state();
        let p = state.promotion.clone();
        if p.mode == PromotionMode::Off {
            return;
        }
        let runtime = d.runtime();
        let comparisons = self.current_comparisons(d, &state);
        // The watch: the previous champion, still shadowing, is significantly better.
        if let Some(prev) = &runtime.previous
            && p.auto_rollback
            && let Some(c) = comparisons.iter().find(|c| c.key.1 == key_of(&prev.model))
            && c.decision() == Decision::ChallengerBetter
        {
            let reason = format!(
                "the new champion {} is significantly worse than the previous one {} (effect {:+.4}, p = {:.4})",
                state.champion, prev.model, c.overall.effect, c.overall.p_value
            );
            if let Err(e) = self
                .rollback(
                    name,
                    Trigger::Policy,
                    reason,
                    Some(serde_json::to_value(c).unwrap_or(Value::Null)),
                )
                .await
            {
                tracing::error!(deployment = name, error = %e, "automatic rollback failed");
            }
            return;
        }
        let mut best: Option<(&ComparisonSnapshot, Value)> = None;
        for c in &comparisons {
            let challenger = ModelRef {
                model: c.key.1.0.clone(),
                version: c.key.1.1,
            };
            let is_challenger = state
                .challengers
                .iter()
                .any(|x| x.model_ref() == challenger);
            let is_previous = runtime
                .previous
                .as_ref()
                .is_some_and(|prev| prev.model == challenger);
            if !is_challenger || is_previous || c.decision() != Decision::ChallengerBetter {
                continue;
            }
            if runtime.blocked.contains(&challenger) {
                continue;
            }
            match self.guardrails(d, &state, c) {
                Ok(g) => {
                    if best
                        .as_ref()
                        .is_none_or(|(b, _)| c.overall.effect > b.overall.effect)
                    {
                        best = Some((c, g));
                    }
                }
                Err(reason) => self.refuse(d, &state, &challenger, reason, c).await,
            }
        }
        let Some((c, guard)) = best else {
            self.set_recommendation(d, None);
            return;
        };
        let target = ModelRef {
            model: c.key.1.0.clone(),
            version: c.key.1.1,
        };
        let mut evidence = serde_json::to_value(c).unwrap_or(Value::Null);
        evidence["guardrails"] = guard;
        let reason = format!(
            "{target} is better than {} on {}: effect {:+.4} (interval [{:+.4}, {:+.4}]), always-valid p = {:.4} after {} labelled pairs",
            state.champion,
            metric_name(c.metric),
            c.overall.effect,
            c.overall.ci_low,
            c.overall.ci_high,
            c.overall.p_value,
            c.overall.pairs
        );
        match p.mode {
            PromotionMode::Auto => {
                if let Err(e) = self
                    .promote(name, &target, Trigger::Policy, reason, Some(evidence))
                    .await
                {
                    tracing::error!(deployment = name, error = %e, "automatic promotion failed");
                }
            }
            PromotionMode::Manual => {
                self.set_recommendation(d, Some(format!("promote {target}: {reason}")));
            }
            PromotionMode::Off => {}
        }
    }

    fn set_recommendation(&self, d: &Deployment, r: Option<String>) {
        let mut rt = d.runtime.lock().unwrap_or_else(|e| e.into_inner());
        if rt.recommendation != r {
            if let Some(r) = &r {
                tracing::info!(deployment = %d.name, recommendation = %r, "promotion recommended");
            }
            rt.recommendation = r;
        }
    }

    /// Records a refused promotion once per challenger and reason.
    async fn refuse(
        &self,
        d: &Deployment,
        state: &DeploymentConfig,
        challenger: &ModelRef,
        reason: String,
        c: &ComparisonSnapshot,
    ) {
        let _guard = d.changes.lock().await;
        let mut runtime = d.runtime();
        let key = challenger.to_string();
        if runtime.refused.get(&key) == Some(&reason) {
            return;
        }
        tracing::warn!(deployment = %d.name, challenger = %challenger, reason = %reason, "promotion refused");
        runtime.refused.insert(key, reason.clone());
        let record = HistoryRecord {
            action: "promotion_refused".into(),
            trigger: Trigger::Policy,
            from: Some(state.champion.clone()),
            to: Some(challenger.clone()),
            reason,
            evidence: serde_json::to_value(c).ok(),
            config: state.clone(),
            challenger: None,
            changes: None,
        };
        if let Err(e) = self
            .apply_with(d, state.clone(), runtime, Some(&record))
            .await
        {
            tracing::error!(deployment = %d.name, error = %e, "cannot record a refused promotion");
        }
    }

    /// Makes `target` (a current challenger) the champion. The old champion
    /// becomes a shadow for `keep_previous_secs`.
    pub async fn promote(
        &self,
        name: &str,
        target: &ModelRef,
        trigger: Trigger,
        reason: String,
        evidence: Option<Value>,
    ) -> Result<DeploymentConfig, ChangeError> {
        let d = self
            .deployment(name)
            .ok_or_else(|| ChangeError::NotFound(format!("unknown deployment '{name}'")))?;
        let _guard = d.changes.lock().await;
        let old = d.state();
        if &old.champion == target {
            return Err(ChangeError::Invalid(format!(
                "{target} is already the champion of '{name}'"
            )));
        }
        if !old.challengers.iter().any(|c| &c.model_ref() == target) {
            return Err(ChangeError::NotFound(format!(
                "{target} is not a challenger of '{name}' (challengers: {})",
                old.challengers
                    .iter()
                    .map(|c| c.model_ref().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let mut state = old.clone();
        let previous = state.champion.clone();
        state.champion = target.clone();
        state.challengers.retain(|c| &c.model_ref() != target);
        state.challengers.push(shadow_of(&previous));
        let keep = state.promotion.keep_previous_secs;
        let mut runtime = d.runtime();
        runtime.previous = Some(Previous {
            model: previous.clone(),
            until_ms: (keep > 0).then(|| now_ms() + keep as i64 * 1000),
        });
        runtime.blocked.retain(|b| b != target);
        runtime.refused.clear();
        runtime.recommendation = None;
        let record = HistoryRecord {
            action: "promotion".into(),
            trigger,
            from: Some(previous.clone()),
            to: Some(target.clone()),
            reason,
            evidence,
            config: old,
            challenger: None,
            changes: None,
        };
        let state = self.apply_with(d, state, runtime, Some(&record)).await?;
        tracing::info!(deployment = name, from = %previous, to = %target, "promoted");
        crate::telemetry::promotion(name, "promotion");
        Ok(state)
    }

    /// Makes the previous champion the champion again: the live set as it
    /// was before the promotion. The demoted model goes back to the
    /// challenger it was, with the settings it had then (mode, fraction,
    /// slice — so a canary gets its users back — workers, queue, timeout);
    /// one that was not a challenger before (the champion came from
    /// elsewhere) becomes a shadow of every request, with default settings
    /// and no expiry. Either way the policy will not promote it again by
    /// itself, and the history entry says what it became.
    pub async fn rollback(
        &self,
        name: &str,
        trigger: Trigger,
        reason: String,
        evidence: Option<Value>,
    ) -> Result<DeploymentConfig, ChangeError> {
        let d = self
            .deployment(name)
            .ok_or_else(|| ChangeError::NotFound(format!("unknown deployment '{name}'")))?;
        let _guard = d.changes.lock().await;
        let old = d.state();
        let mut runtime = d.runtime();
        let last_promotion = self.last_promotion(name)?;
        let target = match &runtime.previous {
            Some(p) => p.model.clone(),
            None => last_promotion
                .as_ref()
                .and_then(|r| r.from.clone())
                .ok_or_else(|| {
                    ChangeError::Invalid(format!(
                        "'{name}' has no previous champion to roll back to"
                    ))
                })?,
        };
        if target == old.champion {
            return Err(ChangeError::Invalid(format!(
                "{target} is already the champion of '{name}'"
            )));
        }
        self.ensure_loaded(&target).await?;
        let demoted = old.champion.clone();
        let mut state = old.clone();
        state.champion = target.clone();
        state.challengers.retain(|c| c.model_ref() != target);
        // What the demoted model was before the promotion being undone: the
        // promotion's record holds the configuration then in force.
        let before = last_promotion
            .filter(|r| r.to.as_ref() == Some(&demoted) && r.from.as_ref() == Some(&target))
            .and_then(|r| {
                r.config
                    .challengers
                    .into_iter()
                    .find(|c| c.model_ref() == demoted)
            });
        let (demoted_as, became) = match state.challengers.iter().find(|c| c.model_ref() == demoted)
        {
            Some(c) => (
                c.clone(),
                "unchanged: it was already a challenger".to_owned(),
            ),
            None => {
                let (c, became) = demoted_settings(&state, &demoted, before);
                state.challengers.push(c.clone());
                (c, became)
            }
        };
        runtime.previous = None;
        if !runtime.blocked.contains(&demoted) {
            runtime.blocked.push(demoted.clone());
        }
        runtime.refused.clear();
        runtime.recommendation = None;
        crate::traffic::assign_slices(&mut state.challengers);
        let demoted_as = state
            .challengers
            .iter()
            .find(|c| c.model_ref() == demoted)
            .cloned()
            .unwrap_or(demoted_as);
        let record = HistoryRecord {
            action: "rollback".into(),
            trigger,
            from: Some(demoted.clone()),
            to: Some(target.clone()),
            reason,
            evidence,
            config: old,
            challenger: Some(demoted_as.clone()),
            changes: Some(serde_json::json!({
                "demoted": {
                    "model": demoted,
                    "became": demoted_as.mode,
                    "fraction": demoted_as.fraction,
                    "why": became,
                }
            })),
        };
        let state = self.apply_with(d, state, runtime, Some(&record)).await?;
        tracing::warn!(deployment = name, from = %demoted, to = %target, "rolled back");
        crate::telemetry::promotion(name, "rollback");
        Ok(state)
    }

    /// The record of the deployment's last promotion.
    fn last_promotion(&self, name: &str) -> Result<Option<HistoryRecord>, ChangeError> {
        Ok(self
            .store()
            .history(name)?
            .into_iter()
            .rev()
            .filter_map(|(_, r)| serde_json::from_str::<HistoryRecord>(&r).ok())
            .find(|r| r.action == "promotion"))
    }

    /// Retires previous champions whose shadowing period is over.
    async fn retire_previous(&self) {
        let now = now_ms();
        for d in self.deployments() {
            let Some(prev) = d.runtime().previous else {
                continue;
            };
            if prev.until_ms.is_none_or(|t| t > now) {
                continue;
            }
            let _guard = d.changes.lock().await;
            let old = d.state();
            let mut state = old.clone();
            state.challengers.retain(|c| c.model_ref() != prev.model);
            let mut runtime = d.runtime();
            runtime.previous = None;
            let record = HistoryRecord {
                action: "previous_champion_retired".into(),
                trigger: Trigger::Policy,
                from: Some(prev.model.clone()),
                to: None,
                reason: format!("{} shadowed for promotion.keep_previous_secs", prev.model),
                evidence: None,
                config: old,
                challenger: None,
                changes: None,
            };
            if let Err(e) = self.apply_with(d, state, runtime, Some(&record)).await {
                tracing::error!(deployment = %d.name, error = %e, "cannot retire the previous champion");
            }
        }
    }

    /// The audit trail of a deployment, oldest first.
    pub fn history(&self, name: &str) -> Result<Vec<Value>, ChangeError> {
        Ok(self
            .store()
            .history(name)?
            .into_iter()
            .filter_map(|(at, r)| {
                let mut v: Value = serde_json::from_str(&r).ok()?;
                v["at_ms"] = Value::from(at);
                Some(v)
            })
            .collect())
    }
}

/// A former champion as a shadow of every request, so it keeps producing
/// paired evidence (the post-promotion watch, or a later re-promotion).
fn shadow_of(r: &ModelRef) -> ChallengerConfig {
    ChallengerConfig {
        model: r.model.clone(),
        version: r.version,
        mode: ChallengerMode::Shadow,
        fraction: 1.0,
        workers: 1,
        queue_capacity: 64,
        timeout_ms: 1000,
        low_priority: true,
        slice: Vec::new(),
    }
}

/// What a demoted champion becomes on a rollback, and why: the challenger
/// it was before the promotion (`before`), with its settings and slice; a
/// shadow of every request when it was none. A canary whose share no longer
/// fits (the other canaries took more of the traffic since) comes back as a
/// shadow of every request with its other settings.
fn demoted_settings(
    state: &DeploymentConfig,
    demoted: &ModelRef,
    before: Option<ChallengerConfig>,
) -> (ChallengerConfig, String) {
    let Some(mut c) = before else {
        return (
            shadow_of(demoted),
            "a shadow of every request: it was not a challenger before the promotion".into(),
        );
    };
    let others: f64 = state
        .challengers
        .iter()
        .filter(|o| o.mode == ChallengerMode::Canary)
        .map(|o| o.fraction)
        .sum();
    if c.mode == ChallengerMode::Canary && others + c.fraction > 1.0 + 1e-9 {
        let why = format!(
            "a shadow of every request: as a canary at {} it no longer fits beside the other canaries ({others} of the traffic)",
            c.fraction
        );
        c.mode = ChallengerMode::Shadow;
        c.fraction = 1.0;
        c.slice.clear();
        return (c, why);
    }
    let why = format!(
        "the {} it was before the promotion, with the same settings",
        c.mode.as_str()
    );
    (c, why)
}

/// The audit record of a challenger added (`to`) or removed (`from`) by a
/// person, with its settings, who asked and why.
pub fn challenger_change(
    action: &str,
    note: ChangeNote,
    challenger: &ChallengerConfig,
    config: &DeploymentConfig,
) -> HistoryRecord {
    let model = Some(challenger.model_ref());
    let added = action == "challenger_added";
    HistoryRecord {
        action: action.into(),
        trigger: Trigger::Person(note.by),
        from: if added { None } else { model.clone() },
        to: if added { model } else { None },
        reason: note.reason.unwrap_or_default(),
        evidence: None,
        config: config.clone(),
        challenger: Some(challenger.clone()),
        changes: None,
    }
}
