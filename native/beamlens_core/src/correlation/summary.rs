//! Deterministic insight text: which rules matched, which alerts, and the
//! likely root cause by the causal table. Used when no LLM writes the
//! summary, and given to the LLM as the starting point when one does.

use std::sync::Arc;

use serde::Serialize;

use super::engine::{
    Config, Engine, EntityKey, Group, IdMap, InsightSnapshot, Kind, Member, MemberId, Reason,
};
use super::rules::{CausalRule, CAUSAL_RULES};
use super::Severity;

/// Alert ids listed per insight; `alert_count` has the full count.
const MAX_ALERT_IDS: usize = 200;
/// Findings spelled out in the summary; all of them are in `rules`.
const MAX_FINDINGS_IN_TEXT: usize = 5;

/// The alert the causal table points to as the origin of the others.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RootCause {
    pub alert_id: String,
    pub fingerprint: String,
    pub anomaly_type: String,
    pub watcher: String,
    pub node: String,
    /// The first entity the alert names, as `"kind id"`.
    pub entity: Option<String>,
    /// The causal rule that makes it the origin.
    pub rule: String,
}

/// One matched rule, with the alerts it relates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub kind: Kind,
    /// A causal rule name, or `shared_entity`, `shared_resource`,
    /// `same_symptom_on_several_nodes`, `time_window`.
    pub rule: String,
    /// For a directed causal rule: `[lead, lag]`.
    pub anomaly_types: Vec<String>,
    pub nodes: Vec<String>,
    pub alert_ids: Vec<String>,
    /// Causal: the observed lag (smallest); temporal: the widest gap;
    /// same symptom: the spread of first detections.
    pub lag_ms: Option<i64>,
    /// Symptomatic: what the alerts share, such as `"ets_table sessions"`.
    pub shared: Option<String>,
    pub text: String,
}

/// One alert fingerprint of the insight.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberView {
    pub alert_ids: Vec<String>,
    pub fingerprint: String,
    pub anomaly_type: String,
    pub watcher: String,
    pub node: String,
    pub severity: Severity,
    pub occurrences: u64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub entities: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum FindingKey {
    Causal(usize, Arc<str>, Arc<str>),
    Entity(EntityKey, bool),
    SameSymptom(Arc<str>),
    Window(Arc<str>),
}

struct Acc {
    key: FindingKey,
    kind: Kind,
    members: Vec<MemberId>,
    lag_min: i64,
    lag_max: i64,
}

