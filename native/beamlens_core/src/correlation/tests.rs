//! Unit tests of the correlation engine, with alerts shaped like the ones
//! the watchers fire.

use super::summary::duration;
use super::Error;
use super::*;

const T0: i64 = 1_700_000_000_000;
const S: i64 = 1_000;
const MIN: i64 = 60 * S;

fn alert(id: &str, watcher: &str, anomaly_type: &str, node: &str, at: i64) -> AlertInput {
    AlertInput {
        id: id.to_string(),
        fingerprint: format!("{watcher}/{anomaly_type}/{node}"),
        watcher: watcher.to_string(),
        anomaly_type: anomaly_type.to_string(),
        node: node.to_string(),
        severity: Severity::Warning,
        entities: Vec::new(),
        detected_at_ms: at,
    }
}

fn with(mut alert: AlertInput, kind: &str, id: &str) -> AlertInput {
    alert.entities.push((kind.to_string(), id.to_string()));
    alert
}

fn engine() -> Engine {
    Engine::new(Config::default()).unwrap()
}

/// Ingests each alert in its own batch, at its own time, and returns every
/// insight reported along the way.
fn feed(engine: &mut Engine, alerts: Vec<AlertInput>) -> Vec<InsightSnapshot> {
    let mut out = Vec::new();
    for alert in alerts {
        let at = alert.detected_at_ms;
        out.extend(engine.ingest([alert], at).insights);
    }
    out
}

fn only(insights: &[InsightSnapshot]) -> &InsightSnapshot {
    assert_eq!(insights.len(), 1, "expected one insight, got {insights:#?}");
    &insights[0]
}

mod temporal {
    use super::*;

    #[test]
    fn different_watchers_on_one_node_inside_the_window() {
        let mut e = engine();
        let reported = feed(
            &mut e,
            vec![
                alert("a1", "beam", "run_queue_high", "a@h", T0),
                alert("a2", "system", "disk_usage_high", "a@h", T0 + 20 * S),
            ],
        );
        let insight = only(&reported);
        assert_eq!(insight.correlation_type, Kind::Temporal);
        // One more alert than the first, plus warning (1) and temporal (0).
        assert_eq!(insight.version, 2);
        assert_eq!(insight.alert_ids, ["a1", "a2"]);
        assert_eq!(insight.nodes, ["a@h"]);
        assert_eq!(insight.watchers, ["beam", "system"]);
        assert_eq!(insight.rules.len(), 1);
        assert_eq!(insight.rules[0].rule, "time_window");
        assert_eq!(insight.rules[0].lag_ms, Some(20 * S));
        assert_eq!(insight.root_cause, None);
        assert_eq!(insight.confidence, 0.3);
        assert_eq!(
            insight.summary,
            "Temporal correlation of 2 alerts (run_queue_high and disk_usage_high from the beam \
             and system watchers) on a@h: run_queue_high (beam) and disk_usage_high (system) \
             fired within 20 s of each other on a@h (temporal: different watchers inside the \
             1 min window)."
        );
        assert!(
            insight.root_cause_hypothesis.contains(
                "The earliest, run_queue_high on a@h from the beam watcher, came up to 20 s before"
            ),
            "{}",
            insight.root_cause_hypothesis
        );
        assert_eq!(insight.created_at_ms, T0 + 20 * S);
    }

    #[test]
    fn alerts_outside_the_window_stay_apart() {
        let mut e = engine();
        let reported = feed(
            &mut e,
            vec![
                alert("a1", "beam", "run_queue_high", "a@h", T0),
                alert("a2", "system", "disk_usage_high", "a@h", T0 + 61 * S),
            ],
        );
        assert!(reported.is_empty(), "{reported:#?}");
        assert_eq!(e.stats().groups, 2);
    }

    #[test]
    fn the_window_is_configurable() {
        let mut e = Engine::new(Config {
            window_ms: 120 * S,
            ..Config::default()
        })
        .unwrap();
        let reported = feed(
            &mut e,
            vec![
                alert("a1", "beam", "run_queue_high", "a@h", T0),
                alert("a2", "system", "disk_usage_high", "a@h", T0 + 90 * S),
            ],
        );
        assert_eq!(only(&reported).correlation_type, Kind::Temporal);
    }

