//! The fake kernel's own `iptables-restore --noflush` semantics, each checked against what
//! iptables 1.8.9 does: atomic tables, refused lines, chain deletion rules, refused targets and
//! loops, chain declaration, normalized spellings, fall-through and goto, the masquerade bit.
//!
//! Invariants: fixtures are the parent module's (`golden`, `restored`, `packet`, ...).

use super::*;

#[test]
fn a_failed_line_changes_nothing_in_its_table_and_names_the_line() {
    let mut fake = golden(CLUSTER_IPS, IpFamily::V4);
    let before = fake.save();
    let input = "*nat\n:KPROXY-NEW - [0:0]\n-A KPROXY-NEW -j RETURN\n\
        -D KPROXY-PORTALS -d 10.9.9.9/32 -j KPROXY-NEW\nCOMMIT\n";
    let err = fake.restore(input).unwrap_err();
    assert!(err.starts_with("line 4 failed"), "{err}");
    assert!(
        err.contains("Bad rule (does a matching rule exist in that chain?)"),
        "{err}"
    );
    assert_eq!(fake.save(), before);
    // Tables committed before the failing one stay.
    let input = "*nat\n:KPROXY-NEW - [0:0]\nCOMMIT\n*filter\n-A KPROXY-NOPE -j DROP\nCOMMIT\n";
    let err = fake.restore(input).unwrap_err();
    assert!(
        err.starts_with("line 5 failed") && err.contains("No chain"),
        "{err}"
    );
    assert!(fake.rules(Table::Nat, "KPROXY-NEW").is_some());
    // A table without COMMIT is not applied.
    let err = fake.restore("*filter\n:KPROXY-X - [0:0]\n").unwrap_err();
    assert!(err.contains("COMMIT expected"), "{err}");
    assert!(fake.rules(Table::Filter, "KPROXY-X").is_none());
}

#[test]
fn a_chain_is_deleted_only_when_empty_unreferenced_and_not_built_in() {
    let mut fake = golden(CLUSTER_IPS, IpFamily::V4);
    let svc = "KPROXY-SVC-PK5WNJDG7QFFBAYH";
    let refused = [
        (format!("-X {svc}"), "Too many links"),
        ("-X PREROUTING".to_string(), "built-in"),
        ("-X KPROXY-NONE".to_string(), "No chain"),
    ];
    for (line, why) in refused {
        let err = fake
            .restore(&format!("*nat\n{line}\nCOMMIT\n"))
            .unwrap_err();
        assert!(err.contains(why), "{line}: {err}");
    }
    let portal = &fake.rules(Table::Nat, "KPROXY-PORTALS").unwrap()[0];
    let err = fake
        .restore(&format!(
            "*nat\n-D KPROXY-PORTALS {portal}\n-X {svc}\nCOMMIT\n"
        ))
        .unwrap_err();
    assert!(err.contains("Directory not empty"), "{err}");
    let ok = format!("*nat\n:{svc} - [0:0]\n-D KPROXY-PORTALS {portal}\n-X {svc}\nCOMMIT\n");
    fake.restore(&ok).unwrap();
    assert!(fake.rules(Table::Nat, svc).is_none());
    assert!(fake.rules(Table::Nat, "KPROXY-PORTALS").unwrap().is_empty());
}

