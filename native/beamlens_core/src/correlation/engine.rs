//! The grouping state machine. See the module docs of `correlation`.

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use serde::Serialize;

use super::error::{Error, Result};
use super::rules::{self, Scope, CAUSAL_RULES};
use super::{summary, AlertInput, Severity};

/// Longest text kept from any alert field, in bytes.
pub(super) const MAX_TEXT: usize = 256;
/// Entities kept per alert fingerprint.
pub(super) const MAX_ENTITIES: usize = 16;
/// Alert ids kept per fingerprint (the first one and the most recent ones).
pub(super) const MAX_IDS_PER_MEMBER: usize = 8;
/// Alerts (distinct fingerprints) kept per group once they have expired.
pub(super) const MAX_GROUP_MEMBERS: usize = 64;
/// Links kept per group; later ones are counted only.
pub(super) const MAX_LINKS: usize = 256;
/// Ids of merged insights kept per group.
pub(super) const MAX_MERGED_IDS: usize = 16;
/// Most alerts accepted in one batch.
pub const MAX_BATCH: usize = 10_000;

/// Settings of an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Alerts from different watchers this close in time are related
    /// (temporal); symptomatic links need the same closeness.
    pub window_ms: i64,
    /// How much earlier than its lead a lag alert may be detected and still
    /// count as caused by it. Watchers detect on their own ticks, so two
    /// effects of one change are seldom seen in their true order.
    pub order_tolerance_ms: i64,
    /// Most live alert fingerprints held; the oldest are evicted beyond it.
    pub max_members: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            window_ms: 60_000,
            order_tolerance_ms: 5_000,
            max_members: 5_000,
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<()> {
        if !(1..=86_400_000).contains(&self.window_ms) {
            return Err(Error::bad_argument(
                "window_ms",
                format!("must be between 1 and 86400000, got {}", self.window_ms),
            ));
        }
        if !(0..=600_000).contains(&self.order_tolerance_ms) {
            return Err(Error::bad_argument(
                "order_tolerance_ms",
                format!(
                    "must be between 0 and 600000, got {}",
                    self.order_tolerance_ms
                ),
            ));
        }
        if !(1..=1_000_000).contains(&self.max_members) {
            return Err(Error::bad_argument(
                "max_members",
                format!("must be between 1 and 1000000, got {}", self.max_members),
            ));
        }
        Ok(())
    }

    /// How long an alert stays after its fingerprint last fired: long enough
    /// for the window and for the slowest causal relation.
    pub fn horizon_ms(&self) -> i64 {
        self.window_ms
            .max(rules::max_causal_lag_ms() + self.order_tolerance_ms)
    }
}

/// The kind of a link, and of an insight (its strongest link).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Temporal,
    Symptomatic,
    Causal,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Temporal => "temporal",
            Kind::Symptomatic => "symptomatic",
            Kind::Causal => "causal",
        }
    }
}

pub(super) type MemberId = u64;
type GroupId = u64;

/// A map keyed by the engine's own sequential ids. They are not chosen by
/// anyone outside, so a fast multiplicative hash is safe here, and it is
/// several times cheaper than SipHash on the hot path.
pub(super) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