    #[test]
    fn unrelated_alerts_stay_apart() {
        let mut e = engine();
        let reported = feed(
            &mut e,
            vec![
                // Same watcher, unrelated resources: not temporal.
                alert("a1", "beam", "atom_growth", "a@h", T0),
                alert("a2", "beam", "run_queue_high", "a@h", T0 + S),
                // Another node, other types, nothing shared.
                alert("b1", "ets", "ets_table_count_high", "b@h", T0 + 2 * S),
                alert("b2", "system", "disk_usage_high", "c@h", T0 + 3 * S),
                // The same ETS table name on two nodes is two tables.
                with(
                    alert("c1", "ets", "ets_table_growth", "d@h", T0),
                    "ets_table",
                    "cache",
                ),
                with(
                    alert("c2", "ets", "ets_table_growth", "e@h", T0 + 90 * S),
                    "ets_table",
                    "cache",
                ),
            ],
        );
        assert!(reported.is_empty(), "{reported:#?}");
        assert_eq!(e.stats().groups, 6);
    }
}

mod causal {
    use super::*;

    #[test]
    fn ets_growth_before_memory_growth() {
        let mut e = engine();
        let reported = feed(
            &mut e,
            vec![
                with(
                    alert("e1", "ets", "ets_memory_growth", "a@h", T0),
                    "ets_table",
                    "sessions",
                ),
                alert("m1", "beam", "memory_growth", "a@h", T0 + 40 * S),
            ],
        );
        let insight = only(&reported);
        assert_eq!(insight.correlation_type, Kind::Causal);
        assert_eq!(insight.rules[0].rule, "ets_growth_drives_memory");
        assert_eq!(
            insight.rules[0].anomaly_types,
            ["ets_memory_growth", "memory_growth"]
        );
        assert_eq!(insight.rules[0].lag_ms, Some(40 * S));
        assert!(insight.summary.starts_with(
            "Causal correlation of 2 alerts (ets_memory_growth and memory_growth from the ets and \
             beam watchers) on a@h: ets_memory_growth preceded memory_growth by 40 s on a@h \
             (causal rule ets_growth_drives_memory: ets_memory_growth leads memory_growth by 0 ms to 10 min)"
        ), "{}", insight.summary);
        let root = insight.root_cause.as_ref().unwrap();
        assert_eq!(root.alert_id, "e1");
        assert_eq!(root.anomaly_type, "ets_memory_growth");
        assert_eq!(root.entity.as_deref(), Some("ets_table sessions"));
        assert_eq!(root.rule, "ets_growth_drives_memory");
        assert_eq!(
            insight.root_cause_hypothesis,
            "Likely root cause: ets_memory_growth on a@h (ets_table sessions) from the ets \
             watcher, first in the causal chain ets_memory_growth → memory_growth. By the causal \
             table, ETS tables are stored outside process heaps, so whatever a table gains is \
             added straight to total VM memory. Look first at the tables named in that alert: \
             their owner, their size over time, and the code that inserts without deleting."
        );
        assert_eq!(insight.confidence, 0.7);
    }

    #[test]
    fn only_when_the_order_fits() {
        // error_log_burst 30 s before restart_storm: the restart storm cannot
        // have caused it. Different watchers in the window: temporal.
        let mut e = engine();
        let reported = feed(
            &mut e,
            vec![
                alert("l1", "logger", "error_log_burst", "a@h", T0),
                alert("s1", "sup", "restart_storm", "a@h", T0 + 30 * S),
            ],
        );
        assert_eq!(only(&reported).correlation_type, Kind::Temporal);

        // The other way round it fits.
        let mut e = engine();
        let reported = feed(
            &mut e,
            vec![
                alert("s1", "sup", "restart_storm", "a@h", T0),
                alert("l1", "logger", "error_log_burst", "a@h", T0 + 30 * S),
            ],
        );
        let insight = only(&reported);
        assert_eq!(insight.correlation_type, Kind::Causal);
        assert_eq!(insight.rules[0].rule, "restart_storm_logs_errors");
        assert_eq!(insight.root_cause.as_ref().unwrap().alert_id, "s1");
    }

