//! Durable member counters: each member's traffic counters (`served`,
//! `mirrored`, `dropped`, `errors`, `timeouts`, `rejected`, `completed`) and
//! engine-time histogram are saved to the store by a background task every
//! [`SAVE_EVERY`] (only deployments whose counters moved; never on the
//! request path) and once more at a clean shutdown, and restored at start,
//! so counting resumes where it stopped and the promotion guardrails keep
//! their evidence. After a crash (`kill -9`) at most the counts of the last
//! [`SAVE_EVERY`] are missing; after a clean shutdown none.
//!
//! Counters belong to a model while it is a member of the deployment
//! (champion or challenger, including a promotion's previous champion that
//! keeps shadowing). A challenger removed (or retired) loses its counters;
//! added again later it starts from zero: the counters describe how it runs
//! under its settings (workers, queue, timeout), which a re-add often
//! changes. Its labels, metrics and comparisons, which describe the model
//! version itself, resume.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::{Deployment, Gateway, MemberStats};
use crate::config::{DeploymentConfig, ModelRef};
use crate::store::{MemberCounts, StoreError, StoredMemberStats};

/// How often changed counters are saved.
pub const SAVE_EVERY: Duration = Duration::from_secs(5);

/// What was last saved per deployment: each member, its counters and its
/// number of latency samples.
type Saved = HashMap<String, Vec<(ModelRef, MemberCounts, u64)>>;

impl Deployment {
    /// The counters of every member of the current state, champion first.
    fn members_stats(&self) -> Vec<(ModelRef, Arc<MemberStats>)> {
        let state = self.state();
        state
            .members()
            .map(|r| {
                let s = self.member_stats(&r);
                (r, s)
            })
            .collect()
    }

    /// Forgets the counters of models that are no longer members of `state`.
    pub(super) fn retain_member_stats(&self, state: &DeploymentConfig) {
        let mut map = self.member_stats.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|r, _| state.has_member(r));
    }
}

/// Restores the saved counters of each deployment's members (rows of
/// models that are no longer members are left out, and replaced by the
/// first save).
pub(super) fn restore(
    deployments: &BTreeMap<String, Deployment>,
    rows: Vec<(String, StoredMemberStats)>,
) {
    for (name, row) in rows {
        let Some(d) = deployments.get(&name) else {
            continue;
        };
        let r = ModelRef {
            model: row.model,
            version: row.version,
        };
        if !d.state().has_member(&r) {
            continue;
        }
        let latency: Vec<(u64, u64)> = match row.latency.as_deref().map(serde_json::from_str) {
            None => Vec::new(),
            Some(Ok(l)) => l,
            Some(Err(e)) => {
                tracing::warn!(deployment = %name, model = %r, error = %e, "stored latency histogram is unreadable; its latency evidence starts afresh");
                Vec::new()
            }
        };
        let stats = Arc::new(MemberStats::restored(row.counts, &latency));
        d.member_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(r, stats);
    }
}

impl Gateway {
    /// Saves changed member counters every [`SAVE_EVERY`] until the gateway
    /// is dropped (or the task aborted). The first round saves every
    /// deployment's, replacing rows of models no longer members.
    pub async fn run_stats_saver(self: Arc<Self>) {
        let mut saved = Saved::new();
        let mut tick = tokio::time::interval(SAVE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.save_stats(Some(&mut saved)).await {
                Ok(()) => {}
                Err(StoreError::Busy(n)) => {
                    tracing::debug!(waiting = n, "store busy; member counters saved next round");
                }
                Err(e) => tracing::warn!(error = %e, "cannot save member counters"),
            }
        }
    }

    /// Saves every deployment's member counters now (a clean shutdown).
    pub async fn save_member_stats(&self) -> Result<(), StoreError> {
        self.save_stats(None).await
    }

    /// Saves the counters of the deployments whose counters changed since
    /// `saved` (all of them without it) in one transaction.
    async fn save_stats(&self, saved: Option<&mut Saved>) -> Result<(), StoreError> {
        let periodic = saved.is_some();
        let mut guards = Vec::new();
        let mut batch = Vec::new();
        let mut marks = Vec::new();
        for d in self.deployments() {
            if periodic {
                // A change in progress may be removing a member: saving a
                // snapshot taken before it could store its counters again.
                // This deployment is saved next round. The lock is held
                // until the writer has stored the batch (a few ms at most).
                match d.changes.try_lock() {
                    Ok(g) => guards.push(g),
                    Err(_) => continue,
                }
            }
            let members = d.members_stats();
            let mark: Vec<(ModelRef, MemberCounts, u64)> = members
                .iter()
                .map(|(r, s)| (r.clone(), s.counts(), s.latency_samples()))
                .collect();
            if saved
                .as_ref()
                .is_some_and(|saved| saved.get(&d.name) == Some(&mark))
            {
                continue;
            }
            let rows = members
                .iter()
                .zip(&mark)
                .map(|((r, s), (_, counts, _))| {
                    let buckets = s.latency_buckets();
                    StoredMemberStats {
                        model: r.model.clone(),
                        version: r.version,
                        counts: *counts,
                        latency: (!buckets.is_empty()).then(|| {
                            serde_json::to_string(&buckets).expect("latency buckets serialise")
                        }),
                    }
                })
                .collect();
            batch.push((d.name.clone(), rows));
            marks.push((d.name.clone(), mark));
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.store.save_member_stats(batch).await?;
        drop(guards);
        if let Some(saved) = saved {
            saved.extend(marks);
        }
        Ok(())
    }
}