#[derive(Default)]
pub(super) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u64(u64::from(*byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// An entity or resource, scoped to a node when its id only means something
/// there (see [`rules::entity_scope`]). Its hash is computed once, when the
/// key is made: keys are looked up for every alert that names them.
#[derive(Debug, Clone, Eq)]
pub(super) struct EntityKey {
    pub kind: Arc<str>,
    pub id: Arc<str>,
    pub node: Option<Arc<str>>,
    hash: u64,
}

impl EntityKey {
    fn new(kind: &str, id: &str, node: Option<Arc<str>>) -> EntityKey {
        EntityKey {
            hash: entity_hash(kind, id, node.as_deref()),
            kind: kind.into(),
            id: id.into(),
            node,
        }
    }

    fn is(&self, hash: u64, kind: &str, id: &str, node: Option<&str>) -> bool {
        self.hash == hash && &*self.kind == kind && &*self.id == id && self.node.as_deref() == node
    }
}

fn entity_hash(kind: &str, id: &str, node: Option<&str>) -> u64 {
    use std::hash::Hash;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (kind, id, node).hash(&mut hasher);
    hasher.finish()
}

impl PartialEq for EntityKey {
    fn eq(&self, other: &Self) -> bool {
        self.is(other.hash, &other.kind, &other.id, other.node.as_deref())
    }
}

impl std::hash::Hash for EntityKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Tag {
    pub key: EntityKey,
    /// Derived from the anomaly type (a resource), not named by the alert.
    pub implicit: bool,
}

/// One alert fingerprint: the first alert with it and every repeat folded in.
#[derive(Debug, Clone)]
pub(super) struct Member {
    pub fingerprint: Arc<str>,
    pub watcher: Arc<str>,
    pub anomaly_type: Arc<str>,
    type_index: Option<u16>,
    pub node: Arc<str>,
    pub severity: Severity,
    pub tags: Vec<Tag>,
    pub first_seen: i64,
    pub last_seen: i64,
    pub occurrences: u64,
    pub alert_ids: Vec<Arc<str>>,
    group: GroupId,
    pub live: bool,
    /// Scratch space of [`Engine::candidates`]: the generation in which the
    /// member was last visited, and its slot in that visit's output.
    mark: Cell<u64>,
    slot: Cell<usize>,
}

/// The live members on one node, of one anomaly type, or naming one entity.
#[derive(Debug, Default)]
struct Bucket {
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
struct Candidate<'a> {
    id: MemberId,
    /// The entity both name, and whether only implicitly.
    shared: Option<(&'a EntityKey, bool)>,
}

impl Member {
    /// Milliseconds between the two members' activity intervals (0 when they
    /// overlap).
    pub fn gap(&self, other: &Member) -> i64 {
        let start = self.first_seen.max(other.first_seen);
        let end = self.last_seen.min(other.last_seen);
        (start - end).max(0)
    }

    pub fn explicit_entity(&self) -> Option<&EntityKey> {
        self.tags.iter().find(|t| !t.implicit).map(|t| &t.key)
    }
}

/// Why two members are related.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Reason {
    /// `lead` brought about the other member per `rule`, `lag_ms` later (for
    /// a mutual rule, `lead` is simply the earlier one).
    Causal {
        rule: usize,
        lead: MemberId,
        lag_ms: i64,
    },
    SharedEntity {
        key: EntityKey,
        implicit: bool,
    },
    SameSymptom,
    Window {
        gap_ms: i64,
    },
}

impl Reason {
    pub fn kind(&self) -> Kind {
        match self {
            Reason::Causal { .. } => Kind::Causal,
            Reason::SharedEntity { .. } | Reason::SameSymptom => Kind::Symptomatic,
            Reason::Window { .. } => Kind::Temporal,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Link {
    pub a: MemberId,
    pub b: MemberId,
    pub reason: Reason,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Group {
    pub insight_id: Option<Arc<str>>,
    pub members: Vec<MemberId>,
    live: usize,
    pub links: Vec<Link>,
    /// Position of each member pair in `links`.
    link_index: IdMap<(MemberId, MemberId), usize>,
    pub links_dropped: u64,
    pub members_dropped: u64,
    /// The most severe alert and the strongest link the group ever had.
    /// Both only rise, like the member count, which makes the version.
    pub severity_max: Option<Severity>,
    pub kind_max: Option<Kind>,
    pub version: u64,
    reported_version: u64,
    dirty: bool,
    pub created_at: i64,
    pub merged_ids: Vec<Arc<str>>,
}

impl Group {
    /// The version of the insight: it rises with every alert fingerprint that
    /// joins, with the severity and with the strength of the correlation.
    /// It depends only on what the group holds, not on how alerts were
    /// batched, so every coordinator of a cluster numbers an insight alike
    /// and a new leader neither repeats nor skips versions.
    fn content_version(&self) -> u64 {
        let members = self.members.len() as u64 + self.members_dropped;
        let severity = match self.severity_max {
            None | Some(Severity::Info) => 0,
            Some(Severity::Warning) => 1,
            Some(Severity::Critical) => 2,
        };
        let kind = match self.kind_max {
            None | Some(Kind::Temporal) => 0,
            Some(Kind::Symptomatic) => 1,
            Some(Kind::Causal) => 2,
        };
        members.saturating_sub(1) + severity + kind
    }
}

/// An insight as reported: the state of a group after a batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InsightSnapshot {
    pub id: String,
    pub version: u64,
    pub correlation_type: Kind,
    pub summary: String,
    pub root_cause_hypothesis: String,
    pub confidence: f64,
    pub root_cause: Option<summary::RootCause>,
    pub rules: Vec<summary::Finding>,
    pub alert_ids: Vec<String>,
    pub alert_count: u64,
    pub fingerprints: Vec<String>,
    pub nodes: Vec<String>,
    pub watchers: Vec<String>,
    pub anomaly_types: Vec<String>,
    pub severity: Severity,
    pub members: Vec<summary::MemberView>,
    pub merged_ids: Vec<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

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
    config: Config,
    horizon: i64,
    now: i64,
    next_id: u64,
    generation: Cell<u64>,
    pub(super) members: IdMap<MemberId, Member>,
    groups: IdMap<GroupId, Group>,
    by_fingerprint: HashMap<Arc<str>, MemberId>,
    by_node: HashMap<Arc<str>, Bucket>,
    /// Live members naming each entity, with whether they name it only
    /// implicitly (a resource derived from the anomaly type).
    by_tag: IdMap<EntityKey, Bucket>,
    by_type: HashMap<Arc<str>, Bucket>,
    expiry: BinaryHeap<Reverse<(i64, MemberId)>>,
    live_count: usize,
    retained: VecDeque<MemberId>,
    retained_count: usize,
    seen: HashSet<Arc<str>>,
    seen_order: VecDeque<(i64, Arc<str>)>,
    dirty: Vec<GroupId>,
    retired: Vec<PendingRetired>,
    stats: Stats,
}

/// A retirement noted during a batch; a merged insight names the group that
/// absorbed it, whose insight id is only final at report time.
#[derive(Debug)]
struct PendingRetired {
    id: Arc<str>,
    merged_into: Option<GroupId>,
}

impl Engine {
    pub fn new(config: Config) -> Result<Engine> {
        config.validate()?;
        Ok(Engine {
            config,
            horizon: config.horizon_ms(),
            now: i64::MIN,
            next_id: 1,
            generation: Cell::new(0),
            members: IdMap::default(),
            groups: IdMap::default(),
            by_fingerprint: HashMap::new(),
            by_node: HashMap::new(),
            by_tag: IdMap::default(),
            by_type: HashMap::new(),
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
            .map(|id| summary::snapshot(self, &self.groups[&id], self.config))
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
        let node = intern(&self.by_node, bounded(&alert.node));
        let anomaly_type = intern(&self.by_type, bounded(&alert.anomaly_type));
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
        self.index(member_id, &member);
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
        for (key, is_new) in changed {
            let entry = self.by_tag.entry(key).or_default();
            if is_new {
                entry.add(member_id, false, group);
            } else if let Some(slot) = entry.members.iter_mut().find(|(id, _)| *id == member_id) {
                slot.1 = false;
            }
        }
        if raised {
            if let Some(g) = self.groups.get_mut(&group) {
                g.severity_max = g.severity_max.max(Some(alert.severity));
            }
            self.mark_dirty(group);
        }
    }

    fn index(&mut self, member_id: MemberId, member: &Member) {
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

    fn unindex(&mut self, member_id: MemberId) {
        let Some(member) = self.members.get(&member_id) else {
            return;
        };
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
        if self.by_fingerprint.get(&member.fingerprint) == Some(&member_id) {
            self.by_fingerprint.remove(&member.fingerprint);
        }
    }

    /// Live members that might be related to `member_id`: the same node
    /// (causal, temporal), the same anomaly type elsewhere, or a shared
    /// entity, each once, with the entity it shares (explicit ones first).
    /// With `outside_only`, entities named only within its own group are
    /// skipped (their members could only be filtered out later).
    fn candidates(&self, member_id: MemberId, outside_only: bool) -> Vec<Candidate<'_>> {
        let generation = self.generation.get() + 1;
        self.generation.set(generation);
        let member = &self.members[&member_id];
        member.mark.set(generation);
        let mut out: Vec<Candidate> = Vec::with_capacity(64);
        let members = &self.members;
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

    /// Links a member to every related live member, merging groups. With
    /// `outside_only`, members already in its group are skipped.
    fn link(&mut self, member_id: MemberId, outside_only: bool) {
        let group = self.members[&member_id].group;
        let reasons: Vec<(MemberId, Reason)> = self
            .candidates(member_id, outside_only)
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

    /// Merges two groups and returns the one that remains: the one whose
    /// insight is older, so that a reported insight keeps its id.
    fn merge(&mut self, g1: GroupId, g2: GroupId) -> GroupId {
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

    fn add_link(&mut self, group_id: GroupId, a: MemberId, b: MemberId, reason: Reason) {
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

    fn mark_dirty(&mut self, group_id: GroupId) {
        if let Some(group) = self.groups.get_mut(&group_id) {
            if !group.dirty {
                group.dirty = true;
                self.dirty.push(group_id);
            }
        }
    }

    fn expire(&mut self) {
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
    fn enforce_capacity(&mut self) {
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
    fn trim_group(&mut self, group_id: GroupId) {
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

    fn report(&mut self) -> Report {
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
                self,
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

    fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}

/// Adds `other` to the candidates of one [`Engine::candidates`] pass, once,
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

/// Adds the entities an alert names to `tags` (at most [`MAX_ENTITIES`])
/// and returns the keys added (`true`) or turned from implicit to explicit
/// (`false`).
fn add_tags(
    tags: &mut Vec<Tag>,
    entities: &[(String, String)],
    node: &Arc<str>,
) -> Vec<(EntityKey, bool)> {
    let mut changed = Vec::new();
    for (kind, id) in entities {
        let kind = bounded(kind);
        let id = bounded(id);
        let scope = match rules::entity_scope(kind, id) {
            Scope::Node => Some(node),
            Scope::Cluster => None,
        };
        let hash = entity_hash(kind, id, scope.map(|n| &**n));
        match tags
            .iter_mut()
            .find(|t| t.key.is(hash, kind, id, scope.map(|n| &**n)))
        {
            Some(existing) if existing.implicit => {
                existing.implicit = false;
                changed.push((existing.key.clone(), false));
            }
            Some(_) => {}
            None => {
                if tags.iter().filter(|t| !t.implicit).count() >= MAX_ENTITIES {
                    break;
                }
                let key = EntityKey::new(kind, id, scope.cloned());
                tags.push(Tag {
                    key: key.clone(),
                    implicit: false,
                });
                changed.push((key, true));
            }
        }
    }
    changed
}

/// Arc equality, comparing pointers first: node and type names are
/// interned, so equal names are usually the same allocation.
fn same(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
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

/// `text` cut to at most [`MAX_TEXT`] bytes on a character boundary.
fn bounded(text: &str) -> &str {
    if text.len() <= MAX_TEXT {
        return text;
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