#[test]
fn rules_into_or_jumping_to_missing_chains_and_unknown_extensions_are_refused() {
    let mut fake = Ruleset::new(IpFamily::V4);
    fake.restore("*nat\n:KPROXY-A - [0:0]\nCOMMIT\n*filter\n:KPROXY-F - [0:0]\nCOMMIT\n")
        .unwrap();
    let before = fake.save();
    let refused = [
        ("nat", "-A KPROXY-B -j RETURN", "No chain"),
        (
            "nat",
            "-A KPROXY-A -j KPROXY-B",
            "Couldn't load target `KPROXY-B'",
        ),
        ("nat", "-A KPROXY-A -j PREROUTING", "built-in"),
        (
            "nat",
            "-A KPROXY-A -m foo -j RETURN",
            "Couldn't load match `foo'",
        ),
        ("nat", "-A KPROXY-A -j LOG", "Couldn't load target `LOG'"),
        (
            "nat",
            "-A KPROXY-A -p tcp -m tcp --sport 1 -j RETURN",
            "unknown option",
        ),
        (
            "nat",
            "-A KPROXY-A -p udp -m tcp --dport 1 -j RETURN",
            "only valid with -p tcp",
        ),
        (
            "nat",
            "-A KPROXY-A -m addrtype --dst-type UNICAST -j RETURN",
            "LOCAL only",
        ),
        (
            "nat",
            "-A KPROXY-A -j DNAT --to-destination 10.0.0.1:80",
            "Need TCP",
        ),
        (
            "nat",
            "-A KPROXY-A -p tcp -j DNAT --to-destination [fd00::1]:80",
            "Bad IP",
        ),
        ("nat", "-A KPROXY-A -s fd00::/8 -j RETURN", "not found"),
        ("nat", "-A KPROXY-A -j DROP", "not intended for filtering"),
        (
            "filter",
            "-A KPROXY-F -p tcp -j DNAT --to-destination 10.0.0.1:80",
            "nat table",
        ),
        (
            "filter",
            "-A KPROXY-F -p udp -j REJECT --reject-with tcp-reset",
            "-p tcp",
        ),
        (
            "filter",
            "-A KPROXY-F -j REJECT --reject-with icmp6-adm-prohibited",
            "reject type",
        ),
        (
            "filter",
            "-A KPROXY-F -m recent --set --seconds 5 --name X -j DROP",
            "--seconds",
        ),
        (
            "filter",
            "-A KPROXY-F -m statistic --mode nth -j DROP",
            "random only",
        ),
        (
            "filter",
            "-A KPROXY-F -m comment --comment \"unterminated -j DROP",
            "unterminated",
        ),
        (
            "filter",
            "-A KPROXY-F ! -m comment --comment x -j DROP",
            "Bad argument",
        ),
        (
            "filter",
            "-A KPROXY-F -m mark ! --mark 1 ! -j DROP",
            "Bad argument",
        ),
        (
            "filter",
            "-A KPROXY-F -m bpf --bytecode \"2,6 0 0 1\" -j DROP",
            "count",
        ),
        (
            "filter",
            "-A KPROXY-F -m bpf --bytecode \"1,21 0 5 0\" -j DROP",
            "jumps out",
        ),
        (
            "filter",
            "-A KPROXY-F -m bpf --bytecode \"1,32 0 0 12\" -j DROP",
            "return",
        ),
        (
            "filter",
            "-A KPROXY-F -m bpf --bytecode \"2,132 0 0 0,6 0 0 1\" -j DROP",
            "unknown",
        ),
    ];
    for (table, line, why) in refused {
        let err = fake
            .restore(&format!("*{table}\n{line}\nCOMMIT\n"))
            .expect_err(line);
        assert!(
            err.starts_with("line 2 failed") && err.contains(why),
            "{line}: {err}"
        );
    }
    // A comment longer than 255 bytes is cut, in the rule and in `-D`'s comparison.
    let long = |cmd: &str| {
        let comment = "x".repeat(300);
        format!("*filter\n{cmd} KPROXY-F -m comment --comment \"{comment}\"\nCOMMIT\n")
    };
    fake.restore(&long("-A")).unwrap();
    let rules = fake.rules(Table::Filter, "KPROXY-F").unwrap();
    assert_eq!(
        rules,
        [format!("-m comment --comment \"{}\"", "x".repeat(255))]
    );
    fake.restore(&long("-D")).unwrap();
    let name = "K".repeat(29);
    let err = fake
        .restore(&format!("*nat\n:{name} - [0:0]\nCOMMIT\n"))
        .unwrap_err();
    assert!(err.contains("too long"), "{err}");
    fake.restore(&format!("*nat\n:{} - [0:0]\nCOMMIT\n", &name[1..]))
        .unwrap();
    assert_eq!(fake.save().lines().count(), before.lines().count() + 1);
}

