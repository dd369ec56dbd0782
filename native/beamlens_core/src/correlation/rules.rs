//! What the engine knows about anomaly types: the causal table, the resources
//! each type strains, and which entity kinds are local to one node.
//!
//! Anomaly types are the code-defined strings the watchers fire (see the
//! vocabulary in `Beamlens.Coordinator`'s docs). Unknown types (custom
//! watchers) have no causal rules and no implicit resource; they still
//! correlate by time and by the entities they name.

use std::collections::HashMap;
use std::sync::LazyLock;

const SECOND: i64 = 1_000;
const MINUTE: i64 = 60 * SECOND;

/// A known directed relation: alerts of a `lead` type bring about alerts of a
/// `lag` type on the same node, `min_lag_ms..=max_lag_ms` later. A `mutual`
/// relation has no direction: the two feed each other and may show up in
/// either order within `max_lag_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CausalRule {
    pub name: &'static str,
    pub lead: &'static [&'static str],
    pub lag: &'static [&'static str],
    pub min_lag_ms: i64,
    pub max_lag_ms: i64,
    pub mutual: bool,
    /// Why the lead brings about the lag, for summaries.
    pub mechanism: &'static str,
    /// Where to look first when the lead is the root cause.
    pub look_at: &'static str,
}

/// The causal table, seeded from how the BEAM accounts memory, processes and
/// ports. Lags are generous: watchers detect on their own ticks, and growth
/// needs a while to show in a total.
pub static CAUSAL_RULES: &[CausalRule] = &[
    CausalRule {
        name: "ets_growth_drives_memory",
        lead: &["ets_memory_growth", "ets_table_growth"],
        lag: &["memory_growth"],
        min_lag_ms: 0,
        max_lag_ms: 10 * MINUTE,
        mutual: false,
        mechanism: "ETS tables are stored outside process heaps, so whatever a table gains is added straight to total VM memory",
        look_at: "the tables named in that alert: their owner, their size over time, and the code that inserts without deleting",
    },
    CausalRule {
        name: "process_growth_drives_process_memory",
        lead: &["process_leak", "process_count_high"],
        lag: &["process_memory_growth"],
        min_lag_ms: 0,
        max_lag_ms: 10 * MINUTE,
        mutual: false,
        mechanism: "every process owns a heap and a stack, so a growing process count raises process memory",
        look_at: "who spawns the extra processes: group processes by initial call or supervisor and compare with the expected count",
    },
    CausalRule {
        name: "process_memory_drives_memory",
        lead: &["process_memory_growth"],
        lag: &["memory_growth"],
        min_lag_ms: 0,
        max_lag_ms: 10 * MINUTE,
        mutual: false,
        mechanism: "process heaps are part of total VM memory",
        look_at: "the processes with the largest heaps and message queues",
    },
    CausalRule {
        name: "mailbox_drives_process_memory",
        lead: &["mailbox_buildup"],
        lag: &["process_memory_growth"],
        min_lag_ms: 0,
        max_lag_ms: 5 * MINUTE,
        mutual: false,
        mechanism: "queued messages are stored on the receiving process's heap until it handles them",
        look_at: "the process whose mailbox grows: what it waits on, and who sends to it faster than it can handle",
    },
    CausalRule {
        name: "mailbox_drives_large_heap",
        lead: &["mailbox_buildup"],
        lag: &["large_heap_process"],
        min_lag_ms: 0,
        max_lag_ms: 5 * MINUTE,
        mutual: false,
        mechanism: "a long message queue lives on the receiver's heap and makes it large",
        look_at: "the process whose mailbox grows and the senders that flood it",
    },
    CausalRule {
        name: "gc_pressure_with_process_memory",
        lead: &["gc_pressure"],
        lag: &["process_memory_growth"],
        min_lag_ms: 0,
        max_lag_ms: 5 * MINUTE,
        mutual: true,
        mechanism: "growing heaps are collected more often and for longer, and collections that cannot keep up leave heaps growing",
        look_at: "the processes with the most garbage collections and the largest heaps",
    },
    CausalRule {
        name: "large_heap_drives_gc",
        lead: &["large_heap_process"],
        lag: &["gc_pressure"],
        min_lag_ms: 0,
        max_lag_ms: 5 * MINUTE,
        mutual: false,
        mechanism: "every full-sweep collection of a large heap copies all of its live data",
        look_at: "the process with the large heap: what it keeps in its state",
    },
    CausalRule {
        name: "binary_memory_drives_memory",
        lead: &["binary_memory_growth"],
        lag: &["memory_growth"],
        min_lag_ms: 0,
        max_lag_ms: 10 * MINUTE,
        mutual: false,
        mechanism: "large (refc) binaries live off-heap but count in total VM memory, and stay alive while any process still references them",
        look_at: "processes holding many binary references (long-lived processes that touch large binaries but rarely collect)",
    },
    CausalRule {
        name: "memory_pressure_reaches_os",
        lead: &["memory_growth"],
        lag: &["system_memory_high"],
        min_lag_ms: 0,
        max_lag_ms: 10 * MINUTE,
        mutual: false,
        mechanism: "the VM takes its memory from the operating system",
        look_at: "which part of VM memory grows (processes, binaries, ETS, atoms, code)",
    },
    CausalRule {
        name: "sockets_consume_fds",
        lead: &["socket_growth"],
        lag: &["fd_usage_high"],
        min_lag_ms: 0,
        max_lag_ms: 10 * MINUTE,
        mutual: false,
        mechanism: "every open socket holds a file descriptor",
        look_at: "the sockets that stay open: their owners and peers",
    },
    CausalRule {
        name: "port_exhaustion_breaks_connections",
        lead: &["fd_usage_high", "port_count_high", "port_leak"],
        lag: &["connection_errors", "error_log_burst"],
        min_lag_ms: 0,
        max_lag_ms: 5 * MINUTE,
        mutual: false,
        mechanism: "when file descriptors or ports run out, new sockets and files fail to open (emfile, system_limit) and the failures are logged",
        look_at: "the ports and sockets that accumulate: their owners, and whether they are ever closed",
    },
    CausalRule {
        name: "restart_storm_logs_errors",
        lead: &["restart_storm"],
        lag: &["error_log_burst", "exception_burst"],
        min_lag_ms: 0,
        max_lag_ms: 2 * MINUTE,
        mutual: false,
        mechanism: "every restart logs a crash report, and children that crash on start fail again at once",
        look_at: "the supervisor in the restart storm: the first crash reason of its children, not the later ones",
    },
    CausalRule {
        name: "crashes_trigger_restarts",
        lead: &["exception_burst"],
        lag: &["restart_storm"],
        min_lag_ms: 0,
        max_lag_ms: 2 * MINUTE,
        mutual: false,
        mechanism: "processes that crash are restarted by their supervisors, so a burst of crashes becomes a burst of restarts",
        look_at: "the most frequent exception in the burst and the processes it kills",
    },
    CausalRule {
        name: "supervisor_children_become_processes",
        lead: &["supervisor_child_growth"],
        lag: &["process_leak", "process_count_high"],
        min_lag_ms: 0,
        max_lag_ms: 10 * MINUTE,
        mutual: false,
        mechanism: "dynamic children that are started and never stopped add up to a growing process count",
        look_at: "the supervisor whose children grow: what starts them and what should stop them",
    },
    CausalRule {
        name: "process_leak_reaches_limit",
        lead: &["process_leak"],
        lag: &["process_count_high"],
        min_lag_ms: 0,
        max_lag_ms: 10 * MINUTE,
        mutual: false,
        mechanism: "a steady leak brings the process count towards the limit",
        look_at: "who spawns the leaking processes",
    },
    CausalRule {
        name: "atom_growth_reaches_limit",
        lead: &["atom_growth"],
        lag: &["atom_count_high"],
        min_lag_ms: 0,
        max_lag_ms: 10 * MINUTE,
        mutual: false,
        mechanism: "atoms are never garbage collected, so steady creation only ends at the atom limit, which crashes the VM",
        look_at: "code that builds atoms from outside data (String.to_atom, list_to_atom, binary_to_term without :safe)",
    },
    CausalRule {
        name: "pool_saturation_slows_queries",
        lead: &["pool_saturation"],
        lag: &["slow_queries", "request_latency"],
        min_lag_ms: 0,
        max_lag_ms: 5 * MINUTE,
        mutual: false,
        mechanism: "with every connection checked out, queries queue for one (queue_time) before they run",
        look_at: "what holds connections for long: long transactions, slow queries, or a pool too small for the load",
    },
    CausalRule {
        name: "slow_queries_slow_requests",
        lead: &["slow_queries"],
        lag: &["request_latency"],
        min_lag_ms: 0,
        max_lag_ms: 5 * MINUTE,
        mutual: false,
        mechanism: "requests wait for their queries",
        look_at: "the slowest query sources and their plans",
    },
    CausalRule {
        name: "query_errors_logged",
        lead: &["query_error_rate"],
        lag: &["error_log_burst", "exception_burst"],
        min_lag_ms: 0,
        max_lag_ms: 2 * MINUTE,
        mutual: false,
        mechanism: "failed queries raise in the calling process, and the errors are logged and reported",
        look_at: "the failing queries and the database's own log",
    },
    CausalRule {
        name: "run_queue_delays_requests",
        lead: &["run_queue_high"],
        lag: &["request_latency"],
        min_lag_ms: 0,
        max_lag_ms: 5 * MINUTE,
        mutual: false,
        mechanism: "with long run queues every process waits longer for a scheduler, requests included",
        look_at: "the processes using the most reductions, and anything spinning or doing heavy work on normal schedulers",
    },
    CausalRule {
        name: "host_cpu_starves_schedulers",
        lead: &["cpu_load_high"],
        lag: &["run_queue_high"],
        min_lag_ms: 0,
        max_lag_ms: 5 * MINUTE,
        mutual: false,
        mechanism: "when the host's CPUs are saturated the VM's schedulers get less time and run queues grow",
        look_at: "what loads the host: other OS processes, or the VM itself (scheduler utilisation)",
    },
];

