//! End-to-end scenarios: the real kproxy binary in a node network namespace, pods and an
//! external host wired to it by veth pairs, real TCP and UDP traffic checked by where it lands
//! and what source address the server saw.
//!
//! Invariants: every scenario is written once, as `fn(&mut Cluster)` in a `scenarios_*` module,
//! and `scenarios!(mode)` instantiates all of them as one `#[test]` each for a proxy mode;
//! adding a mode is one `mod <mode> { scenarios!("<mode>"); }` line. Root only: without root,
//! `ip` or `python3` a test skips with a message, and under CI=true a skip is a failure. Traffic
//! goes only to addresses inside the namespaces a test created; waiting is polling with a
//! deadline, never a sleep; each scenario prints the latency of every change it waits for.

#[path = "../support/mod.rs"]
mod support;

mod client;
mod cluster;
mod manifests;
mod mode;
mod node_setup;
mod scenarios_changes;
mod scenarios_clusterip;
mod scenarios_conntrack;
mod scenarios_explain;
mod scenarios_external;
mod scenarios_families;
mod scenarios_iptables;
mod scenarios_ipvs;
mod scenarios_ipvs_repair;
mod scenarios_lifecycle;
mod scenarios_local;
mod scenarios_metrics;
mod scenarios_nftables;
mod scenarios_node;
mod scenarios_node_changes;
mod scenarios_policy;
mod scenarios_quarantine;
mod topology;

use std::process::Command;

use cluster::Cluster;
use mode::Mode;

/// Runs `scenario` against a fresh cluster in `mode`, or skips (see the module invariants).
pub fn run(mode: &'static str, test: &str, scenario: fn(&mut Cluster)) {
    if !support::netns::can_run(test) {
        return;
    }
    let python = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !python {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but {test} cannot run: no python3"
        );
        eprintln!("skipped {test}: no python3");
        return;
    }
    let mut cluster = Cluster::start(Mode::named(mode));
    scenario(&mut cluster);
}