pub(super) fn snapshot(engine: &Engine, group: &Group, config: Config) -> InsightSnapshot {
    let members = &engine.members;
    let mut ordered: Vec<(MemberId, &Member)> = group
        .members
        .iter()
        .filter_map(|id| members.get(id).map(|m| (*id, m)))
        .collect();
    ordered.sort_by(|(ia, a), (ib, b)| {
        (a.first_seen, &a.fingerprint, ia).cmp(&(b.first_seen, &b.fingerprint, ib))
    });

    let findings = collect_findings(group, members);
    let correlation_type = findings
        .iter()
        .map(|f| f.kind)
        .max()
        .max(group.kind_max)
        .unwrap_or(Kind::Temporal);
    let rendered: Vec<Finding> = findings
        .iter()
        .map(|acc| render(acc, members, config))
        .collect();

    let nodes = sorted_unique(ordered.iter().map(|(_, m)| &*m.node));
    let watchers = unique(ordered.iter().map(|(_, m)| &*m.watcher));
    let anomaly_types = unique(ordered.iter().map(|(_, m)| &*m.anomaly_type));
    let root = root_cause(group, members, &ordered);

    let summary = headline(
        correlation_type,
        &ordered,
        &nodes,
        &watchers,
        &anomaly_types,
        &rendered,
    );
    let (hypothesis, root_cause) =
        hypothesis(group, correlation_type, &findings, &ordered, root, members);
    let confidence = confidence(correlation_type, &findings, &ordered);

    let mut alert_ids = Vec::new();
    'ids: for (_, member) in &ordered {
        for id in &member.alert_ids {
            if alert_ids.len() >= MAX_ALERT_IDS {
                break 'ids;
            }
            alert_ids.push(id.to_string());
        }
    }

    InsightSnapshot {
        id: group.insight_id.as_deref().unwrap_or_default().to_string(),
        version: group.version,
        correlation_type,
        summary,
        root_cause_hypothesis: hypothesis,
        confidence,
        root_cause,
        rules: rendered,
        alert_ids,
        alert_count: ordered.iter().map(|(_, m)| m.occurrences).sum(),
        fingerprints: ordered
            .iter()
            .map(|(_, m)| m.fingerprint.to_string())
            .collect(),
        nodes,
        watchers,
        anomaly_types,
        severity: ordered
            .iter()
            .map(|(_, m)| m.severity)
            .max()
            .max(group.severity_max)
            .unwrap_or(Severity::Info),
        members: ordered
            .iter()
            .map(|(_, m)| MemberView {
                alert_ids: m.alert_ids.iter().map(|id| id.to_string()).collect(),
                fingerprint: m.fingerprint.to_string(),
                anomaly_type: m.anomaly_type.to_string(),
                watcher: m.watcher.to_string(),
                node: m.node.to_string(),
                severity: m.severity,
                occurrences: m.occurrences,
                first_seen_ms: m.first_seen,
                last_seen_ms: m.last_seen,
                entities: m
                    .tags
                    .iter()
                    .filter(|t| !t.implicit)
                    .map(|t| (t.key.kind.to_string(), t.key.id.to_string()))
                    .collect(),
            })
            .collect(),
        merged_ids: group.merged_ids.iter().map(|id| id.to_string()).collect(),
        created_at_ms: group.created_at,
        updated_at_ms: ordered
            .iter()
            .map(|(_, m)| m.last_seen)
            .max()
            .unwrap_or(group.created_at),
    }
}

/// Groups the links of an insight by the rule that matched, strongest first.
fn collect_findings(group: &Group, members: &IdMap<MemberId, Member>) -> Vec<Acc> {
    let mut out: Vec<Acc> = Vec::new();
    for link in &group.links {
        let (Some(a), Some(b)) = (members.get(&link.a), members.get(&link.b)) else {
            continue;
        };
        let (key, lag) = match &link.reason {
            Reason::Causal { rule, lead, lag_ms } => {
                let (lead_m, lag_m) = if *lead == link.a { (a, b) } else { (b, a) };
                let key = if CAUSAL_RULES[*rule].mutual {
                    let (x, y) = if a.anomaly_type <= b.anomaly_type {
                        (a, b)
                    } else {
                        (b, a)
                    };
                    FindingKey::Causal(*rule, x.anomaly_type.clone(), y.anomaly_type.clone())
                } else {
                    FindingKey::Causal(
                        *rule,
                        lead_m.anomaly_type.clone(),
                        lag_m.anomaly_type.clone(),
                    )
                };
                (key, *lag_ms)
            }
            Reason::SharedEntity { key, implicit } => {
                (FindingKey::Entity(key.clone(), *implicit), a.gap(b))
            }
            Reason::SameSymptom => (
                FindingKey::SameSymptom(a.anomaly_type.clone()),
                (a.first_seen - b.first_seen).abs(),
            ),
            Reason::Window { gap_ms } => (FindingKey::Window(a.node.clone()), *gap_ms),
        };
        let acc = match out.iter_mut().position(|acc| acc.key == key) {
            Some(i) => &mut out[i],
            None => {
                out.push(Acc {
                    key,
                    kind: link.reason.kind(),
                    members: Vec::new(),
                    lag_min: lag,
                    lag_max: lag,
                });
                out.last_mut().expect("just pushed")
            }
        };
        acc.lag_min = acc.lag_min.min(lag);
        acc.lag_max = acc.lag_max.max(lag);
        for id in [link.a, link.b] {
            if !acc.members.contains(&id) {
                acc.members.push(id);
            }
        }
    }
    for acc in &mut out {
        acc.members.sort_by_key(|id| {
            members
                .get(id)
                .map(|m| (m.first_seen, m.fingerprint.clone()))
        });
    }
    // Stable: equal kinds keep the order in which they were found.
    out.sort_by_key(|acc| std::cmp::Reverse(acc.kind));
    out
}

