//! kproxy's table as adoption reads it: its chains, its named sets, and every element of the
//! sets kproxy writes as the texts compile writes (`set`, key, value), handed over one by one.
//! Over netlink when the transport can (each element decoded at once, nothing collected); a set
//! whose elements do not decode (the interval set `cluster-cidrs`, whose ranges are pairs of
//! elements) as `nft list set` text; everything as `nft list table` text through a transport
//! that cannot read (the command, the fakes).
//!
//! Invariants: never writes; `None` when the family has no kproxy table (a table without
//! chains or sets counts as none); the packet-written maps' elements are never read.

use std::collections::{BTreeMap, BTreeSet};

use super::diff::writes;
use super::encode;
use super::reconcile::{Listed, parse_listing};
use super::skeleton::TABLE;
use super::transaction::SetKind;
use crate::model::IpFamily;
use crate::nftables::listing::{Element, NFT_SET_MAP};
use crate::nftables::transport::{NftError, Transport};

/// A table's chains and named sets (with their kind).
pub type Shape = (BTreeSet<String>, BTreeMap<String, SetKind>);

/// Reads kproxy's table in `family`, handing every element of the sets kproxy writes to `each`.
pub fn read<T: Transport>(
    transport: &mut T,
    family: IpFamily,
    each: &mut (dyn FnMut(&str, String, String) + Send),
) -> Result<Option<Shape>, NftError> {
    let mut undecoded: BTreeSet<String> = BTreeSet::new();
    let mut decode = |set: &str, e: Element<'_>| {
        if !writes(set) || undecoded.contains(set) {
            return;
        }
        match encode::decode(set, family, &e) {
            Some((k, v)) => each(set, k, v),
            None => {
                undecoded.insert(set.to_string());
            }
        }
    };
    let Some(result) = transport.read_table(family, TABLE, &mut decode) else {
        let Some(text) = transport.list_table(family, TABLE)? else {
            return Ok(None);
        };
        let listed = parse_listing(&text);
        for (set, (_, elements)) in &listed.sets {
            for (k, v) in elements.iter().filter(|_| writes(set)) {
                each(set, k.clone(), v.clone());
            }
        }
        let sets = listed.sets.into_iter().map(|(n, (k, _))| (n, k)).collect();
        return Ok(Some((listed.chains, sets)));
    };
    let (chains, sets) = result?;
    if chains.is_empty() && sets.is_empty() {
        return Ok(None);
    }
    let mut shape: Shape = (chains.into_iter().collect(), BTreeMap::new());
    for set in sets {
        let kind = if set.flags & NFT_SET_MAP != 0 {
            SetKind::Map
        } else {
            SetKind::Set
        };
        if undecoded.contains(&set.name) {
            // The text is all of the set; an element handed over before one did not decode
            // comes again, which the callers take as the same element.
            let text = transport.list_set(family, TABLE, &set.name)?;
            let listed = text.as_deref().map(parse_listing).unwrap_or_default();
            let elements = listed.sets.get(&set.name).map(|(_, e)| e);
            for (k, v) in elements.into_iter().flatten() {
                each(&set.name, k.clone(), v.clone());
            }
        }
        shape.1.insert(set.name, kind);
    }
    Ok(Some(shape))
}

/// The whole table as texts (for tests and inspection; adoption itself never collects it).
pub fn listing<T: Transport>(
    transport: &mut T,
    family: IpFamily,
) -> Result<Option<Listed>, NftError> {
    let mut elements: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let shape = read(transport, family, &mut |set, k, v| {
        elements.entry(set.to_string()).or_default().insert(k, v);
    })?;
    Ok(shape.map(|(chains, sets)| Listed {
        chains,
        sets: sets
            .into_iter()
            .map(|(name, kind)| {
                let e = elements.remove(&name).unwrap_or_default();
                (name, (kind, e))
            })
            .collect(),
    }))
}
