//! Linking: which live members are related to a new or repeated alert, and
//! how strongly (causal, then symptomatic, then temporal).

use super::engine::Engine;
use super::model::{same, EntityKey, Member, MemberId, Reason};
use super::rules::{self, CAUSAL_RULES};

impl Engine {
    /// Links a member to every related live member, merging groups. With
    /// `outside_only`, members already in its group are skipped.
    pub(super) fn link(&mut self, member_id: MemberId, outside_only: bool) {
        let group = self.members[&member_id].group;
        let reasons: Vec<(MemberId, Reason)> = self
            .index
            .candidates(&self.members, member_id, outside_only)
            .into_iter()
            .filter(|c| !outside_only || self.members[&c.id].group != group)
            .filter_map(|c| Some((c.id, self.classify(member_id, c.id, c.shared)?)))
            .collect();
        for (other, reason) in reasons {
            let g1 = self.members[&member_id].group;
            let g2 = self.members[&other].group;
            let group = if g1 == g2 { g1 } else { self.merge(g1, g2) };
            self.add_link(group, member_id, other, reason);
        }
    }

    /// The strongest relation between two live members, if any. `shared` is
    /// the entity they share, if any, and whether only implicitly.
    fn classify(
        &self,
        a_id: MemberId,
        b_id: MemberId,
        shared: Option<(&EntityKey, bool)>,
    ) -> Option<Reason> {
        let a = &self.members[&a_id];
        let b = &self.members[&b_id];
        let same_node = same(&a.node, &b.node);
        if same_node {
            if let Some(reason) = self.causal(a_id, a, b_id, b) {
                return Some(reason);
            }
        }
        if a.gap(b) > self.config.window_ms {
            return None;
        }
        if let Some((key, implicit)) = shared {
            return Some(Reason::SharedEntity {
                key: key.clone(),
                implicit,
            });
        }
        if !same_node && same(&a.anomaly_type, &b.anomaly_type) {
            return Some(Reason::SameSymptom);
        }
        if same_node && a.watcher != b.watcher {
            return Some(Reason::Window { gap_ms: a.gap(b) });
        }
        None
    }

    fn causal(&self, a_id: MemberId, a: &Member, b_id: MemberId, b: &Member) -> Option<Reason> {
        let tolerance = self.config.order_tolerance_ms;
        let mut best: Option<Reason> = None;
        let mut best_lag = i64::MIN;
        for m in rules::rules_between_indexed(a.type_index, b.type_index) {
            let rule = &CAUSAL_RULES[m.rule];
            let ((lead_id, lead), lag) = if m.first_leads {
                ((a_id, a), b)
            } else {
                ((b_id, b), a)
            };
            let (lead_id, lag_ms) = if rule.mutual {
                if lead.gap(lag) > rule.max_lag_ms {
                    continue;
                }
                if lead.first_seen <= lag.first_seen {
                    (lead_id, lag.first_seen - lead.first_seen)
                } else {
                    let lag_id = if lead_id == a_id { b_id } else { a_id };
                    (lag_id, lead.first_seen - lag.first_seen)
                }
            } else {
                let lag_ms = lag.first_seen - lead.first_seen;
                let fits = lag_ms >= rule.min_lag_ms - tolerance
                    && lag.first_seen - lead.last_seen <= rule.max_lag_ms;
                if !fits {
                    continue;
                }
                (lead_id, lag_ms)
            };
            if lag_ms > best_lag {
                best_lag = lag_ms;
                best = Some(Reason::Causal {
                    rule: m.rule,
                    lead: lead_id,
                    lag_ms,
                });
            }
        }
        best
    }
}