    #[test]
    fn arrival_order_does_not_matter_only_detection_time() {
        let mut e = engine();
        let report = e.ingest(
            [
                alert("m1", "beam", "memory_growth", "a@h", T0 + 40 * S),
                alert("e1", "ets", "ets_memory_growth", "a@h", T0),
            ],
            T0 + 41 * S,
        );
        let insight = only(&report.insights);
        assert_eq!(insight.correlation_type, Kind::Causal);
        assert_eq!(insight.root_cause.as_ref().unwrap().alert_id, "e1");
    }

    #[test]
    fn a_lag_longer_than_the_rule_allows_is_not_causal() {
        let mut e = engine();
        let reported = feed(
            &mut e,
            vec![
                alert("s1", "sup", "restart_storm", "a@h", T0),
                alert("l1", "logger", "error_log_burst", "a@h", T0 + 3 * MIN),
            ],
        );
        assert!(reported.is_empty(), "{reported:#?}");
    }

    #[test]
    fn near_simultaneous_detection_within_the_tolerance() {
        let mut e = engine();
        let reported = feed(
            &mut e,
            vec![
                alert("m1", "beam", "memory_growth", "a@h", T0),
                alert("e1", "ets", "ets_memory_growth", "a@h", T0 + 3 * S),
            ],
        );
        let insight = only(&reported);
        assert_eq!(insight.correlation_type, Kind::Causal);
        assert_eq!(insight.rules[0].lag_ms, Some(-3 * S));
        assert!(insight
            .summary
            .contains("were detected together on a@h, memory_growth only 3 s earlier"));
        assert_eq!(insight.root_cause.as_ref().unwrap().alert_id, "e1");
    }

    #[test]
    fn reversed_memory_alerts_share_a_resource_instead() {
        // memory_growth 30 s before ets_memory_growth: no causal order, but
        // both are about the node's memory.
        let mut e = engine();
        let reported = feed(
            &mut e,
            vec![
                alert("m1", "beam", "memory_growth", "a@h", T0),
                alert("e1", "ets", "ets_memory_growth", "a@h", T0 + 30 * S),
            ],
        );
        let insight = only(&reported);
        assert_eq!(insight.correlation_type, Kind::Symptomatic);
        assert_eq!(insight.rules[0].rule, "shared_resource");
        assert_eq!(
            insight.rules[0].shared.as_deref(),
            Some("the memory of a@h")
        );
        assert_eq!(insight.root_cause, None);
    }

    #[test]
    fn a_chain_names_its_first_link_as_the_root() {
        let mut e = engine();
        let reported = feed(
            &mut e,
            vec![
                alert("p1", "beam", "process_leak", "a@h", T0),
                alert("p2", "beam", "process_memory_growth", "a@h", T0 + 30 * S),
                alert("m1", "beam", "memory_growth", "a@h", T0 + 60 * S),
            ],
        );
        assert_eq!(reported.len(), 2);
        let last = &reported[1];
        assert_eq!((reported[0].version, last.version), (4, 5));
        assert_eq!(last.id, reported[0].id);
        assert_eq!(last.correlation_type, Kind::Causal);
        assert_eq!(last.root_cause.as_ref().unwrap().alert_id, "p1");
        assert!(last.root_cause_hypothesis.contains(
            "first in the causal chain process_leak → process_memory_growth → memory_growth"
        ));
        let rules: Vec<&str> = last.rules.iter().map(|r| r.rule.as_str()).collect();
        assert!(
            rules.contains(&"process_growth_drives_process_memory"),
            "{rules:?}"
        );
        assert!(rules.contains(&"process_memory_drives_memory"), "{rules:?}");
        assert_eq!(last.confidence, 0.8);
    }

    #[test]
    fn mutual_relations_have_no_single_origin() {
        let mut e = engine();
        let reported = feed(
            &mut e,
            vec![
                alert("p1", "beam", "process_memory_growth", "a@h", T0),
                alert("g1", "gc", "gc_pressure", "a@h", T0 + 12 * S),
            ],
        );
        let insight = only(&reported);
        assert_eq!(insight.correlation_type, Kind::Causal);
        assert_eq!(insight.rules[0].rule, "gc_pressure_with_process_memory");
        assert_eq!(insight.root_cause, None);
        assert!(insight
            .root_cause_hypothesis
            .contains("reinforce each other"));
        assert_eq!(insight.confidence, 0.6);
    }

