//! Live tests of element batches over netlink (`encode` + `nftables::elements`), each in
//! throwaway network namespaces: what a batch leaves in the kernel is exactly what the same
//! operations as `nft -f` text leave (compared by `nft list table`, both families), a refused
//! batch names its set and changes nothing, and the backend on libnftables or on the `netlink`
//! transport sends its element changes as batches with the same result as the `nft` command.
//!
//! Invariants: as `transport_tests` (root only; skip without, failure under CI=true).

use crate::backends::Backend;
use crate::backends::nft::NftBackend;
use crate::backends::nft::diff::{Mirror, Parts, Scope, transaction};
use crate::backends::nft::encode;
use crate::backends::nft::reconcile::parse_listing;
use crate::backends::nft::transaction::{Op, Transaction};
use crate::backends::nft::transport_tests::Netns;
use crate::model::{IpFamily, Protocol};
use crate::nftables::transport::{NftCli, NftError, Transport};
use crate::nftables::{NftLib, NftNetlink, elements};
use crate::testing::{add, cluster_ips, config, ep, external, name, node};

fn lib(ns: &Netns) -> NftLib {
    NftLib::in_netns(&ns.name).unwrap_or_else(|e| panic!("libnftables must load here: {e}"))
}

fn listing(ns: &Netns) -> String {
    let v4 = ns.run(&["nft", "list", "table", "ip", "kproxy"]);
    let v6 = ns.run(&["nft", "list", "table", "ip6", "kproxy"]);
    format!("{v4}{v6}")
}

fn tx_of(ops: impl IntoIterator<Item = Op>) -> Transaction {
    let mut tx = Transaction::default();
    tx.extend(ops);
    tx
}

/// Whether `op` is an element operation a batch can carry.
fn encodable(op: &Op) -> bool {
    encode::batch(&tx_of([op.clone()])).is_some()
}

#[test]
fn a_batch_leaves_exactly_what_the_same_elements_as_nft_text_leave() {
    let (Some(text), Some(native)) = (Netns::new(), Netns::new()) else {
        return;
    };
    let mut cli = NftCli::in_netns(&text.name);
    let mut lib = lib(&native);
    let mut batched = 0;
    let mut ranges = 0;
    for plans in [cluster_ips(), external()] {
        let parts = Parts::new(&plans, &node(), &config());
        let ops = transaction(&Mirror::default(), &parts, Scope::Full).into_ops();
        let (elements, rest): (Vec<Op>, Vec<Op>) = ops.into_iter().partition(encodable);
        let rest = tx_of(rest).to_string();
        cli.apply(&rest).unwrap_or_else(|e| panic!("{e}\n{rest}"));
        lib.apply(&rest).unwrap_or_else(|e| panic!("{e}\n{rest}"));
        ranges += elements
            .iter()
            .filter(|op| matches!(op, Op::AddElement(_, "firewall-allow", ..)))
            .count();
        let adds = tx_of(elements.clone());
        cli.apply(&adds.to_string()).unwrap();
        let batch = encode::batch(&adds).expect("encodable");
        batched += batch.len();
        lib.apply_elements(batch).unwrap();
        assert_eq!(listing(&native), listing(&text));
        assert!(
            listing(&native).contains(" : goto lb-"),
            "{}",
            listing(&native)
        );
        // The comments went as user data, and nft lists them as it lists its own.
        assert!(
            listing(&native).contains(" comment \"default/"),
            "{}",
            listing(&native)
        );

        let deletes = tx_of(elements.iter().filter_map(|op| match op {
            Op::AddElement(f, s, k, _) => Some(Op::DeleteElement(*f, s, k.clone())),
            _ => None,
        }));
        cli.apply(&deletes.to_string()).unwrap();
        lib.apply_elements(encode::batch(&deletes).unwrap())
            .unwrap();
        assert_eq!(listing(&native), listing(&text));
        for ns in [&text, &native] {
            ns.run(&["nft", "delete", "table", "ip", "kproxy"]);
            ns.run(&["nft", "delete", "table", "ip6", "kproxy"]);
        }
    }
    assert!(batched > 20, "only {batched} elements went as batches");
    assert!(ranges > 0, "no source range went as a batch");
}