fn render(acc: &Acc, members: &IdMap<MemberId, Member>, config: Config) -> Finding {
    let involved: Vec<&Member> = acc
        .members
        .iter()
        .filter_map(|id| members.get(id))
        .collect();
    let nodes = sorted_unique(involved.iter().map(|m| &*m.node));
    let types = unique(involved.iter().map(|m| &*m.anomaly_type));
    let alert_ids = involved
        .iter()
        .filter_map(|m| m.alert_ids.first().map(|id| id.to_string()))
        .collect();
    let on = |nodes: &[String]| format!("on {}", join(nodes));
    let (rule, anomaly_types, lag_ms, shared, text) = match &acc.key {
        FindingKey::Causal(index, x, y) => {
            let rule = &CAUSAL_RULES[*index];
            let text = causal_text(rule, x, y, acc, &on(&nodes));
            (
                rule.name.to_string(),
                vec![x.to_string(), y.to_string()],
                Some(acc.lag_min),
                None,
                text,
            )
        }
        FindingKey::Entity(key, implicit) => {
            let what = entity_phrase(key, *implicit);
            let verb = if *implicit { "strain" } else { "concern" };
            let text = format!(
                "{} {} {} {} (symptomatic: shared {})",
                join(&types),
                both_or_all(types.len()),
                verb,
                what,
                if *implicit { "resource" } else { "entity" }
            );
            let rule = if *implicit {
                "shared_resource"
            } else {
                "shared_entity"
            };
            (rule.to_string(), types, None, Some(what), text)
        }
        FindingKey::SameSymptom(anomaly_type) => {
            let spread = first_seen_spread(&involved);
            let text = format!(
                "{anomaly_type} fired on {} nodes ({}) within {} (symptomatic: the same symptom on several nodes)",
                nodes.len(),
                join(&nodes),
                duration(spread)
            );
            (
                "same_symptom_on_several_nodes".to_string(),
                types,
                Some(spread),
                None,
                text,
            )
        }
        FindingKey::Window(node) => {
            let labels: Vec<String> = involved
                .iter()
                .map(|m| format!("{} ({})", m.anomaly_type, m.watcher))
                .collect();
            let text = format!(
                "{} fired within {} of each other on {node} (temporal: different watchers inside the {} window)",
                join(&labels),
                duration(acc.lag_max),
                duration(config.window_ms)
            );
            (
                "time_window".to_string(),
                types,
                Some(acc.lag_max),
                None,
                text,
            )
        }
    };
    Finding {
        kind: acc.kind,
        rule,
        anomaly_types,
        nodes,
        alert_ids,
        lag_ms,
        shared,
        text,
    }
}

fn causal_text(rule: &CausalRule, x: &str, y: &str, acc: &Acc, on: &str) -> String {
    if rule.mutual {
        return format!(
            "{x} and {y} fired {} apart {on} (causal rule {}: they feed each other, within {})",
            lag_range(acc.lag_min.abs(), acc.lag_max.abs()),
            rule.name,
            duration(rule.max_lag_ms)
        );
    }
    let expected = format!(
        "causal rule {}: {x} leads {y} by {} to {}",
        rule.name,
        duration(rule.min_lag_ms),
        duration(rule.max_lag_ms)
    );
    if acc.lag_min >= 0 {
        format!(
            "{x} preceded {y} by {} {on} ({expected})",
            lag_range(acc.lag_min, acc.lag_max)
        )
    } else {
        format!(
            "{x} and {y} were detected together {on}, {y} only {} earlier, within the tolerance for detection order ({expected})",
            duration(-acc.lag_min)
        )
    }
}