    #[test]
    fn causal_relations_stay_on_one_node() {
        let mut e = engine();
        let reported = feed(
            &mut e,
            vec![
                alert("s1", "sup", "restart_storm", "a@h", T0),
                alert("l1", "logger", "error_log_burst", "b@h", T0 + 30 * S),
            ],
        );
        assert!(reported.is_empty(), "{reported:#?}");
    }
}

mod symptomatic {
    use super::*;

    #[test]
    fn a_shared_entity_without_causal_order() {
        let mut e = engine();
        let reported = feed(
            &mut e,
            vec![
                with(
                    alert("x1", "exception", "exception_burst", "a@h", T0),
                    "module",
                    "MyApp.Worker",
                ),
                with(
                    alert("c1", "logger", "connection_errors", "a@h", T0 + 5 * S),
                    "module",
                    "MyApp.Worker",
                ),
            ],
        );
        let insight = only(&reported);
        assert_eq!(insight.correlation_type, Kind::Symptomatic);
        assert_eq!(insight.rules[0].rule, "shared_entity");
        assert_eq!(
            insight.rules[0].shared.as_deref(),
            Some("module MyApp.Worker")
        );
        assert!(insight
            .summary
            .contains("exception_burst and connection_errors both concern module MyApp.Worker"));
        assert!(insight.root_cause_hypothesis.starts_with(
            "A common cause acting on module MyApp.Worker is likely behind these alerts"
        ));
        assert_eq!(insight.confidence, 0.65);
    }

    #[test]
    fn modules_are_shared_across_nodes_pids_are_not() {
        let mut e = engine();
        let reported = feed(
            &mut e,
            vec![
                with(
                    alert("x1", "exception", "exception_burst", "a@h", T0),
                    "module",
                    "MyApp.Worker",
                ),
                with(
                    alert("l1", "logger", "error_log_burst", "b@h", T0 + 5 * S),
                    "module",
                    "MyApp.Worker",
                ),
            ],
        );
        let insight = only(&reported);
        assert_eq!(insight.nodes, ["a@h", "b@h"]);
        assert!(insight.summary.contains("across 2 nodes (a@h and b@h)"));

        let mut e = engine();
        let reported = feed(
            &mut e,
            vec![
                with(
                    alert("g1", "gc", "large_heap_process", "a@h", T0),
                    "pid",
                    "#PID<0.90.0>",
                ),
                with(
                    alert("l1", "logger", "error_log_burst", "b@h", T0 + 5 * S),
                    "pid",
                    "#PID<0.90.0>",
                ),
            ],
        );
        assert!(reported.is_empty(), "{reported:#?}");
    }

    #[test]
    fn a_shared_pid_on_one_node() {
        let mut e = engine();
        let reported = feed(
            &mut e,
            vec![
                with(
                    alert("g1", "gc", "large_heap_process", "a@h", T0),
                    "pid",
                    "#PID<0.90.0>",
                ),
                with(
                    alert("l1", "logger", "error_log_burst", "a@h", T0 + 5 * S),
                    "pid",
                    "#PID<0.90.0>",
                ),
            ],
        );
        let insight = only(&reported);
        assert_eq!(insight.correlation_type, Kind::Symptomatic);
        assert_eq!(
            insight.rules[0].shared.as_deref(),
            Some("pid #PID<0.90.0> on a@h")
        );
        assert!(insight
            .root_cause_hypothesis
            .contains("message queue length, heap size"));
    }

    #[test]
    fn the_same_symptom_on_several_nodes_is_one_insight() {
        let mut e = engine();
        let reported = feed(
            &mut e,
            vec![
                alert("a", "logger", "connection_errors", "a@h", T0),
                alert("b", "logger", "connection_errors", "b@h", T0 + 4 * S),
                alert("c", "logger", "connection_errors", "c@h", T0 + 9 * S),
            ],
        );
        assert_eq!(reported.len(), 2);
        let insight = &reported[1];
        assert_eq!(insight.id, reported[0].id);
        assert_eq!(insight.version, reported[0].version + 1);
        assert_eq!(insight.correlation_type, Kind::Symptomatic);
        assert_eq!(insight.nodes, ["a@h", "b@h", "c@h"]);
        assert_eq!(insight.rules.len(), 1);
        assert_eq!(insight.rules[0].rule, "same_symptom_on_several_nodes");
        assert!(
            insight
                .summary
                .contains("connection_errors fired on 3 nodes (a@h, b@h and c@h) within 9 s"),
            "{}",
            insight.summary
        );
        assert!(insight
            .root_cause_hypothesis
            .contains("It showed first on a@h"));
        assert_eq!(insight.confidence, 0.6);
    }

