//! The indexes of live members by node, by anomaly type and by entity, and
//! the search for the members that might be related to one of them.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;

use super::model::{EntityKey, GroupId, IdMap, Member, MemberId};

/// Live members by node, by anomaly type and by the entities they name.
#[derive(Debug, Default)]
pub(super) struct Index {
    by_node: HashMap<Arc<str>, Bucket>,
    /// Live members naming each entity, with whether they name it only
    /// implicitly (a resource derived from the anomaly type).
    by_tag: IdMap<EntityKey, Bucket>,
    by_type: HashMap<Arc<str>, Bucket>,
    /// Counts [`Index::candidates`] passes, to mark the members visited.
    generation: Cell<u64>,
}

impl Index {
    /// The node name as already interned by a live member, or a new one.
    pub fn node(&self, text: &str) -> Arc<str> {
        intern(&self.by_node, text)
    }

    /// The anomaly type as already interned by a live member, or a new one.
    pub fn anomaly_type(&self, text: &str) -> Arc<str> {
        intern(&self.by_type, text)
    }

    /// Adds a new live member to every index.
    pub fn add(&mut self, member_id: MemberId, member: &Member) {
        self.by_node
            .entry(member.node.clone())
            .or_default()
            .add(member_id, false, member.group);
        self.by_type
            .entry(member.anomaly_type.clone())
            .or_default()
            .add(member_id, false, member.group);
        for tag in &member.tags {
            self.by_tag.entry(tag.key.clone()).or_default().add(
                member_id,
                tag.implicit,
                member.group,
            );
        }
    }

    /// Takes a member out of every index.
    pub fn remove(&mut self, member_id: MemberId, member: &Member) {
        remove_from(&mut self.by_node, &member.node, member_id, member.group);
        remove_from(
            &mut self.by_type,
            &member.anomaly_type,
            member_id,
            member.group,
        );
        for tag in &member.tags {
            remove_from(&mut self.by_tag, &tag.key, member_id, member.group);
        }
    }

    /// Records the entities a repeat of an alert added to its member: new
    /// ones (`true`) and ones it now names explicitly (`false`).
    pub fn retag(&mut self, member_id: MemberId, group: GroupId, changed: Vec<(EntityKey, bool)>) {
        for (key, is_new) in changed {
            let entry = self.by_tag.entry(key).or_default();
            if is_new {
                entry.add(member_id, false, group);
            } else if let Some(slot) = entry.members.iter_mut().find(|(id, _)| *id == member_id) {
                slot.1 = false;
            }
        }
    }

    /// Moves a live member's count in every bucket it is in from group
    /// `gone` to group `keep`.
    pub fn regroup(&mut self, member: &Member, gone: GroupId, keep: GroupId) {
        let moved = |bucket: Option<&mut Bucket>| {
            if let Some(bucket) = bucket {
                bucket.count(gone, -1);
                bucket.count(keep, 1);
            }
        };
        for tag in &member.tags {
            moved(self.by_tag.get_mut(&tag.key));
        }
        moved(self.by_node.get_mut(&member.node));
        moved(self.by_type.get_mut(&member.anomaly_type));
    }

    /// Live members that might be related to `member_id`: the same node
    /// (causal, temporal), the same anomaly type elsewhere, or a shared
    /// entity, each once, with the entity it shares (explicit ones first).
    /// With `outside_only`, entities named only within its own group are
    /// skipped (their members could only be filtered out later).
    pub fn candidates<'a>(
        &'a self,
        members: &'a IdMap<MemberId, Member>,
        member_id: MemberId,
        outside_only: bool,
    ) -> Vec<Candidate<'a>> {
        let generation = self.generation.get() + 1;
        self.generation.set(generation);
        let member = &members[&member_id];
        member.mark.set(generation);
        let mut out: Vec<Candidate> = Vec::with_capacity(64);
        let mut visit =
            |other: MemberId, shared| visit(members, &mut out, generation, other, shared);
        let wanted = |bucket: &&Bucket| !outside_only || !bucket.only_in(member.group);
        for tag in &member.tags {
            if let Some(bucket) = self.by_tag.get(&tag.key).filter(wanted) {
                for &(other, other_implicit) in &bucket.members {
                    visit(other, Some((&tag.key, tag.implicit && other_implicit)));
                }
            }
        }
        let by_node = self.by_node.get(&member.node);
        let by_type = self.by_type.get(&member.anomaly_type);
        for bucket in by_node.into_iter().chain(by_type).filter(wanted) {
            for &(other, _) in &bucket.members {
                visit(other, None);
            }
        }
        out
    }
}