#[test]
fn a_refused_batch_names_its_set_and_changes_nothing() {
    let Some(ns) = Netns::new() else { return };
    let mut lib = lib(&ns);
    let plans = cluster_ips();
    let parts = Parts::new(&plans, &node(), &config());
    lib.apply(&transaction(&Mirror::default(), &parts, Scope::Full).to_string())
        .unwrap();
    let before = listing(&ns);
    let ops = [
        Op::AddElement(
            IpFamily::V4,
            "cluster-ports",
            "10.96.9.9 . tcp . 80".into(),
            String::new(),
        ),
        // Not there: the kernel refuses, and the addition above must not stay either.
        Op::DeleteElement(
            IpFamily::V4,
            "endpoints-udp",
            "10.96.9.9 . udp . 53 . 0".into(),
        ),
    ];
    let err = lib
        .apply_elements(encode::batch(&tx_of(ops)).unwrap())
        .unwrap_err();
    assert!(
        matches!(
            &err,
            NftError::Elements(elements::ElementsError::Refused { set, .. }) if set == "endpoints-udp"
        ),
        "{err}"
    );
    assert_eq!(listing(&ns), before, "a refused batch changed the kernel");
    // The transport goes on: a good batch after it applies.
    let good = [Op::AddElement(
        IpFamily::V4,
        "cluster-ports",
        "10.96.9.9 . tcp . 80".into(),
        String::new(),
    )];
    lib.apply_elements(encode::batch(&tx_of(good)).unwrap())
        .unwrap();
    assert!(listing(&ns).contains("10.96.9.9 . tcp . 80"));
}

#[test]
fn the_backend_on_libnftables_or_netlink_sends_element_changes_as_batches_with_the_commands_result()
{
    let (Some(text), Some(native), Some(mixed)) = (Netns::new(), Netns::new(), Netns::new()) else {
        return;
    };
    let mut by_cli = NftBackend::new(config(), NftCli::in_netns(&text.name));
    let mut by_lib = NftBackend::new(config(), lib(&native));
    let mut by_net = NftBackend::new(config(), NftNetlink::in_netns(&mixed.name));
    let mut plans = cluster_ips();
    let web = name("web", "http", Protocol::Tcp);
    for b in [&mut by_cli as &mut dyn Backend, &mut by_lib, &mut by_net] {
        b.sync_full(&plans, &node()).unwrap();
    }
    assert_eq!(listing(&native), listing(&text));
    assert_eq!(listing(&mixed), listing(&text));
    // One endpoint moves: a partial sync of elements only (no new lb-N chain).
    let port = plans[&web].port.clone();
    let eps = vec![
        ep("10.0.1.1", 8080, "node-a"),
        ep("10.0.2.1", 8080, "node-b"),
        ep("10.0.4.1", 8080, "node-c"),
    ];
    add(&mut plans, port, eps);
    let changed = [web].into_iter().collect();
    for b in [&mut by_cli as &mut dyn Backend, &mut by_lib, &mut by_net] {
        let r = b.sync_partial(&plans, &changed, &node()).unwrap();
        assert!(r.operations > 0);
    }
    assert_eq!(
        by_cli.element_batches(),
        0,
        "the command transport sends text"
    );
    for (b, which) in [
        (&by_lib.element_batches(), "libnftables"),
        (&by_net.element_batches(), "netlink"),
    ] {
        assert_eq!(*b, 1, "{which}: the partial sync went as a batch");
    }
    let after = listing(&native);
    assert!(after.contains("10.0.4.1 . 8080"), "{after}");
    assert_eq!(after, listing(&text));
    assert_eq!(listing(&mixed), listing(&text));
}