/// The longest lag in the causal table.
pub fn max_causal_lag_ms() -> i64 {
    CAUSAL_RULES
        .iter()
        .map(|rule| rule.max_lag_ms)
        .max()
        .unwrap_or(0)
}

/// A rule that relates two anomaly types, and which of the two leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleMatch {
    pub rule: usize,
    /// `true` when the first type asked about is the rule's lead.
    pub first_leads: bool,
}

/// Every anomaly type named in the causal table, with a dense index so that
/// the engine looks rules up by number rather than by hashing text for every
/// pair of alerts it compares.
struct Vocabulary {
    index: HashMap<&'static str, u16>,
    /// `matrix[a * len + b]`: the rules relating types `a` and `b`.
    matrix: Vec<Vec<RuleMatch>>,
    len: usize,
}

static VOCABULARY: LazyLock<Vocabulary> = LazyLock::new(|| {
    let mut index: HashMap<&'static str, u16> = HashMap::new();
    for rule in CAUSAL_RULES {
        for name in rule.lead.iter().chain(rule.lag) {
            let next = index.len() as u16;
            index.entry(name).or_insert(next);
        }
    }
    let len = index.len();
    let mut matrix = vec![Vec::new(); len * len];
    for (i, rule) in CAUSAL_RULES.iter().enumerate() {
        for lead in rule.lead {
            for lag in rule.lag {
                let (x, y) = (usize::from(index[lead]), usize::from(index[lag]));
                matrix[x * len + y].push(RuleMatch {
                    rule: i,
                    first_leads: true,
                });
                matrix[y * len + x].push(RuleMatch {
                    rule: i,
                    first_leads: false,
                });
            }
        }
    }
    Vocabulary { index, matrix, len }
});

