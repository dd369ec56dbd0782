//! Expiry and bounds: members leave when their fingerprint has not fired
//! for the horizon, or when more are held than `max_members` allows, and a
//! group goes once all its members have expired.

use std::cmp::Reverse;

use super::engine::Engine;
use super::model::{GroupId, MemberId, MAX_GROUP_MEMBERS};
use super::report::PendingRetired;

impl Engine {
    /// Retires every member and seen alert id past the horizon at `now`.
    pub(super) fn expire(&mut self) {
        while let Some(&Reverse((due, member_id))) = self.expiry.peek() {
            if due > self.now {
                break;
            }
            self.expiry.pop();
            self.expire_entry(due, member_id);
        }
        while let Some((at, _)) = self.seen_order.front() {
            if at.saturating_add(self.horizon) > self.now {
                break;
            }
            if let Some((_, id)) = self.seen_order.pop_front() {
                self.seen.remove(&id);
            }
        }
    }

    /// Handles an expiry entry taken off the heap: retires the member if the
    /// entry is current, or puts it back with its later due time when the
    /// fingerprint fired again since. Every live member has exactly one entry.
    fn expire_entry(&mut self, due: i64, member_id: MemberId) -> bool {
        let Some(member) = self.members.get(&member_id) else {
            return false;
        };
        if !member.live {
            return false;
        }
        let real_due = member.last_seen.saturating_add(self.horizon);
        if real_due > due {
            self.expiry.push(Reverse((real_due, member_id)));
            return false;
        }
        self.retire_member(member_id);
        true
    }

    /// Evicts the members closest to expiry while more are live than allowed.
    pub(super) fn enforce_capacity(&mut self) {
        while self.live_count > self.config.max_members {
            let Some(Reverse((due, member_id))) = self.expiry.pop() else {
                break;
            };
            if self.expire_entry(due, member_id) {
                self.stats.evicted += 1;
            }
        }
    }

    /// Takes a member out of the live indexes. Its group keeps it (so the
    /// insight still names it) until the whole group has expired.
    fn retire_member(&mut self, member_id: MemberId) {
        self.unindex(member_id);
        let Some(member) = self.members.get_mut(&member_id) else {
            return;
        };
        member.live = false;
        self.live_count -= 1;
        let group_id = member.group;
        let Some(group) = self.groups.get_mut(&group_id) else {
            return;
        };
        group.live -= 1;
        let group_expired = group.live == 0;
        self.retained.push_back(member_id);
        self.retained_count += 1;
        if group_expired {
            self.drop_group(group_id);
        } else {
            self.trim_group(group_id);
            self.trim_retained();
        }
    }

    /// Removes a group whose members have all expired.
    fn drop_group(&mut self, group_id: GroupId) {
        let Some(group) = self.groups.remove(&group_id) else {
            return;
        };
        for member_id in &group.members {
            if let Some(member) = self.members.remove(member_id) {
                debug_assert!(!member.live, "dropping a group with live members");
                self.retained_count -= 1;
            }
        }
        if let Some(id) = group.insight_id {
            self.retired.push(PendingRetired {
                id,
                merged_into: None,
            });
        }
    }

    /// Keeps a group within [`MAX_GROUP_MEMBERS`] by dropping its oldest
    /// expired members.
    pub(super) fn trim_group(&mut self, group_id: GroupId) {
        loop {
            let Some(group) = self.groups.get(&group_id) else {
                return;
            };
            if group.members.len() <= MAX_GROUP_MEMBERS || group.members.len() == group.live {
                return;
            }
            let oldest = group
                .members
                .iter()
                .filter_map(|id| self.members.get(id).map(|m| (id, m)))
                .filter(|(_, m)| !m.live)
                .min_by_key(|(id, m)| (m.last_seen, **id))
                .map(|(id, _)| *id);
            match oldest {
                Some(member_id) => self.drop_retained(member_id),
                None => return,
            }
        }
    }

    /// Keeps the number of expired members held for their groups within
    /// `max_members`.
    fn trim_retained(&mut self) {
        while self.retained_count > self.config.max_members {
            let Some(member_id) = self.retained.pop_front() else {
                return;
            };
            if self.members.get(&member_id).is_some_and(|m| !m.live) {
                self.drop_retained(member_id);
            }
        }
        // Drop queue entries of members that are gone already.
        while self
            .retained
            .front()
            .is_some_and(|id| !self.members.contains_key(id))
        {
            self.retained.pop_front();
        }
    }

    fn drop_retained(&mut self, member_id: MemberId) {
        let Some(member) = self.members.remove(&member_id) else {
            return;
        };
        self.retained_count -= 1;
        if let Some(group) = self.groups.get_mut(&member.group) {
            group.members.retain(|id| *id != member_id);
            group.links.retain(|l| l.a != member_id && l.b != member_id);
            group.link_index = group
                .links
                .iter()
                .enumerate()
                .map(|(i, l)| ((l.a, l.b), i))
                .collect();
            group.members_dropped += 1;
        }
    }
}
