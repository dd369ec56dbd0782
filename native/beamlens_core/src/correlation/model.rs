//! What the engine holds: alert fingerprints (members), the entities they
//! name, the links between them and the groups they form, with the limits
//! that keep all of it bounded.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use serde::Serialize;

use super::rules::{self, Scope};
use super::Severity;

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
pub(super) type GroupId = u64;

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
    pub fn new(kind: &str, id: &str, node: Option<Arc<str>>) -> EntityKey {
        EntityKey {
            hash: entity_hash(kind, id, node.as_deref()),
            kind: kind.into(),
            id: id.into(),
            node,
        }
    }

    pub fn is(&self, hash: u64, kind: &str, id: &str, node: Option<&str>) -> bool {
        self.hash == hash && &*self.kind == kind && &*self.id == id && self.node.as_deref() == node
    }
}

pub(super) fn entity_hash(kind: &str, id: &str, node: Option<&str>) -> u64 {
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
    pub type_index: Option<u16>,
    pub node: Arc<str>,
    pub severity: Severity,
    pub tags: Vec<Tag>,
    pub first_seen: i64,
    pub last_seen: i64,
    pub occurrences: u64,
    pub alert_ids: Vec<Arc<str>>,
    pub group: GroupId,
    pub live: bool,
    /// Scratch space of `Index::candidates`: the generation in which the
    /// member was last visited, and its slot in that visit's output.
    pub mark: Cell<u64>,
    pub slot: Cell<usize>,
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
    pub live: usize,
    pub links: Vec<Link>,
    /// Position of each member pair in `links`.
    pub link_index: IdMap<(MemberId, MemberId), usize>,
    pub links_dropped: u64,
    pub members_dropped: u64,
    /// The most severe alert and the strongest link the group ever had.
    /// Both only rise, like the member count, which makes the version.
    pub severity_max: Option<Severity>,
    pub kind_max: Option<Kind>,
    pub version: u64,
    pub reported_version: u64,
    pub dirty: bool,
    pub created_at: i64,
    pub merged_ids: Vec<Arc<str>>,
}

impl Group {
    /// The version of the insight: it rises with every alert fingerprint that
    /// joins, with the severity and with the strength of the correlation.
    /// It depends only on what the group holds, not on how alerts were
    /// batched, so every coordinator of a cluster numbers an insight alike
    /// and a new leader neither repeats nor skips versions.
    pub fn content_version(&self) -> u64 {
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

/// Adds the entities an alert names to `tags` (at most [`MAX_ENTITIES`])
/// and returns the keys added (`true`) or turned from implicit to explicit
/// (`false`).
pub(super) fn add_tags(
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
pub(super) fn same(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// `text` cut to at most [`MAX_TEXT`] bytes on a character boundary.
pub(super) fn bounded(text: &str) -> &str {
    if text.len() <= MAX_TEXT {
        return text;
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