#[test]
fn jumps_to_empty_or_returning_chains_fall_through_and_a_goto_returns_past_its_caller() {
    let mut fake = Ruleset::new(IpFamily::V4);
    let input = "*filter\n:KPROXY-EMPTY - [0:0]\n:KPROXY-RET - [0:0]\n:KPROXY-GO - [0:0]\n\
        :KPROXY-CALLER - [0:0]\n-A KPROXY-RET -j RETURN\n-A KPROXY-RET -j DROP\n\
        -A KPROXY-CALLER -g KPROXY-GO\n-A KPROXY-CALLER -j DROP\n\
        -A FORWARD -j KPROXY-EMPTY\n-A FORWARD -j KPROXY-RET\n-A FORWARD -j KPROXY-CALLER\n\
        -A FORWARD -p tcp -m tcp --dport 1:99 -j REJECT\nCOMMIT\n";
    fake.restore(input).unwrap();
    let p = packet("10.0.5.5", "10.0.6.6", Protocol::Tcp, 100);
    let out = assert_fates(&fake, &p, &[(to("10.0.6.6:100", "10.0.5.5"), 1.0)]);
    let via = &out.paths[0].via;
    assert!(via.contains(&"filter KPROXY-GO".to_string()), "{out}");
    let p = packet("10.0.5.5", "10.0.6.6", Protocol::Tcp, 99);
    let rejected = filter("icmp-port-unreachable", "FORWARD");
    assert_fates(&fake, &p, &[(rejected, 1.0)]);
    // A built-in chain's DROP policy applies to what falls off its end.
    fake.restore("*filter\n:FORWARD DROP [0:0]\nCOMMIT\n")
        .unwrap();
    let p = packet("10.0.5.5", "10.0.6.6", Protocol::Tcp, 100);
    assert_fates(&fake, &p, &[(filter("drop", "FORWARD"), 1.0)]);
}

#[test]
fn the_masquerade_bit_is_honoured_at_both_ends_of_its_range() {
    for bit in [0, 31] {
        let cfg = BackendConfig {
            masquerade_bit: Some(bit),
            ..iptables_config()
        };
        let fakes = fresh(&cluster_ips(), &cfg);
        let v4 = &fakes[&IpFamily::V4];
        let outside = packet("198.51.100.200", "10.96.0.10", Protocol::Tcp, 80);
        let masqueraded = v4.trace(&outside).probability(
            |f| matches!(f, Fate::Delivered { from, .. } if *from == ip("192.168.0.2")),
        );
        assert!(
            (masqueraded - 1.0).abs() < 1e-9,
            "bit {bit}:\n{}",
            v4.save()
        );
        let pod = packet("10.0.5.5", "10.96.0.10", Protocol::Tcp, 80);
        let kept = v4
            .trace(&pod)
            .probability(|f| matches!(f, Fate::Delivered { from, .. } if *from == ip("10.0.5.5")));
        assert!((kept - 1.0).abs() < 1e-9, "bit {bit}:\n{}", v4.save());
    }
}

