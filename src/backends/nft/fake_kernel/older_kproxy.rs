//! A table an older kproxy (commit f80e340: one `endpoints` map for every protocol, typed `udp
//! dport`) wrote for `tests::cluster_ips()`, as its --dry-run printed it, plus what a Service
//! deleted while kproxy was down leaves behind (`10.96.0.99` -> `lb-7`, whose slots are gone).
//!
//! Invariants: test data only; the text is nft's block syntax, loaded with `apply_script`.

pub(crate) const OLDER_KPROXY: &str = r#"table ip kproxy {}
delete table ip kproxy
table ip kproxy {
	map services {
		type ipv4_addr . inet_proto . inet_service : verdict;
		elements = { 10.96.0.10 . tcp . 80 : goto lb-3,
			     10.96.0.53 . udp . 53 : goto reject-chain,
			     10.96.0.99 . tcp . 80 : goto lb-7 }
	}
	map endpoints {
		typeof ip daddr . meta l4proto . udp dport . numgen random mod 1 : ip daddr . udp dport;
		elements = { 10.96.0.10 . tcp . 80 . 0 : 10.0.1.1 . 8080,
			     10.96.0.10 . tcp . 80 . 1 : 10.0.2.1 . 8080,
			     10.96.0.10 . tcp . 80 . 2 : 10.0.3.1 . 8080 }
	}
	map services-from-local {
		type ipv4_addr . inet_proto . inet_service : verdict;
	}
	map endpoints-from-local {
		typeof ip daddr . meta l4proto . udp dport . numgen random mod 1 : ip daddr . udp dport;
	}
	map nodeports {
		type inet_proto . inet_service : verdict;
	}
	map nodeport-endpoints {
		typeof meta l4proto . udp dport . numgen random mod 1 : ip daddr . udp dport;
	}
	map nodeports-from-local {
		type inet_proto . inet_service : verdict;
	}
	map nodeport-endpoints-from-local {
		typeof meta l4proto . udp dport . numgen random mod 1 : ip daddr . udp dport;
	}
	set nodeport-ips {
		type ipv4_addr;
		elements = { 192.168.0.2 }
	}
	set cluster-ports {
		type ipv4_addr . inet_proto . inet_service;
		elements = { 10.96.0.10 . tcp . 80,
			     10.96.0.53 . udp . 53 }
	}
	set cluster-cidrs {
		type ipv4_addr; flags interval;
		elements = { 10.0.0.0/16 }
	}
	set external-masq {
		type ipv4_addr . inet_proto . inet_service;
	}
	set external-local {
		type ipv4_addr . inet_proto . inet_service;
	}
	set nodeport-masq {
		type inet_proto . inet_service;
	}
	set nodeport-local {
		type inet_proto . inet_service;
	}
	set firewall-ports {
		type ipv4_addr . inet_proto . inet_service;
	}
	set firewall-allow {
		type ipv4_addr . inet_proto . inet_service . ipv4_addr; flags interval;
	}
	map affinity {
		type ipv4_addr . ipv4_addr : ipv4_addr; flags dynamic,timeout; timeout 3h;
	}
	map affinity-ports {
		type ipv4_addr . inet_proto . inet_service : inet_service;
	}
	map affinity-timeouts {
		type ipv4_addr . inet_proto . inet_service : verdict;
	}
	set affinity-live {
		type ipv4_addr . ipv4_addr;
	}
	set hairpin {
		type ipv4_addr . ipv4_addr;
		elements = { 10.0.1.1 . 10.0.1.1,
			     10.0.2.1 . 10.0.2.1,
			     10.0.3.1 . 10.0.3.1 }
	}
	chain reject-chain {
		reject
	}
	chain mark-for-masquerade {
		meta mark set meta mark | 0x00004000
	}
	chain services {
		ip daddr . meta l4proto . th dport @cluster-ports ip saddr != @cluster-cidrs jump mark-for-masquerade
		ip daddr . meta l4proto . th dport @firewall-ports ip daddr . meta l4proto . th dport . ip saddr != @firewall-allow drop
		ip daddr . meta l4proto . th dport @external-masq jump mark-for-masquerade
		ip daddr . meta l4proto . th dport @external-local ip saddr @cluster-cidrs ip daddr . meta l4proto . th dport vmap @services-from-local
		ip daddr . meta l4proto . th dport @external-local fib saddr type local meta mark set meta mark | 0x00004000 ip daddr . meta l4proto . th dport vmap @services-from-local
		ip daddr . meta l4proto . th dport vmap @services
		ip daddr @nodeport-ips jump nodeports
	}
	chain nodeports {
		meta l4proto . th dport @nodeport-masq jump mark-for-masquerade
		meta l4proto . th dport @nodeport-local ip saddr @cluster-cidrs meta l4proto . th dport vmap @nodeports-from-local
		meta l4proto . th dport @nodeport-local fib saddr type local meta mark set meta mark | 0x00004000 meta l4proto . th dport vmap @nodeports-from-local
		meta l4proto . th dport vmap @nodeports
	}
	chain affinity-remember {
		meta l4proto { tcp, udp, sctp } ct original ip daddr . meta l4proto . ct original proto-dst vmap @affinity-timeouts
	}
	chain masquerading {
		ct status dnat ip saddr . ip daddr @hairpin masquerade fully-random
		meta mark & 0x00004000 == 0x00000000 return
		meta mark set meta mark ^ 0x00004000
		masquerade fully-random
	}
	chain lb-3 {
		meta l4proto { tcp, udp, sctp } dnat ip to ip saddr . ip daddr map @affinity : ip daddr . meta l4proto . th dport map @affinity-ports
		dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 3 map @endpoints
	}
	chain lb-7 {
		dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 7 map @endpoints
	}
	chain nat-prerouting {
		type nat hook prerouting priority -100; policy accept; # dstnat
		jump services
	}
	chain nat-output {
		type nat hook output priority -100; policy accept; # dstnat
		jump services
	}
	chain filter-prerouting-post-dnat {
		type filter hook prerouting priority -90; policy accept; # dstnat + 10
		ct state new ct status dnat jump affinity-remember
	}
	chain filter-output-post-dnat {
		type filter hook output priority -90; policy accept; # dstnat + 10
		ct state new ct status dnat jump affinity-remember
	}
	chain nat-postrouting {
		type nat hook postrouting priority 100; policy accept; # srcnat
		jump masquerading
	}
}
"#;
