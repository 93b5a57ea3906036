//! `kproxy explain --live` in nftables mode: kproxy's table as this node's kernel holds it,
//! read in the parts one packet needs. Declarations and chain heads come from `nft -t list
//! sets / maps / chains` (nft leaves set elements out of its cache for those), the rules over
//! netlink written back as kproxy's text (`nftables::rules`, `rule_text`), interval sets whole
//! (`nft list set`, small), and the elements of the other sets on demand: the packet is traced,
//! every key the tracer looked up and has not fetched yet is fetched, and it is traced again
//! until it asks for nothing new.
//!
//! Invariants: only reads; the tracer never sees the plans; a key is fetched at most once; the
//! loop ends because every round fetches at least one key it had not, out of the finitely many
//! one packet's path can ask for.

use std::collections::{BTreeMap, BTreeSet};

use crate::backends::nft::encode;
use crate::backends::nft::reconcile::parse_listing;
use crate::backends::nft::rule_text;
use crate::backends::nft::ruleset::{self as nft, Tables, trace::Program};
use crate::backends::nft::skeleton::TABLE;
use crate::backends::nft::transaction::split_comment;
use crate::model::IpFamily;
use crate::nftables::getelem::{ElementReader, GetError};
use crate::nftables::listing::{self, Element};
use crate::nftables::netlink::ProbeError;
use crate::nftables::rules;
use crate::nftables::transport::{NftCli, NftError, Transport};