fn headline(
    kind: Kind,
    ordered: &[(MemberId, &Member)],
    nodes: &[String],
    watchers: &[String],
    anomaly_types: &[String],
    findings: &[Finding],
) -> String {
    let kind_word = match kind {
        Kind::Causal => "Causal",
        Kind::Symptomatic => "Symptomatic",
        Kind::Temporal => "Temporal",
    };
    let node_text = if nodes.len() == 1 {
        format!("on {}", nodes[0])
    } else {
        format!("across {} nodes ({})", nodes.len(), join(nodes))
    };
    let mut text = format!(
        "{kind_word} correlation of {} alerts ({} from the {} {}) {node_text}: ",
        ordered.len(),
        join(anomaly_types),
        join(watchers),
        if watchers.len() == 1 {
            "watcher"
        } else {
            "watchers"
        }
    );
    let shown: Vec<&str> = findings
        .iter()
        .take(MAX_FINDINGS_IN_TEXT)
        .map(|f| f.text.as_str())
        .collect();
    text.push_str(&shown.join("; "));
    if findings.len() > MAX_FINDINGS_IN_TEXT {
        text.push_str(&format!(
            "; and {} more related findings",
            findings.len() - MAX_FINDINGS_IN_TEXT
        ));
    }
    text.push('.');
    text
}

/// The member the causal table names as the origin: it leads a directed
/// causal link and is not the lag of any. The earliest wins among several.
fn root_cause(
    group: &Group,
    members: &IdMap<MemberId, Member>,
    ordered: &[(MemberId, &Member)],
) -> Option<(MemberId, usize)> {
    let mut leads: Vec<(MemberId, usize)> = Vec::new();
    let mut lags: Vec<MemberId> = Vec::new();
    for link in &group.links {
        if let Reason::Causal { rule, lead, .. } = &link.reason {
            if CAUSAL_RULES[*rule].mutual {
                continue;
            }
            let lag = if *lead == link.a { link.b } else { link.a };
            if members.contains_key(lead) && members.contains_key(&lag) {
                leads.push((*lead, *rule));
                lags.push(lag);
            }
        }
    }
    ordered
        .iter()
        .filter(|(id, _)| !lags.contains(id))
        .find_map(|(id, _)| leads.iter().find(|(lead, _)| lead == id).copied())
        .or_else(|| {
            // A cycle within the order tolerance: take the earliest lead.
            ordered
                .iter()
                .find_map(|(id, _)| leads.iter().find(|(lead, _)| lead == id).copied())
        })
}

/// The chain of directed causal links starting at `root`, following the
/// earliest lag at each step.
fn chain(group: &Group, members: &IdMap<MemberId, Member>, root: MemberId) -> Vec<MemberId> {
    let mut path = vec![root];
    let mut current = root;
    while path.len() < 6 {
        let next = group
            .links
            .iter()
            .filter_map(|link| match &link.reason {
                Reason::Causal { rule, lead, .. }
                    if *lead == current && !CAUSAL_RULES[*rule].mutual =>
                {
                    Some(if link.a == current { link.b } else { link.a })
                }
                _ => None,
            })
            .filter(|id| !path.contains(id))
            .filter_map(|id| members.get(&id).map(|m| (m.first_seen, id)))
            .min();
        match next {
            Some((_, id)) => {
                path.push(id);
                current = id;
            }
            None => break,
        }
    }
    path
}