/// The index of an anomaly type in the causal table's vocabulary, if the
/// table knows it.
pub fn type_index(anomaly_type: &str) -> Option<u16> {
    VOCABULARY.index.get(anomaly_type).copied()
}

/// The rules relating two anomaly types given by [`type_index`].
pub fn rules_between_indexed(a: Option<u16>, b: Option<u16>) -> &'static [RuleMatch] {
    match (a, b) {
        (Some(a), Some(b)) => {
            let vocabulary = &*VOCABULARY;
            &vocabulary.matrix[usize::from(a) * vocabulary.len + usize::from(b)]
        }
        _ => &[],
    }
}

/// The rules relating anomaly types `a` and `b`, in either direction.
pub fn rules_between(a: &str, b: &str) -> &'static [RuleMatch] {
    rules_between_indexed(type_index(a), type_index(b))
}

/// Whether a resource belongs to one node or is shared by the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Node,
    Cluster,
}

/// The resources an anomaly type strains. Alerts on the same resource with
/// no causal order between them are symptoms of a common cause.
pub fn resources(anomaly_type: &str) -> &'static [&'static str] {
    match anomaly_type {
        "memory_growth"
        | "process_memory_growth"
        | "binary_memory_growth"
        | "system_memory_high"
        | "gc_pressure"
        | "large_heap_process" => &["memory"],
        "ets_memory_growth" => &["memory", "ets"],
        "ets_table_growth" | "ets_table_count_high" => &["ets"],
        "run_queue_high" | "scheduler_utilization_high" | "cpu_load_high" => &["cpu"],
        "process_count_high" | "process_leak" | "supervisor_child_growth" => &["processes"],
        "atom_count_high" | "atom_growth" => &["atoms"],
        "port_count_high" | "port_leak" | "fd_usage_high" | "socket_growth" => &["ports"],
        "disk_usage_high" => &["disk"],
        "slow_queries" | "pool_saturation" | "query_error_rate" => &["database"],
        _ => &[],
    }
}