    #[test]
    fn the_database_is_shared_by_the_cluster() {
        let mut e = engine();
        let reported = feed(
            &mut e,
            vec![
                alert("q1", "ecto", "slow_queries", "a@h", T0),
                alert("q2", "ecto", "query_error_rate", "b@h", T0 + 10 * S),
            ],
        );
        let insight = only(&reported);
        assert_eq!(insight.correlation_type, Kind::Symptomatic);
        assert_eq!(
            insight.rules[0].shared.as_deref(),
            Some("the shared database")
        );
    }
}

mod grouping {
    use super::*;

    #[test]
    fn a_joining_alert_updates_the_insight() {
        let mut e = engine();
        let first = feed(
            &mut e,
            vec![
                alert("e1", "ets", "ets_memory_growth", "a@h", T0),
                alert("m1", "beam", "memory_growth", "a@h", T0 + 40 * S),
            ],
        );
        let (id, version) = (only(&first).id.clone(), only(&first).version);
        let second = feed(
            &mut e,
            vec![alert(
                "o1",
                "system",
                "system_memory_high",
                "a@h",
                T0 + 90 * S,
            )],
        );
        let updated = only(&second);
        assert_eq!(updated.id, id);
        assert_eq!(updated.version, version + 1);
        assert_eq!(updated.alert_ids, ["e1", "m1", "o1"]);
        assert_eq!(updated.created_at_ms, T0 + 40 * S);
        assert_eq!(updated.updated_at_ms, T0 + 90 * S);
        assert_eq!(e.stats().groups, 1);
    }

    #[test]
    fn repeats_are_folded_by_fingerprint_and_ids_deduplicated() {
        let mut e = engine();
        feed(
            &mut e,
            vec![
                alert("e1", "ets", "ets_memory_growth", "a@h", T0),
                alert("m1", "beam", "memory_growth", "a@h", T0 + 40 * S),
            ],
        );
        // The same alert delivered twice (local and through the cluster).
        let again = e.ingest(
            [alert("m1", "beam", "memory_growth", "a@h", T0 + 40 * S)],
            T0 + 41 * S,
        );
        assert_eq!(again, Report::default());
        // A repeat of the same problem: folded, nothing new to say.
        let repeat = e.ingest(
            [alert("m2", "beam", "memory_growth", "a@h", T0 + 70 * S)],
            T0 + 70 * S,
        );
        assert_eq!(repeat, Report::default());

        let stats = e.stats();
        assert_eq!((stats.received, stats.duplicates, stats.folded), (4, 1, 1));
        let current = e.insights();
        let insight = only(&current);
        assert_eq!(insight.version, 4);
        assert_eq!(insight.alert_count, 3);
        assert_eq!(insight.alert_ids, ["e1", "m1", "m2"]);
        assert_eq!(insight.members[1].occurrences, 2);
    }

    #[test]
    fn a_rising_severity_is_a_new_version() {
        let mut e = engine();
        feed(
            &mut e,
            vec![
                alert("e1", "ets", "ets_memory_growth", "a@h", T0),
                alert("m1", "beam", "memory_growth", "a@h", T0 + 40 * S),
            ],
        );
        let mut critical = alert("m2", "beam", "memory_growth", "a@h", T0 + 50 * S);
        critical.severity = Severity::Critical;
        let report = e.ingest([critical], T0 + 50 * S);
        let insight = only(&report.insights);
        assert_eq!(insight.version, 5);
        assert_eq!(insight.severity, Severity::Critical);
    }