fn hypothesis(
    group: &Group,
    kind: Kind,
    findings: &[Acc],
    ordered: &[(MemberId, &Member)],
    root: Option<(MemberId, usize)>,
    members: &IdMap<MemberId, Member>,
) -> (String, Option<RootCause>) {
    let primary = findings.first();
    match (kind, root, primary) {
        (Kind::Causal, Some((root_id, rule_index)), _) => {
            let rule = &CAUSAL_RULES[rule_index];
            let root = &members[&root_id];
            let entity = root.explicit_entity().map(|k| format!("{} {}", k.kind, k.id));
            let path: Vec<String> = chain(group, members, root_id)
                .iter()
                .filter_map(|id| members.get(id).map(|m| m.anomaly_type.to_string()))
                .collect();
            let text = format!(
                "Likely root cause: {} on {}{} from the {} watcher, first in the causal chain {}. By the causal table, {}. Look first at {}.",
                root.anomaly_type,
                root.node,
                entity
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default(),
                root.watcher,
                path.join(" → "),
                rule.mechanism,
                rule.look_at
            );
            let cause = RootCause {
                alert_id: root
                    .alert_ids
                    .first()
                    .map(|id| id.to_string())
                    .unwrap_or_default(),
                fingerprint: root.fingerprint.to_string(),
                anomaly_type: root.anomaly_type.to_string(),
                watcher: root.watcher.to_string(),
                node: root.node.to_string(),
                entity,
                rule: rule.name.to_string(),
            };
            (text, Some(cause))
        }
        (Kind::Causal, None, Some(acc)) => {
            // Only mutual relations: no single origin.
            let FindingKey::Causal(index, x, y) = &acc.key else {
                return (String::new(), None);
            };
            let rule = &CAUSAL_RULES[*index];
            (
                format!(
                    "{x} and {y} reinforce each other rather than one causing the other: {}. Look first at {}.",
                    rule.mechanism, rule.look_at
                ),
                None,
            )
        }
        (Kind::Symptomatic, _, Some(acc)) => match &acc.key {
            FindingKey::Entity(key, implicit) => (
                format!(
                    "A common cause acting on {} is likely behind these alerts: they are different symptoms of it, with no causal order between them. Look first at {}.",
                    entity_phrase(key, *implicit),
                    entity_advice(key)
                ),
                None,
            ),
            FindingKey::SameSymptom(anomaly_type) => {
                let first = acc
                    .members
                    .first()
                    .and_then(|id| members.get(id))
                    .map(|m| m.node.to_string())
                    .unwrap_or_default();
                (
                    format!(
                        "The same symptom ({anomaly_type}) on several nodes at once points to something they share, such as a downstream service, the database, the network or a deploy, rather than a fault of one node. It showed first on {first}."
                    ),
                    None,
                )
            }
            _ => (String::new(), None),
        },
        _ => {
            let (earliest, later) = match ordered {
                [(_, first), rest @ ..] => (
                    *first,
                    rest.iter()
                        .map(|(_, m)| m.first_seen - first.first_seen)
                        .max()
                        .unwrap_or(0),
                ),
                [] => return (String::new(), None),
            };
            (
                format!(
                    "No causal rule or shared entity relates these alerts: they may have one cause or merely coincide. The earliest, {} on {} from the {} watcher, came up to {} before the others and is the place to start.",
                    earliest.anomaly_type,
                    earliest.node,
                    earliest.watcher,
                    duration(later)
                ),
                None,
            )
        }
    }
}

fn confidence(kind: Kind, findings: &[Acc], ordered: &[(MemberId, &Member)]) -> f64 {
    let extra_members = ordered.len().saturating_sub(2) as f64;
    let value = match kind {
        Kind::Causal => {
            let directed = findings
                .iter()
                .filter(|f| matches!(f.key, FindingKey::Causal(i, _, _) if !CAUSAL_RULES[i].mutual))
                .count();
            if directed == 0 {
                0.6
            } else {
                0.6 + 0.1 * directed.min(3) as f64
            }
        }
        Kind::Symptomatic => match findings.first().map(|f| &f.key) {
            Some(FindingKey::Entity(_, false)) => 0.65 + 0.05 * extra_members.min(2.0),
            Some(FindingKey::SameSymptom(_)) => {
                let nodes = sorted_unique(ordered.iter().map(|(_, m)| &*m.node)).len();
                0.5 + 0.1 * (nodes.saturating_sub(2) as f64).min(3.0)
            }
            _ => 0.5 + 0.05 * extra_members.min(2.0),
        },
        Kind::Temporal => 0.3 + 0.05 * extra_members.min(3.0),
    };
    (value.min(0.95) * 100.0).round() / 100.0
}

