//! Group algebra: merging two groups, adding a link to a group, and noting
//! which groups a batch changed.

use super::engine::Engine;
use super::model::{GroupId, Link, MemberId, Reason, MAX_LINKS, MAX_MERGED_IDS};
use super::report::PendingRetired;

impl Engine {
    /// Merges two groups and returns the one that remains: the one whose
    /// insight is older, so that a reported insight keeps its id.
    pub(super) fn merge(&mut self, g1: GroupId, g2: GroupId) -> GroupId {
        let (keep, gone) = {
            let a = &self.groups[&g1];
            let b = &self.groups[&g2];
            let order = match (&a.insight_id, &b.insight_id) {
                (Some(x), Some(y)) => (a.created_at, x).cmp(&(b.created_at, y)),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => b.members.len().cmp(&a.members.len()).then(g1.cmp(&g2)),
            };
            if order.is_le() {
                (g1, g2)
            } else {
                (g2, g1)
            }
        };
        let Some(absorbed) = self.groups.remove(&gone) else {
            return keep;
        };
        for member_id in &absorbed.members {
            if let Some(member) = self.members.get_mut(member_id) {
                member.group = keep;
                if member.live {
                    self.index.regroup(member, gone, keep);
                }
            }
        }
        for pending in &mut self.retired {
            if pending.merged_into == Some(gone) {
                pending.merged_into = Some(keep);
            }
        }
        if let Some(id) = &absorbed.insight_id {
            self.retired.push(PendingRetired {
                id: id.clone(),
                merged_into: Some(keep),
            });
        }
        let Some(survivor) = self.groups.get_mut(&keep) else {
            return keep;
        };
        if let Some(id) = absorbed.insight_id {
            if survivor.merged_ids.len() < MAX_MERGED_IDS {
                survivor.merged_ids.push(id);
            }
        }
        for id in absorbed.merged_ids {
            if survivor.merged_ids.len() < MAX_MERGED_IDS {
                survivor.merged_ids.push(id);
            }
        }
        survivor.severity_max = survivor.severity_max.max(absorbed.severity_max);
        survivor.kind_max = survivor.kind_max.max(absorbed.kind_max);
        survivor.members.extend(absorbed.members);
        survivor.live += absorbed.live;
        survivor.members_dropped += absorbed.members_dropped;
        survivor.links_dropped += absorbed.links_dropped;
        for link in absorbed.links {
            if survivor.links.len() < MAX_LINKS {
                survivor
                    .link_index
                    .insert((link.a, link.b), survivor.links.len());
                survivor.links.push(link);
            } else {
                survivor.links_dropped += 1;
            }
        }
        self.mark_dirty(keep);
        self.trim_group(keep);
        keep
    }

    pub(super) fn add_link(&mut self, group_id: GroupId, a: MemberId, b: MemberId, reason: Reason) {
        let (a, b) = if a < b { (a, b) } else { (b, a) };
        let Some(group) = self.groups.get_mut(&group_id) else {
            return;
        };
        let kind = reason.kind();
        let existing = group.link_index.get(&(a, b)).copied();
        let changed = match existing {
            Some(i) if kind > group.links[i].reason.kind() => {
                group.links[i].reason = reason;
                true
            }
            Some(_) => false,
            None if group.links.len() < MAX_LINKS => {
                group.link_index.insert((a, b), group.links.len());
                group.links.push(Link { a, b, reason });
                true
            }
            None => {
                group.links_dropped += 1;
                false
            }
        };
        if changed {
            group.kind_max = group.kind_max.max(Some(kind));
            self.mark_dirty(group_id);
        }
    }

    pub(super) fn mark_dirty(&mut self, group_id: GroupId) {
        if let Some(group) = self.groups.get_mut(&group_id) {
            if !group.dirty {
                group.dirty = true;
                self.dirty.push(group_id);
            }
        }
    }
}
