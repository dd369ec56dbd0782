//! The engine: its state, and how one alert comes in (deduplicated by id,
//! folded into its fingerprint, then linked). See the module docs of
//! `correlation`; the other steps live next to this file: `link`, `group`,
//! `expiry` and `report`.

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde::Serialize;

use super::config::Config;
use super::error::Result;
use super::index::Index;
use super::model::{
    add_tags, bounded, EntityKey, Group, GroupId, IdMap, Member, MemberId, Tag, MAX_IDS_PER_MEMBER,
};
use super::report::{PendingRetired, Report};
use super::rules::{self, Scope};
use super::summary::{self, InsightSnapshot};
use super::AlertInput;

/// Most alerts accepted in one batch.
pub const MAX_BATCH: usize = 10_000;

/// Counters and sizes, for monitoring and for tests of the bounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub received: u64,
    pub duplicates: u64,
    pub stale: u64,
    pub folded: u64,
    pub evicted: u64,
    pub insights_reported: u64,
    pub live_members: usize,
    pub retained_members: usize,
    pub groups: usize,
    pub seen_ids: usize,
    pub horizon_ms: i64,
    pub window_ms: i64,
    pub max_members: usize,
}

/// The correlation engine. Not thread-safe by itself; the NIF wraps it in a
/// mutex.
#[derive(Debug)]
pub struct Engine {
    pub(super) config: Config,
    pub(super) horizon: i64,
    pub(super) now: i64,
    next_id: u64,
    pub(super) members: IdMap<MemberId, Member>,
    pub(super) groups: IdMap<GroupId, Group>,
    by_fingerprint: HashMap<Arc<str>, MemberId>,
    pub(super) index: Index,
    pub(super) expiry: BinaryHeap<Reverse<(i64, MemberId)>>,
    pub(super) live_count: usize,
    pub(super) retained: VecDeque<MemberId>,
    pub(super) retained_count: usize,
    pub(super) seen: HashSet<Arc<str>>,
    pub(super) seen_order: VecDeque<(i64, Arc<str>)>,
    pub(super) dirty: Vec<GroupId>,
    pub(super) retired: Vec<PendingRetired>,
    pub(super) stats: Stats,
}

impl Engine {
    pub fn new(config: Config) -> Result<Engine> {
        config.validate()?;
        Ok(Engine {
            config,
            horizon: config.horizon_ms(),
            now: i64::MIN,
            next_id: 1,
            members: IdMap::default(),
            groups: IdMap::default(),
            by_fingerprint: HashMap::new(),
            index: Index::default(),
            expiry: BinaryHeap::new(),
            live_count: 0,
            retained: VecDeque::new(),
            retained_count: 0,
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            dirty: Vec::new(),
            retired: Vec::new(),
            stats: Stats::default(),
        })
    }

    pub fn config(&self) -> Config {
        self.config
    }

    pub fn stats(&self) -> Stats {
        Stats {
            live_members: self.live_count,
            retained_members: self.retained_count,
            groups: self.groups.len(),
            seen_ids: self.seen.len(),
            horizon_ms: self.horizon,
            window_ms: self.config.window_ms,
            max_members: self.config.max_members,
            ..self.stats
        }
    }

    /// Adds a batch of alerts at wall-clock time `now_ms` (Unix ms) and
    /// reports what changed. Alerts that expired before `now_ms` are dropped
    /// first.
    pub fn ingest(&mut self, alerts: impl IntoIterator<Item = AlertInput>, now_ms: i64) -> Report {
        self.advance_clock(now_ms);
        for alert in alerts {
            self.ingest_one(alert);
        }
        self.report()
    }

    /// Expires what is older than the horizon at `now_ms` and reports the
    /// insights that went away.
    pub fn advance(&mut self, now_ms: i64) -> Report {
        self.advance_clock(now_ms);
        self.report()
    }