#[test]
fn a_table_read_over_netlink_is_what_its_nft_listing_says_and_a_restart_rewrites_no_element() {
    let Some(ns) = Netns::new() else { return };
    let mut plans = cluster_ips();
    plans.extend(external());
    let mut first = NftBackend::new(config(), lib(&ns));
    first.sync_full(&plans, &node()).unwrap();
    let mut by_cli = NftBackend::new(config(), NftCli::in_netns(&ns.name));
    let mut by_lib = NftBackend::new(config(), lib(&ns));
    for family in [IpFamily::V4, IpFamily::V6] {
        let text = by_cli.listing(family).unwrap().expect("listed");
        let read = by_lib.listing(family).unwrap().expect("read");
        assert_eq!(read, text, "{family:?}");
        let elements: usize = read.sets.values().map(|(_, e)| e.len()).sum();
        assert!(elements > 5, "{family:?}: {elements} elements");
    }
    let cidrs = by_lib.listing(IpFamily::V4).unwrap().unwrap();
    assert_eq!(
        cidrs.sets["cluster-cidrs"].1.len(),
        1,
        "read as text: {cidrs:?}"
    );
    // A restart adopts: chains are reloaded, every element is already right.
    let before = listing(&ns);
    let report = by_lib.sync_full(&plans, &node()).unwrap();
    let reloaded = by_cli.sync_full(&plans, &node()).unwrap();
    assert_eq!(report.operations, reloaded.operations, "the same reconcile");
    assert_eq!(listing(&ns), before);
    assert_eq!(by_lib.element_batches(), 0, "no element was written");
}

#[test]
fn a_restart_over_netlink_on_fewer_services_leaves_what_a_fresh_load_of_them_leaves() {
    restart_on_fewer_services(lib);
    restart_on_fewer_services(|ns| NftNetlink::in_netns(&ns.name));
}

/// Loads Services through `transport`, removes two and moves an endpoint, restarts: the
/// kernel must then hold what a fresh load of what is left holds.
fn restart_on_fewer_services<T: Transport + 'static>(transport: impl Fn(&Netns) -> T) {
    let (Some(old), Some(fresh)) = (Netns::new(), Netns::new()) else {
        return;
    };
    let mut plans = cluster_ips();
    plans.extend(external());
    NftBackend::new(config(), transport(&old))
        .sync_full(&plans, &node())
        .unwrap();
    // While kproxy was down, two Services went (their elements and an lb chain are left over)
    // and one endpoint moved.
    let gone: Vec<_> = plans.keys().take(2).cloned().collect();
    for name in &gone {
        plans.remove(name);
    }
    let web = name("web", "http", Protocol::Tcp);
    if let Some(port) = plans.get(&web).map(|p| p.port.clone()) {
        let eps = vec![
            ep("10.0.1.1", 8080, "node-a"),
            ep("10.0.9.9", 8080, "node-b"),
        ];
        add(&mut plans, port, eps);
    }
    let mut restarted = NftBackend::new(config(), transport(&old));
    let report = restarted.sync_full(&plans, &node()).unwrap();
    assert!(report.operations > 0);
    NftBackend::new(config(), transport(&fresh))
        .sync_full(&plans, &node())
        .unwrap();
    // The same elements, chains and rules (the order nft prints them in follows their history).
    let (a, b) = (listing(&old), listing(&fresh));
    assert_eq!(parse_listing(&a), parse_listing(&b), "gone: {gone:?}");
    assert_eq!(rules(&a), rules(&b));
    assert!(
        !a.contains("10.96.0.53"),
        "the dns Service's elements are gone: {a}"
    );
}

/// Each chain's rules, from `nft list table` text.
fn rules(text: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out = std::collections::BTreeMap::new();
    let mut chain: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line
            .strip_prefix("chain ")
            .and_then(|l| l.strip_suffix(" {"))
        {
            chain = Some(name.to_string());
        } else if line == "}" {
            chain = None;
        } else if let Some(c) = &chain {
            out.entry(c.clone())
                .or_insert_with(Vec::new)
                .push(line.to_string());
        }
    }
    out
}