/// The live members on one node, of one anomaly type, or naming one entity.
#[derive(Debug, Default)]
pub(super) struct Bucket {
    /// Each member, and whether it names the entity only implicitly (for
    /// nodes and types: always `false`).
    members: Vec<(MemberId, bool)>,
    /// How many of them each group holds. A repeat of an alert need not
    /// look at a bucket whose members are all in its own group already.
    groups: Vec<(GroupId, usize)>,
}

impl Bucket {
    fn add(&mut self, member_id: MemberId, implicit: bool, group: GroupId) {
        self.members.push((member_id, implicit));
        self.count(group, 1);
    }

    fn remove(&mut self, member_id: MemberId, group: GroupId) {
        if let Some(pos) = self.members.iter().position(|(id, _)| *id == member_id) {
            self.members.swap_remove(pos);
            self.count(group, -1);
        }
    }

    fn count(&mut self, group: GroupId, delta: isize) {
        match self.groups.iter().position(|(g, _)| *g == group) {
            Some(i) => {
                let n = self.groups[i].1.saturating_add_signed(delta);
                if n == 0 {
                    self.groups.swap_remove(i);
                } else {
                    self.groups[i].1 = n;
                }
            }
            None if delta > 0 => self.groups.push((group, delta.unsigned_abs())),
            None => {}
        }
    }

    fn only_in(&self, group: GroupId) -> bool {
        matches!(self.groups.as_slice(), [(g, _)] if *g == group)
    }
}

/// A member that may be related to the one being linked.
pub(super) struct Candidate<'a> {
    pub id: MemberId,
    /// The entity both name, and whether only implicitly.
    pub shared: Option<(&'a EntityKey, bool)>,
}

/// Adds `other` to the candidates of one [`Index::candidates`] pass, once,
/// keeping the best shared entity seen for it.
fn visit<'a>(
    members: &'a IdMap<MemberId, Member>,
    out: &mut Vec<Candidate<'a>>,
    generation: u64,
    other: MemberId,
    shared: Option<(&'a EntityKey, bool)>,
) {
    let Some(m) = members.get(&other) else {
        return;
    };
    if m.mark.get() != generation {
        m.mark.set(generation);
        m.slot.set(out.len());
        out.push(Candidate { id: other, shared });
    } else if let (Some(new), Some(slot)) = (shared, out.get_mut(m.slot.get())) {
        if slot.id == other && slot.shared.is_none_or(|(_, old)| old && !new.1) {
            slot.shared = Some(new);
        }
    }
}

/// The `Arc` already used as a key of `index` for `text`, or a new one.
fn intern<V>(index: &HashMap<Arc<str>, V>, text: &str) -> Arc<str> {
    index
        .get_key_value(text)
        .map_or_else(|| text.into(), |(key, _)| key.clone())
}

fn remove_from<K: std::hash::Hash + Eq, S: std::hash::BuildHasher>(
    index: &mut HashMap<K, Bucket, S>,
    key: &K,
    member_id: MemberId,
    group: GroupId,
) {
    if let Some(bucket) = index.get_mut(key) {
        bucket.remove(member_id, group);
        if bucket.members.is_empty() {
            index.remove(key);
        }
    }
}