    /// The current state of every insight (groups of two or more alerts),
    /// without changing versions.
    pub fn insights(&self) -> Vec<InsightSnapshot> {
        let mut ids: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(_, g)| g.reported_version > 0)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids.into_iter()
            .map(|id| summary::snapshot(&self.members, &self.groups[&id], self.config))
            .collect()
    }

    fn advance_clock(&mut self, now_ms: i64) {
        self.now = self.now.max(now_ms);
        self.expire();
    }

    fn ingest_one(&mut self, alert: AlertInput) {
        self.stats.received += 1;
        let now = self.now;
        let mut at = alert.detected_at_ms;
        if at.saturating_add(self.horizon) <= now {
            self.stats.stale += 1;
            return;
        }
        // A clock far ahead would keep the alert forever.
        if at > now.saturating_add(self.horizon) {
            at = now;
        }
        let id: Arc<str> = bounded(&alert.id).into();
        if !self.remember(&id) {
            self.stats.duplicates += 1;
            return;
        }

        let fingerprint: Arc<str> = bounded(&alert.fingerprint).into();
        match self.by_fingerprint.get(&fingerprint) {
            Some(&existing) => {
                self.fold(existing, &alert, id, at);
                // Links inside its group were found when it joined; a repeat
                // can only widen its time span towards other groups.
                self.link(existing, true);
            }
            None => {
                let member_id = self.add_member(fingerprint, &alert, id, at);
                self.link(member_id, false);
            }
        }
        self.enforce_capacity();
    }

    /// Records an alert id; `false` when it was seen already.
    fn remember(&mut self, id: &Arc<str>) -> bool {
        if !self.seen.insert(id.clone()) {
            return false;
        }
        self.seen_order.push_back((self.now, id.clone()));
        let cap = self.config.max_members.saturating_mul(4).max(1024);
        while self.seen_order.len() > cap {
            if let Some((_, old)) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    fn add_member(
        &mut self,
        fingerprint: Arc<str>,
        alert: &AlertInput,
        id: Arc<str>,
        at: i64,
    ) -> MemberId {
        let member_id = self.fresh_id();
        let group_id = self.fresh_id();
        let node = self.index.node(bounded(&alert.node));
        let anomaly_type = self.index.anomaly_type(bounded(&alert.anomaly_type));
        let mut tags = Vec::new();
        add_tags(&mut tags, &alert.entities, &node);
        for resource in rules::resources(&anomaly_type) {
            let scope = match rules::resource_scope(resource) {
                Scope::Node => Some(node.clone()),
                Scope::Cluster => None,
            };
            let key = EntityKey::new("resource", resource, scope);
            if !tags.iter().any(|t: &Tag| t.key == key) {
                tags.push(Tag {
                    key,
                    implicit: true,
                });
            }
        }
        let member = Member {
            fingerprint: fingerprint.clone(),
            watcher: bounded(&alert.watcher).into(),
            type_index: rules::type_index(&anomaly_type),
            anomaly_type,
            node,
            severity: alert.severity,
            tags,
            first_seen: at,
            last_seen: at,
            occurrences: 1,
            alert_ids: vec![id],
            group: group_id,
            live: true,
            mark: Cell::new(0),
            slot: Cell::new(0),
        };
        self.index.add(member_id, &member);
        self.by_fingerprint.insert(fingerprint, member_id);
        self.expiry
            .push(Reverse((at.saturating_add(self.horizon), member_id)));
        self.members.insert(member_id, member);
        self.live_count += 1;
        self.groups.insert(
            group_id,
            Group {
                members: vec![member_id],
                live: 1,
                severity_max: Some(alert.severity),
                ..Group::default()
            },
        );
        member_id
    }

    fn fold(&mut self, member_id: MemberId, alert: &AlertInput, id: Arc<str>, at: i64) {
        self.stats.folded += 1;
        let Some(member) = self.members.get_mut(&member_id) else {
            return;
        };
        member.occurrences += 1;
        member.first_seen = member.first_seen.min(at);
        member.last_seen = member.last_seen.max(at);
        if member.alert_ids.len() >= MAX_IDS_PER_MEMBER {
            member.alert_ids.remove(1);
        }
        member.alert_ids.push(id);
        let raised = alert.severity > member.severity;
        member.severity = member.severity.max(alert.severity);
        let node = member.node.clone();
        let changed = add_tags(&mut member.tags, &alert.entities, &node);
        let group = member.group;
        self.index.retag(member_id, group, changed);
        if raised {
            if let Some(g) = self.groups.get_mut(&group) {
                g.severity_max = g.severity_max.max(Some(alert.severity));
            }
            self.mark_dirty(group);
        }
    }

    /// Takes a member out of the live indexes and the fingerprint map.
    pub(super) fn unindex(&mut self, member_id: MemberId) {
        let Some(member) = self.members.get(&member_id) else {
            return;
        };
        self.index.remove(member_id, member);
        if self.by_fingerprint.get(&member.fingerprint) == Some(&member_id) {
            self.by_fingerprint.remove(&member.fingerprint);
        }
    }

    fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}
