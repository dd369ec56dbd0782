//! What a batch reports: the insights it created or changed, each with its
//! new version, and the insights that went away.

use std::sync::Arc;

use serde::Serialize;

use super::engine::Engine;
use super::model::{GroupId, IdMap, Member, MemberId};
use super::summary::{self, InsightSnapshot};

/// Why an insight left the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Retired {
    pub id: String,
    /// `"expired"` or `"merged"`.
    pub reason: &'static str,
    /// For a merged insight, the insight it is now part of.
    pub into: Option<String>,
}

/// What a batch changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// Insights created or changed, each once, with its new version.
    pub insights: Vec<InsightSnapshot>,
    /// Insights reported earlier that no longer exist.
    pub retired: Vec<Retired>,
}

/// A retirement noted during a batch; a merged insight names the group that
/// absorbed it, whose insight id is only final at report time.
#[derive(Debug)]
pub(super) struct PendingRetired {
    pub id: Arc<str>,
    pub merged_into: Option<GroupId>,
}

impl Engine {
    /// Reports the groups changed since the last report and the insights
    /// retired, and clears both lists.
    pub(super) fn report(&mut self) -> Report {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        let mut insights = Vec::new();
        for group_id in dirty {
            let Some(group) = self.groups.get_mut(&group_id) else {
                continue;
            };
            group.dirty = false;
            let version = group.content_version();
            if group.members.len() < 2 || version <= group.reported_version {
                continue;
            }
            if group.insight_id.is_none() {
                let (id, created_at) = founding_id(&self.members, &group.members);
                group.insight_id = Some(id.into());
                group.created_at = created_at;
            }
            group.version = version;
            group.reported_version = version;
            self.stats.insights_reported += 1;
            insights.push(summary::snapshot(
                &self.members,
                &self.groups[&group_id],
                self.config,
            ));
        }
        let retired = std::mem::take(&mut self.retired)
            .into_iter()
            .map(|pending| {
                let into = pending
                    .merged_into
                    .and_then(|g| self.groups.get(&g))
                    .and_then(|g| g.insight_id.as_deref())
                    .map(str::to_string);
                Retired {
                    id: pending.id.to_string(),
                    reason: if pending.merged_into.is_some() {
                        "merged"
                    } else {
                        "expired"
                    },
                    into,
                }
            })
            .collect();
        Report { insights, retired }
    }
}

/// A deterministic insight id and creation time for a new group: every
/// coordinator of a cluster sees the same alerts and so names the same
/// insight the same way, whatever order the alerts arrived in.
fn founding_id(members: &IdMap<MemberId, Member>, ids: &[MemberId]) -> (String, i64) {
    let mut founders: Vec<&Member> = ids.iter().filter_map(|id| members.get(id)).collect();
    founders.sort_by(|a, b| (a.first_seen, &a.fingerprint).cmp(&(b.first_seen, &b.fingerprint)));
    let created_at = founders
        .iter()
        .take(2)
        .map(|m| m.first_seen)
        .max()
        .unwrap_or(0);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    let mut prints: Vec<&str> = founders.iter().take(2).map(|m| &*m.fingerprint).collect();
    prints.sort_unstable();
    for print in prints {
        feed(print.as_bytes());
        feed(b"|");
    }
    feed(&created_at.to_le_bytes());
    (format!("{hash:016x}"), created_at)
}