/// Resources every node shares (one database behind all of them); any other
/// resource is the node's own (its memory, its CPUs).
pub fn resource_scope(resource: &str) -> Scope {
    match resource {
        "database" | "network" | "queue" | "cache" => Scope::Cluster,
        _ => Scope::Node,
    }
}

/// Entity kinds whose ids only mean something on one node: a pid, a port, a
/// registered name or an ETS table on node A is another thing than the same
/// text on node B. Other kinds (modules, nodes, custom kinds such as a
/// database table) are shared by the cluster.
pub fn entity_scope(kind: &str, id: &str) -> Scope {
    match kind {
        "pid" | "port" | "process" | "ets_table" | "supervisor" => Scope::Node,
        "resource" => resource_scope(id),
        _ => Scope::Cluster,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_is_well_formed() {
        let mut names = std::collections::HashSet::new();
        for rule in CAUSAL_RULES {
            assert!(names.insert(rule.name), "duplicate rule {}", rule.name);
            assert!(
                !rule.lead.is_empty() && !rule.lag.is_empty(),
                "{}",
                rule.name
            );
            assert!(rule.min_lag_ms >= 0 && rule.min_lag_ms <= rule.max_lag_ms);
            assert!(
                rule.max_lag_ms <= 10 * MINUTE,
                "{} keeps alerts too long",
                rule.name
            );
            for t in rule.lead.iter().chain(rule.lag) {
                assert!(
                    !rule.lead.contains(t) || !rule.lag.contains(t),
                    "{t} on both sides"
                );
            }
        }
    }

    #[test]
    fn the_seeded_relations_are_in_the_table() {
        let leads = |a: &str, b: &str| rules_between(a, b).iter().any(|m| m.first_leads);
        assert!(leads("ets_memory_growth", "memory_growth"));
        assert!(leads("ets_table_growth", "memory_growth"));
        assert!(leads("process_leak", "process_memory_growth"));
        assert!(leads("process_count_high", "process_memory_growth"));
        assert!(leads("process_memory_growth", "memory_growth"));
        assert!(leads("mailbox_buildup", "process_memory_growth"));
        assert!(leads("binary_memory_growth", "memory_growth"));
        assert!(leads("fd_usage_high", "connection_errors"));
        assert!(leads("port_leak", "error_log_burst"));
        assert!(leads("restart_storm", "exception_burst"));
        assert!(leads("pool_saturation", "request_latency"));
        assert!(leads("memory_growth", "system_memory_high"));
        assert!(leads("run_queue_high", "request_latency"));

        // Direction matters...
        assert!(!leads("memory_growth", "ets_memory_growth"));
        assert!(rules_between("memory_growth", "ets_memory_growth")
            .iter()
            .all(|m| !m.first_leads));
        // ...except for mutual relations.
        let gc = rules_between("process_memory_growth", "gc_pressure");
        assert!(gc.iter().any(|m| CAUSAL_RULES[m.rule].mutual));
        // Unrelated and unknown types have no rule.
        assert!(rules_between("disk_usage_high", "atom_growth").is_empty());
        assert!(rules_between("my_custom_thing", "memory_growth").is_empty());
    }

    #[test]
    fn scopes() {
        assert_eq!(entity_scope("pid", "#PID<0.1.0>"), Scope::Node);
        assert_eq!(entity_scope("ets_table", "sessions"), Scope::Node);
        assert_eq!(entity_scope("module", "MyApp.Cache"), Scope::Cluster);
        assert_eq!(entity_scope("resource", "memory"), Scope::Node);
        assert_eq!(entity_scope("resource", "database"), Scope::Cluster);
        assert_eq!(resources("slow_queries"), &["database"]);
        assert_eq!(resources("unknown"), &[] as &[&str]);
        assert_eq!(max_causal_lag_ms(), 10 * MINUTE);
    }
}