/// Why kproxy's table could not be read; run as root in the node's network namespace.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// nft could not list the table's sets and chains.
    #[error("listing kproxy's nftables table: {0}")]
    Nft(#[from] NftError),
    /// kproxy's rules could not be read over netlink.
    #[error("reading kproxy's nftables rules over netlink: {0}")]
    Rules(ProbeError),
    /// An element of kproxy's sets could not be read.
    #[error("reading an element of kproxy's nftables sets: {0}")]
    Element(#[from] GetError),
    /// The listing is not what kproxy reads: a newer or foreign ruleset.
    #[error("reading kproxy's nftables table as listed: {0}")]
    Listing(String),
}

/// A set's element by key (kproxy's key text): its value text (a set's element: empty), or
/// `None` when the kernel has no such element.
pub trait Elements {
    fn get(&mut self, set: &str, key: &str) -> Result<Option<String>, ReadError>;
}

/// kproxy's table of `family` without the elements of its sets without intervals; `None`
/// when the kernel has no such table.
pub fn skeleton(cli: &mut NftCli, family: IpFamily) -> Result<Option<Tables>, ReadError> {
    let Some(text) = cli.list_skeleton(family, TABLE)? else {
        return Ok(None);
    };
    let mut tables = Tables::default();
    let text = nft::normalize_listing(&text, family);
    nft::apply_script(&mut tables, &text).map_err(|e| ReadError::Listing(e.to_string()))?;
    let Some(table) = tables.get_mut(family).as_mut() else {
        return Ok(None);
    };
    let read = rules::rules(family, TABLE).map_err(ReadError::Rules)?;
    let failed = std::cell::RefCell::new(None);
    let anon = |set: &str| {
        let mut keys = Vec::new();
        if let Err(e) = listing::elements(family, TABLE, set, |e| keys.push(e.key.to_vec())) {
            failed.borrow_mut().get_or_insert(e);
        }
        keys
    };
    for rule in read {
        let text = rule_text::text(&rule.exprs, family, &anon);
        table.chains.entry(rule.chain).or_default().rules.push(text);
    }
    if let Some(e) = failed.into_inner() {
        return Err(ReadError::Rules(e));
    }
    let intervals: Vec<String> = table
        .sets
        .iter()
        .filter(|(_, s)| s.ty.interval)
        .map(|(n, _)| n.clone())
        .collect();
    for name in intervals {
        let text = cli.list_set(family, TABLE, &name)?.unwrap_or_default();
        let listed = parse_listing(&text);
        if let (Some(set), Some((_, elements))) =
            (table.sets.get_mut(&name), listed.sets.get(&name))
        {
            set.elements
                .extend(elements.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    Ok(Some(tables))
}

/// The packet through `tables`, fetching from `elements` every key the tracer asks for.
pub fn trace(
    tables: &mut Tables,
    family: IpFamily,
    packet: &nft::Packet,
    elements: &mut dyn Elements,
) -> Result<nft::Trace, ReadError> {
    let mut fetched: BTreeSet<(String, String)> = BTreeSet::new();
    loop {
        let Some(table) = tables.get(family) else {
            return Ok(nft::trace::trace(None, family, packet));
        };
        let (traced, asked) = Program::new(table).trace_asking(family, packet);
        let new: Vec<(String, String)> = asked
            .into_iter()
            .filter(|k| fetched.insert(k.clone()))
            .collect();
        if new.is_empty() {
            return Ok(traced);
        }
        let table = tables.get_mut(family).as_mut().expect("traced above");
        for (set, key) in new {
            if let Some(value) = elements.get(&set, &key)?
                && let Some(s) = table.sets.get_mut(&set)
            {
                s.elements.insert(key, value);
            }
        }
    }
}

/// The kernel's elements, one `GETSETELEM` per key (4 µs); a set whose keys `encode::key`
/// cannot write (a dynamic set) is dumped whole once instead.
pub struct Fetched {
    family: IpFamily,
    reader: ElementReader,
    dumped: Dumped,
}

impl Fetched {
    pub fn new(family: IpFamily) -> Fetched {
        Fetched {
            family,
            reader: ElementReader::default(),
            dumped: Dumped::new(family),
        }
    }
}

impl Elements for Fetched {
    fn get(&mut self, set: &str, key: &str) -> Result<Option<String>, ReadError> {
        let Some(bytes) = encode::key(set, self.family, key) else {
            return self.dumped.get(set, key);
        };
        let found = self.reader.get(self.family, TABLE, set, &bytes)?;
        Ok(found.and_then(|e| {
            let (_, value) = encode::decode(set, self.family, &e.as_element())?;
            Some(split_comment(&value).1.to_string())
        }))
    }
}

/// The kernel's elements, a set at a time: a set asked for is dumped once, decoded as adoption
/// decodes it.
pub struct Dumped {
    family: IpFamily,
    sets: BTreeMap<String, BTreeMap<String, String>>,
}

impl Dumped {
    pub fn new(family: IpFamily) -> Dumped {
        Dumped {
            family,
            sets: BTreeMap::new(),
        }
    }
}

impl Elements for Dumped {
    fn get(&mut self, set: &str, key: &str) -> Result<Option<String>, ReadError> {
        if !self.sets.contains_key(set) {
            let mut read = BTreeMap::new();
            let family = self.family;
            listing::elements(family, TABLE, set, |e: Element<'_>| {
                if let Some((k, v)) = encode::decode(set, family, &e) {
                    read.insert(k, split_comment(&v).1.to_string());
                }
            })
            .map_err(ReadError::Rules)?;
            self.sets.insert(set.to_string(), read);
        }
        Ok(self.sets[set].get(key).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::Backend;
    use crate::backends::nft::NftBackend;
    use crate::backends::nft::fake_kernel::FakeKernel;
    use crate::backends::nft::fake_kernel_tests::{node, packets};
    use crate::testing::{claimed, cluster_ips, config, external};

    /// A kernel that holds `full`'s elements and counts what it is asked.
    struct Kernel<'a> {
        full: &'a Tables,
        family: IpFamily,
        asked: usize,
    }

    impl Elements for Kernel<'_> {
        fn get(&mut self, set: &str, key: &str) -> Result<Option<String>, ReadError> {
            self.asked += 1;
            let table = self.full.get(self.family).expect("table");
            Ok(table.sets[set].elements.get(key).cloned())
        }
    }

    #[test]
    fn elements_fetched_on_demand_trace_every_probe_as_the_whole_table_does() {
        let mut all = cluster_ips();
        all.extend(external());
        let all = claimed(&all);
        let script = NftBackend::new(config(), FakeKernel::new()).render(&all, &node());
        let mut full = Tables::default();
        nft::apply_script(&mut full, &script).expect("compiled ruleset loads");
        let mut bare = full.clone();
        let mut stored = 0;
        for family in [IpFamily::V4, IpFamily::V6] {
            let t = bare.get_mut(family).as_mut().expect("table");
            for set in t.sets.values_mut().filter(|s| !s.ty.interval) {
                stored += set.elements.len();
                set.elements.clear();
            }
        }
        let (mut probes, mut most) = (0, 0);
        for p in packets(&all, &node()) {
            let family = IpFamily::of(&p.daddr);
            let whole = nft::trace::trace(full.get(family), family, &p);
            let mut kernel = Kernel {
                full: &full,
                family,
                asked: 0,
            };
            let mut tables = bare.clone();
            let lazy = trace(&mut tables, family, &p, &mut kernel).expect("no kernel errors");
            assert_eq!(lazy, whole, "{p:?}");
            most = most.max(kernel.asked);
            probes += 1;
        }
        assert!(probes > 100, "{probes} probes");
        assert!(
            most < stored / 2,
            "a probe asked {most} of {stored} elements"
        );
    }
}