#[test]
fn targets_reachable_from_hooks_they_do_not_serve_and_jump_loops_are_refused_at_commit() {
    let mut fake = Ruleset::new(IpFamily::V4);
    let refused = [
        (
            "-A POSTROUTING -j KPROXY-A\n-A KPROXY-A -p tcp -j DNAT --to-destination 10.0.0.1:80",
            "DNAT",
        ),
        (
            "-A PREROUTING -j KPROXY-A\n-A KPROXY-A -j MASQUERADE",
            "MASQUERADE",
        ),
        (
            "-A OUTPUT -j KPROXY-A\n-A KPROXY-A -j KPROXY-B\n-A KPROXY-B -g KPROXY-A",
            "loop",
        ),
    ];
    for (lines, why) in refused {
        let input = format!("*nat\n:KPROXY-A - [0:0]\n:KPROXY-B - [0:0]\n{lines}\nCOMMIT\n");
        let err = fake.restore(&input).unwrap_err();
        assert!(
            err.contains("failed (COMMIT)") && err.contains(why),
            "{err}"
        );
    }
    let unreachable = "*nat\n:KPROXY-C - [0:0]\n:KPROXY-D - [0:0]\n-A KPROXY-C -j KPROXY-D\n\
        -A KPROXY-D -j KPROXY-C\nCOMMIT\n";
    fake.restore(unreachable).unwrap();
    fake = Ruleset::new(IpFamily::V4);
    // The same rules where they belong are fine, and unreachable ones too.
    let input = "*nat\n:KPROXY-A - [0:0]\n:KPROXY-B - [0:0]\n-A OUTPUT -j KPROXY-A\n\
        -A KPROXY-A -p tcp -j DNAT --to-destination 10.0.0.1:80\n-A KPROXY-B -j MASQUERADE\n\
        -A POSTROUTING -j KPROXY-B\nCOMMIT\n";
    fake.restore(input).unwrap();
    assert_eq!(fake.save().matches("\n-A ").count(), 4);
}

#[test]
fn declaring_a_chain_creates_or_flushes_it_and_spellings_the_kernel_stores_alike_are_one_rule() {
    let mut fake = Ruleset::new(IpFamily::V4);
    let input = "*nat\n:KPROXY-X - [0:0]\n-A KPROXY-X -d 10.0.0.1 -p tcp --dport 80 -j MARK --or-mark 0x4000\n\
        -A KPROXY-X -j MARK --xor-mark 0x4000\n-I KPROXY-X 2 -m comment --comment 'two words' -j RETURN\nCOMMIT\n";
    fake.restore(input).unwrap();
    let rules = fake.rules(Table::Nat, "KPROXY-X").unwrap();
    assert_eq!(
        rules,
        [
            "-d 10.0.0.1/32 -p tcp -m tcp --dport 80 -j MARK --set-xmark 0x4000/0x4000",
            "-m comment --comment \"two words\" -j RETURN",
            "-j MARK --set-xmark 0x4000/0x0",
        ]
    );
    let delete = "*nat\n-D KPROXY-X -p tcp -d 10.0.0.1/32 -m tcp --dport 80 -j MARK --set-xmark 0x4000/0x4000\n\
        -D KPROXY-X 2\nCOMMIT\n";
    fake.restore(delete).unwrap();
    assert_eq!(fake.rules(Table::Nat, "KPROXY-X").unwrap().len(), 1);
    let err = fake
        .restore("*nat\n-I KPROXY-X 3 -j RETURN\nCOMMIT\n")
        .unwrap_err();
    assert!(err.contains("Index of insertion too big"), "{err}");
    fake.restore("*nat\n:KPROXY-X - [0:0]\nCOMMIT\n").unwrap();
    assert_eq!(
        fake.rules(Table::Nat, "KPROXY-X").unwrap().len(),
        0,
        "flushed"
    );
    // kproxy writes what iptables-save prints (v1.8.9, checked), except for the probability's
    // digits, MARK's `--set-xmark`, recent's `--mask` and the `-s` of the localnet rule, which
    // iptables-save puts before `-d`.
    let v4 = golden(EXTERNAL, IpFamily::V4);
    let text = v4.save();
    assert!(text.contains("--probability 0.50000000000 "), "{text}");
    assert!(
        text.contains("-A KPROXY-FILTER ! -s 127.0.0.0/8 -d 127.0.0.0/8 "),
        "{text}"
    );
    for line in golden_part(EXTERNAL, IpFamily::V4).lines() {
        let printed_otherwise = [
            "--probability",
            "-j MARK",
            "-m recent",
            "-d 127.0.0.0/8 ! -s",
        ];
        let rule = line.strip_prefix("-A ");
        if let Some(rule) = rule.filter(|l| !printed_otherwise.iter().any(|o| l.contains(o))) {
            assert!(text.contains(&format!("-A {rule}\n")), "{rule}");
        }
    }
}