    #[test]
    fn linked_insights_merge_and_the_older_survives() {
        let mut e = engine();
        let x = feed(
            &mut e,
            vec![
                alert("e1", "ets", "ets_memory_growth", "a@h", T0),
                alert("m1", "beam", "memory_growth", "a@h", T0 + 30 * S),
            ],
        );
        let y = feed(
            &mut e,
            vec![
                alert("f1", "ports", "fd_usage_high", "b@h", T0 + 40 * S),
                alert("c1", "logger", "connection_errors", "b@h", T0 + 50 * S),
            ],
        );
        let version = only(&x).version;
        let (x, y) = (only(&x).id.clone(), only(&y).id.clone());
        assert_ne!(x, y);
        // memory_growth on b@h too: the same symptom on two nodes links them.
        let report = e.ingest(
            [alert("m2", "beam", "memory_growth", "b@h", T0 + 55 * S)],
            T0 + 55 * S,
        );
        let merged = only(&report.insights);
        assert_eq!(merged.id, x);
        assert!(merged.version > version);
        assert_eq!(merged.merged_ids, std::slice::from_ref(&y));
        assert_eq!(merged.nodes, ["a@h", "b@h"]);
        assert_eq!(
            report.retired,
            [Retired {
                id: y,
                reason: "merged",
                into: Some(x)
            }]
        );
        assert_eq!(e.stats().groups, 1);
    }

    #[test]
    fn versions_do_not_depend_on_batching() {
        let alerts = vec![
            alert("p1", "beam", "process_leak", "a@h", T0),
            alert("p2", "beam", "process_memory_growth", "a@h", T0 + 30 * S),
            alert("m1", "beam", "memory_growth", "a@h", T0 + 60 * S),
        ];
        let mut one_by_one = engine();
        let reported = feed(&mut one_by_one, alerts.clone());
        let mut at_once = engine();
        let report = at_once.ingest(alerts, T0 + 60 * S);
        assert_eq!(reported.len(), 2);
        assert_eq!(reported[1], report.insights[0]);
    }

    #[test]
    fn ids_do_not_depend_on_arrival_order() {
        let alerts = vec![
            alert("a", "logger", "connection_errors", "a@h", T0),
            alert("b", "logger", "connection_errors", "b@h", T0 + 2 * S),
        ];
        let mut one = engine();
        let mut two = engine();
        let x = one.ingest(alerts.clone(), T0 + 3 * S);
        let y = two.ingest(alerts.into_iter().rev(), T0 + 3 * S);
        assert_eq!(only(&x.insights).id, only(&y.insights).id);
        assert_eq!(only(&x.insights).summary, only(&y.insights).summary);
        assert_eq!(only(&x.insights).id.len(), 16);
    }

    #[test]
    fn insights_expire_after_the_horizon() {
        let mut e = engine();
        let reported = feed(
            &mut e,
            vec![
                alert("a1", "beam", "run_queue_high", "a@h", T0),
                alert("a2", "system", "disk_usage_high", "a@h", T0 + 20 * S),
            ],
        );
        let id = only(&reported).id.clone();
        let horizon = e.stats().horizon_ms;
        assert_eq!(horizon, 10 * MIN + 5 * S);

        assert_eq!(e.advance(T0 + 20 * S + horizon - 1).retired, []);
        let report = e.advance(T0 + 20 * S + horizon);
        assert_eq!(
            report.retired,
            [Retired {
                id,
                reason: "expired",
                into: None
            }]
        );
        let stats = e.stats();
        assert_eq!(
            (stats.live_members, stats.retained_members, stats.groups),
            (0, 0, 0)
        );
        assert_eq!(stats.seen_ids, 0);
        assert!(e.insights().is_empty());
    }

    #[test]
    fn an_insight_remembers_members_that_expired_while_it_lives_on() {
        let mut e = engine();
        feed(
            &mut e,
            vec![
                alert("e1", "ets", "ets_memory_growth", "a@h", T0),
                alert("m1", "beam", "memory_growth", "a@h", T0 + 30 * S),
            ],
        );
        let horizon = e.stats().horizon_ms;
        // memory_growth keeps firing; the ETS alert is never repeated.
        let mut t = T0 + 30 * S;
        let mut n = 2;
        while t < T0 + horizon + 5 * MIN {
            t += 2 * MIN;
            n += 1;
            e.ingest(
                [alert(&format!("m{n}"), "beam", "memory_growth", "a@h", t)],
                t,
            );
        }
        let stats = e.stats();
        assert_eq!((stats.live_members, stats.retained_members), (1, 1));
        let report = e.ingest(
            [alert("o1", "system", "system_memory_high", "a@h", t + S)],
            t + S,
        );
        let insight = only(&report.insights);
        assert_eq!(insight.root_cause.as_ref().unwrap().alert_id, "e1");
        assert_eq!(
            insight.anomaly_types,
            ["ets_memory_growth", "memory_growth", "system_memory_high"]
        );
    }