/// One `#[test]` per scenario for proxy mode `$mode`.
macro_rules! scenarios {
    ($mode:literal) => {
        scenarios!($mode, #[cfg(all())]);
    };
    ($mode:literal, #[$attr:meta]) => {
        scenarios!(@tests $mode, #[$attr];
            scenarios_clusterip::clusterip_tcp_from_a_pod_reaches_every_endpoint,
            scenarios_clusterip::clusterip_tcp_from_the_node_itself_is_answered,
            scenarios_clusterip::clusterip_udp_from_a_pod_is_answered,
            scenarios_clusterip::clusterip_udp_from_the_node_itself_is_answered,
            scenarios_clusterip::a_service_with_a_tcp_and_a_udp_port_serves_both,
            scenarios_clusterip::load_balancing_spreads_300_connections_over_all_three_endpoints,
            scenarios_clusterip::a_service_without_endpoints_refuses_connections_at_once,
            scenarios_clusterip::a_pod_reaching_itself_through_its_service_is_answered_by_itself,
            scenarios_clusterip::a_selectorless_service_is_served_from_its_v1_endpoints,
            scenarios_clusterip::an_ipv6_clusterip_is_reached_over_tcp_from_a_pod,
            scenarios_external::nodeport_from_an_external_host_is_masqueraded_under_cluster_policy,
            scenarios_external::nodeport_under_local_policy_keeps_the_source_and_uses_only_local_endpoints,
            scenarios_external::nodeport_under_local_policy_without_local_endpoints_drops,
            scenarios_external::external_ips_are_reachable_from_an_external_host,
            scenarios_external::a_load_balancer_ingress_ip_is_reachable_from_an_external_host,
            scenarios_external::load_balancer_source_ranges_admit_listed_clients_and_drop_others,
            scenarios_external::health_check_node_port_reports_whether_there_are_local_endpoints,
            scenarios_policy::client_ip_affinity_keeps_an_external_client_on_one_endpoint_through_a_node_port,
            scenarios_policy::a_not_ready_endpoint_gets_no_traffic,
            scenarios_policy::terminating_serving_endpoints_serve_when_nothing_else_is_left,
            scenarios_policy::internal_traffic_policy_local_uses_only_local_endpoints,
            scenarios_policy::internal_traffic_policy_local_without_local_endpoints_drops,
            scenarios_policy::services_for_another_proxy_and_headless_services_get_no_rules,
            scenarios_changes::an_added_endpoint_starts_receiving_traffic,
            scenarios_changes::a_removed_endpoint_stops_receiving_traffic,
            scenarios_changes::an_added_service_becomes_reachable,
            scenarios_changes::a_changed_service_port_moves_traffic_to_the_new_port,
            scenarios_changes::a_deleted_service_is_no_longer_proxied,
            scenarios_changes::a_broken_manifest_leaves_the_good_services_working,
            scenarios_lifecycle::rules_wrecked_by_someone_else_are_restored,
            scenarios_lifecycle::restarting_kproxy_fails_no_connection,
            scenarios_lifecycle::cleanup_removes_every_kproxy_table,
            scenarios_conntrack::a_pinned_udp_client_moves_to_the_new_endpoint_of_a_cluster_ip,
            scenarios_conntrack::a_pinned_udp_client_moves_to_the_new_endpoint_of_a_node_port,
            scenarios_conntrack::restarting_kproxy_leaves_correct_udp_flows_in_place,
            scenarios_families::nested_source_ranges_admit_clients_in_one_service_and_across_two_sharing_an_lb_ip,
            scenarios_families::an_ipv4_only_node_port_is_not_served_on_the_nodes_ipv6_address,
            scenarios_families::a_dual_stack_service_with_ipv4_endpoints_refuses_tcp_on_its_ipv6_cluster_ip,
            scenarios_local::detect_local_by_interface_keeps_the_source_of_pods_behind_it_and_masquerades_the_rest,
            scenarios_local::detect_local_by_node_cidr_follows_the_nodes_pod_cidrs_as_they_change,
            scenarios_node::a_draining_node_fails_healthz_keeps_livez_and_keeps_serving,
            scenarios_node::node_ports_answer_on_the_primary_ip_in_nftables_mode_and_on_every_address_elsewhere,
            scenarios_node::another_masquerade_bit_still_masquerades,
            scenarios_metrics::metrics_carry_upstreams_names_per_mode_and_ip_family,
            scenarios_explain::explain_names_the_service_and_live_tells_a_rule_deleted_by_hand,
            scenarios_node_changes::a_primary_node_port_follows_the_nodes_internal_ip_and_outlives_the_node,
        );
    };
    (@tests $mode:literal; $($module:ident :: $name:ident),* $(,)?) => {
        scenarios!(@tests $mode, #[cfg(all())]; $($module::$name),*);
    };
    (@tests $mode:literal, #[$attr:meta]; $($module:ident :: $name:ident),* $(,)?) => {
        $(
            #[test]
            #[$attr]
            fn $name() {
                crate::run($mode, concat!($mode, "::", stringify!($name)), crate::$module::$name);
            }
        )*
    };
}

/// ClientIP affinity that holds across the ports of a Service: the nftables and iptables modes
/// keep a client on one endpoint for all of them; IPVS persistence is per virtual server (one
/// per port), as upstream's IPVS mode, so that mode runs `scenarios_ipvs`' per-port check instead.
macro_rules! affinity_across_ports {
    ($mode:literal) => {
        scenarios!(@tests $mode;
            scenarios_policy::client_ip_affinity_keeps_a_client_on_one_endpoint_across_ports,
            scenarios_policy::client_ip_affinity_on_ipv6_keeps_a_client_on_one_endpoint_across_ports,
        );
    };
}

/// The scenarios only iptables mode has.
macro_rules! iptables_only {
    ($mode:literal) => {
        scenarios!(@tests $mode;
            scenarios_iptables::a_node_port_answers_on_localhost_from_the_node,
            scenarios_iptables::localhost_node_ports_can_be_turned_off,
        );
    };
}

/// A refused Service quarantined, in the modes that run tools kproxy's PATH can wrap.
macro_rules! quarantine {
    ($mode:literal) => {
        scenarios!(@tests $mode;
            scenarios_quarantine::a_refused_service_is_quarantined_and_the_others_keep_being_updated,
        );
    };
}

mod nftables {
    scenarios!("nftables");
    affinity_across_ports!("nftables");
    scenarios!(@tests "nftables";
        scenarios_nftables::localhost_node_ports_are_relayed_on_both_loopbacks_with_the_keyword_only,
        scenarios_nftables::service_cidrs_drop_unallocated_addresses_and_undefined_cluster_ip_ports_are_rejected,
    );
}
/// nftables through the `nft` command (`--nftables-transport command`) instead of libnftables.
mod nftables_command {
    scenarios!("nftables-command");
    affinity_across_ports!("nftables-command");
    quarantine!("nftables-command");
}
/// iptables mode through iptables-nft (`--iptables-variant nft`).
mod iptables {
    scenarios!("iptables");
    affinity_across_ports!("iptables");
    iptables_only!("iptables");
    quarantine!("iptables");
}
/// iptables mode through iptables-legacy (`--iptables-variant legacy`).
mod iptables_legacy {
    scenarios!("iptables-legacy");
    affinity_across_ports!("iptables-legacy");
    iptables_only!("iptables-legacy");
    quarantine!("iptables-legacy");
}
/// IPVS mode. The host kernel of this project's machines has no IP_VS, so these are ignored
/// here and run inside the VM that `tests/vm/run.sh` boots (`test.sh` does that).
mod ipvs {
    #[test]
    #[ignore = "changes the host's conntrack table size and loads IP_VS: runs inside the VM (tests/vm)"]
    fn init_only_in_the_hosts_namespace_raises_the_conntrack_table_and_loads_ipvs() {
        crate::node_setup::init_only_in_the_hosts_namespace_raises_the_conntrack_table_and_loads_ipvs();
    }

    scenarios!("ipvs", #[ignore = "needs IP_VS: runs inside the VM (tests/vm)"]);
    scenarios!(@tests "ipvs", #[ignore = "needs IP_VS: runs inside the VM (tests/vm)"];
        scenarios_ipvs::client_ip_affinity_is_persistence_per_port_with_the_services_timeout,
        scenarios_ipvs::a_removed_endpoint_drains_at_weight_zero_and_keeps_its_connections,
        scenarios_ipvs::service_addresses_are_bound_to_the_dummy_interface_while_used,
        scenarios_ipvs_repair::the_dummy_interface_deleted_by_someone_else_is_repaired,
        scenarios_ipvs_repair::cleanup_while_kproxy_runs_is_repaired,
        scenarios_ipvs_repair::a_restart_after_cleanup_without_the_interface_serves_at_once,
        scenarios_quarantine::a_refused_service_is_quarantined_and_the_others_keep_being_updated,
    );
}