fn entity_phrase(key: &EntityKey, implicit: bool) -> String {
    let place = key
        .node
        .as_ref()
        .map(|n| format!(" on {n}"))
        .unwrap_or_default();
    if implicit || &*key.kind == "resource" {
        match (&*key.id, &key.node) {
            (id, None) => format!("the shared {id}"),
            (id, Some(node)) => format!("the {id} of {node}"),
        }
    } else {
        format!("{} {}{place}", key.kind, key.id)
    }
}

fn entity_advice(key: &EntityKey) -> String {
    let advice = match (&*key.kind, &*key.id) {
        ("pid" | "process", _) => {
            "that process: its message queue length, heap size, reductions and current function"
        }
        ("ets_table", _) => {
            "that table: its owner, its size and memory over time, and the code writing to it"
        }
        ("module", _) => "recent changes to that module and the processes running its code",
        ("port", _) => "that port: its owner, what it is connected to and its queue",
        ("supervisor", _) => {
            "that supervisor: the first crash reasons of its children and its restart intensity"
        }
        ("node", _) => "that node's health and the network path to it",
        ("resource", "memory") => {
            "the largest consumers of memory: process heaps, binaries and ETS tables"
        }
        ("resource", "cpu") => {
            "the processes using the most reductions, and other load on the host"
        }
        ("resource", "processes") => "the process count by initial call and by supervisor",
        ("resource", "ports") => "open ports and sockets by owner",
        ("resource", "atoms") => "code that creates atoms from outside data",
        ("resource", "ets") => "the largest ETS tables and their owners",
        ("resource", "disk") => "what writes to disk: logs, DETS or Mnesia files, temporary files",
        ("resource", "database") => {
            "the database itself: its load, locks, slow query log and connection count"
        }
        _ => return format!("that {} and what uses it", key.kind),
    };
    advice.to_string()
}

fn both_or_all(n: usize) -> &'static str {
    if n <= 2 {
        "both"
    } else {
        "all"
    }
}

fn first_seen_spread(members: &[&Member]) -> i64 {
    let min = members.iter().map(|m| m.first_seen).min().unwrap_or(0);
    let max = members.iter().map(|m| m.first_seen).max().unwrap_or(0);
    max - min
}

fn lag_range(min: i64, max: i64) -> String {
    let (a, b) = (duration(min), duration(max));
    if a == b {
        a
    } else {
        format!("{a} to {b}")
    }
}

/// `1500` -> `"1.5 s"`, `90000` -> `"1 min 30 s"`.
pub(super) fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 10_000 {
        let tenths = (ms + 50) / 100;
        if tenths % 10 == 0 {
            format!("{} s", tenths / 10)
        } else {
            format!("{}.{} s", tenths / 10, tenths % 10)
        }
    } else if ms < 60_000 {
        format!("{} s", (ms + 500) / 1_000)
    } else if ms < 3_600_000 {
        let seconds = (ms + 500) / 1_000;
        match seconds % 60 {
            0 => format!("{} min", seconds / 60),
            s => format!("{} min {s} s", seconds / 60),
        }
    } else {
        let minutes = (ms + 30_000) / 60_000;
        match minutes % 60 {
            0 => format!("{} h", minutes / 60),
            m => format!("{} h {m} min", minutes / 60),
        }
    }
}

/// `["a", "b", "c"]` -> `"a, b and c"`.
fn join(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

fn unique<'a>(items: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        if !out.iter().any(|o| o == item) {
            out.push(item.to_string());
        }
    }
    out
}

fn sorted_unique<'a>(items: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out = unique(items);
    out.sort();
    out
}