    #[test]
    fn stale_alerts_are_refused() {
        let mut e = engine();
        let horizon = e.stats().horizon_ms;
        e.ingest(
            [alert("old", "beam", "run_queue_high", "a@h", T0 - horizon)],
            T0,
        );
        let stats = e.stats();
        assert_eq!((stats.stale, stats.live_members), (1, 0));
    }

    #[test]
    fn live_alerts_are_capped_oldest_first() {
        let mut e = Engine::new(Config {
            max_members: 100,
            ..Config::default()
        })
        .unwrap();
        let alerts = (0..1_000).map(|i| {
            alert(
                &format!("id{i}"),
                "custom",
                &format!("kind_{i}"),
                "a@h",
                T0 + i,
            )
        });
        e.ingest(alerts, T0 + 1_000);
        let stats = e.stats();
        assert_eq!(stats.live_members, 100);
        assert_eq!(stats.evicted, 900);
        assert!(stats.groups <= 100);
    }

    #[test]
    fn a_flood_of_100_000_alerts_leaves_bounded_state() {
        let config = Config::default();
        let mut e = Engine::new(config).unwrap();
        let types: Vec<&str> = rules::CAUSAL_RULES
            .iter()
            .flat_map(|r| r.lead.iter().chain(r.lag))
            .copied()
            .collect();
        let mut t = T0;
        let mut reported = 0;
        for batch in 0..200 {
            let alerts: Vec<AlertInput> = (0..500)
                .map(|i| {
                    let n = batch * 500 + i;
                    t += 10;
                    let node = format!("n{}@h", n % 20);
                    let ty = types[n % types.len()];
                    with(
                        alert(
                            &format!("id{n}"),
                            ty.split('_').next().unwrap(),
                            ty,
                            &node,
                            t,
                        ),
                        "pid",
                        &format!("#PID<0.{}.0>", n % 97),
                    )
                })
                .collect();
            reported += e.ingest(alerts, t).insights.len();
        }
        let stats = e.stats();
        assert_eq!(stats.received, 100_000);
        assert!(stats.live_members <= config.max_members, "{stats:?}");
        assert!(stats.retained_members <= config.max_members, "{stats:?}");
        assert!(stats.seen_ids <= config.max_members * 4, "{stats:?}");
        assert!(reported > 0);
        for insight in e.insights() {
            assert!(insight.alert_ids.len() <= 200);
            assert!(insight.members.len() <= 64 + stats.live_members);
        }
    }

    #[test]
    fn text_from_alerts_is_bounded() {
        let mut e = engine();
        let long = "x".repeat(10_000);
        let mut a = alert(&long, "beam", "run_queue_high", "a@h", T0);
        a.entities = (0..100)
            .map(|i| ("pid".to_string(), format!("{i}{long}")))
            .collect();
        e.ingest([a, alert("b", "system", "disk_usage_high", "a@h", T0)], T0);
        let insight = &e.insights()[0];
        assert!(insight.alert_ids.iter().all(|id| id.len() <= 256));
        assert!(insight.members.iter().all(|m| m.entities.len() <= 16));
    }
}

#[test]
fn config_is_validated() {
    let bad = |config: Config| Engine::new(config).unwrap_err();
    assert_eq!(
        bad(Config {
            window_ms: 0,
            ..Config::default()
        }),
        Error::bad_argument("window_ms", "must be between 1 and 86400000, got 0")
    );
    assert!(matches!(
        bad(Config { max_members: 0, ..Config::default() }),
        Error::BadArgument { name, .. } if name == "max_members"
    ));
    assert!(matches!(
        bad(Config { order_tolerance_ms: -1, ..Config::default() }),
        Error::BadArgument { name, .. } if name == "order_tolerance_ms"
    ));
}

#[test]
fn durations_read_naturally() {
    assert_eq!(duration(0), "0 ms");
    assert_eq!(duration(999), "999 ms");
    assert_eq!(duration(1_500), "1.5 s");
    assert_eq!(duration(40_000), "40 s");
    assert_eq!(duration(60_000), "1 min");
    assert_eq!(duration(90_000), "1 min 30 s");
    assert_eq!(duration(3_600_000), "1 h");
}
