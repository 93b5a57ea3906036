//! How the fake kernel applies parsed commands to its tables, with the checks the kernel (and
//! nft) make: missing objects are ENOENT, a chain or set still referenced is EBUSY, an element
//! that exists with another value is EEXIST, a redeclaration with another type is EEXIST; and
//! the one rule nft 1.0.6 crashes on (`crashes_nft`) fails the script like a crash of nft would.
//!
//! Invariants: `apply` works on the caller's copy and stops at the first error, so the caller
//! keeps the old tables on failure (atomicity lives in `FakeKernel::apply_script`); commands
//! run in order, so an element may only jump to a chain created earlier in the script and a
//! chain may only be deleted after the last element and rule jumping to it.

use super::script::{Cmd, Located};
use super::types::{self, SetType};
use super::{ApplyError, Chain, Set, Table, Tables};
use crate::backends::nft::skeleton::TABLE;
use crate::backends::nft::transaction::SetKind;
use crate::model::IpFamily;

/// The normal form of a declaration or chain head: `;`-separated clauses, single spaces.
pub fn normalize(decl: &str) -> String {
    decl.split(';')
        .map(|c| c.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|c| !c.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn kind_name(kind: SetKind) -> &'static str {
    match kind {
        SetKind::Set => "set",
        SetKind::Map => "map",
    }
}

/// The set names (`@name`) and chain names (`jump`/`goto NAME`) a rule refers to.
pub fn references(rule: &str) -> (Vec<&str>, Vec<&str>) {
    let words: Vec<&str> = rule.split_whitespace().collect();
    let sets = words.iter().filter_map(|w| w.strip_prefix('@')).collect();
    let chains = words
        .windows(2)
        .filter(|w| w[0] == "jump" || w[0] == "goto")
        .map(|w| w[1])
        .collect();
    (sets, chains)
}

/// Whether anything in `table` but chain `name` itself jumps to chain `name`.
fn chain_users(table: &Table, name: &str) -> Option<String> {
    for (c, chain) in &table.chains {
        if c != name && chain.rules.iter().any(|r| references(r).1.contains(&name)) {
            return Some(format!("a rule of chain {c}"));
        }
    }
    for (s, set) in &table.sets {
        if !set.ty.is_verdict_map() {
            continue;
        }
        for (k, v) in &set.elements {
            if types::Verdict::parse(v).as_ref().and_then(|v| v.chain()) == Some(name) {
                return Some(format!("element {k} : {v} of map {s}"));
            }
        }
    }
    None
}

/// nft 1.0.6 aborts on `update @MAP { KEY : DATA }` when KEY is wider than 16 bytes (observed:
/// `update @m { ip6 saddr . ip6 daddr timeout 10s : ip6 daddr }` and with 4-byte data; the same
/// without data, or with a 16-byte key, works).
fn crashes_nft(t: &Table, rule: &str) -> Option<String> {
    let words: Vec<&str> = rule.split_whitespace().collect();
    for (i, w) in words.iter().enumerate() {
        let Some(name) = w
            .strip_prefix('@')
            .filter(|_| i > 0 && words[i - 1] == "update")
        else {
            continue;
        };
        let mut body = words[i + 1..].iter().take_while(|w| **w != "}");
        let has_data = body.any(|w| *w == ":");
        let set = t.sets.get(name)?;
        if has_data && set.ty.key_bytes() > 16 {
            return Some(format!(
                "update of {name} ({}-byte key) in rule {rule:?}",
                set.ty.key_bytes()
            ));
        }
    }
    None
}

/// Checks a rule's selectors against the table's family, as nft's evaluation does.
fn check_family(rule: &str, family: IpFamily) -> Result<(), String> {
    let (mine, other) = match family {
        IpFamily::V4 => ("ip", "ip6"),
        IpFamily::V6 => ("ip6", "ip"),
    };
    let words: Vec<&str> = rule.split_whitespace().collect();
    for w in words.windows(2) {
        let selector = matches!(w[1], "saddr" | "daddr" | "to");
        if selector && w[0] == other {
            return Err(format!(
                "conflicting protocols specified: {mine} vs. {other}"
            ));
        }
    }
    Ok(())
}

fn table_mut<'t>(tables: &'t mut Tables, c: &Located) -> Result<&'t mut Table, ApplyError> {
    tables
        .get_mut(c.family)
        .as_mut()
        .ok_or_else(|| ApplyError::NoSuch {
            line: c.line,
            what: format!("table {} {}", family_word(c.family), c.table),
        })
}

pub fn family_word(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

/// Applies `cmds` in order to `tables`; stops at the first refused command.
pub fn apply(tables: &mut Tables, cmds: &[Located]) -> Result<(), ApplyError> {
    for c in cmds {
        one(tables, c)?;
    }
    Ok(())
}

fn one(tables: &mut Tables, c: &Located) -> Result<(), ApplyError> {
    let line = c.line;
    let no_such = |what: String| ApplyError::NoSuch { line, what };
    if c.table != TABLE {
        return Err(ApplyError::ForeignTable {
            line,
            table: c.table.clone(),
        });
    }
    match &c.cmd {
        Cmd::AddTable => {
            tables.get_mut(c.family).get_or_insert_with(Table::default);
            return Ok(());
        }
        Cmd::DeleteTable => {
            let slot = tables.get_mut(c.family);
            if slot.take().is_none() {
                return Err(no_such(format!("table {} {TABLE}", family_word(c.family))));
            }
            return Ok(());
        }
        _ => {}
    }
    let family = c.family;
    let t = table_mut(tables, c)?;
    match &c.cmd {
        Cmd::AddTable | Cmd::DeleteTable => {}
        Cmd::FlushTable => t.chains.values_mut().for_each(|ch| ch.rules.clear()),
        Cmd::AddSet(kind, name, decl) => {
            let ty = SetType::parse(decl).map_err(|what| ApplyError::Invalid { line, what })?;
            if (*kind == SetKind::Map) != ty.value.is_some() {
                let what = format!("{} {name} declared with {decl:?}", kind_name(*kind));
                return Err(ApplyError::Invalid { line, what });
            }
            match t.sets.get(name) {
                Some(old) if old.ty != ty => {
                    let what = format!("{name} exists as {:?}, redeclared as {decl:?}", old.decl);
                    return Err(ApplyError::Exists { line, what });
                }
                Some(_) => {}
                None => {
                    let set = Set {
                        kind: *kind,
                        decl: normalize(decl),
                        ty,
                        elements: Default::default(),
                        comments: Default::default(),
                    };
                    t.sets.insert(name.clone(), set);
                }
            }
        }
        Cmd::FlushSet(kind, name) => match t.sets.get_mut(name) {
            Some(s) if s.kind == *kind => {
                s.elements.clear();
                s.comments.clear();
            }
            _ => return Err(no_such(format!("{} {name}", kind_name(*kind)))),
        },
        Cmd::DeleteSet(kind, name) => {
            if !t.sets.contains_key(name) {
                return Err(no_such(format!("{} {name}", kind_name(*kind))));
            }
            for (cn, chain) in &t.chains {
                if chain
                    .rules
                    .iter()
                    .any(|r| references(r).0.contains(&&**name))
                {
                    let what = format!("set {name} is used by a rule of chain {cn}");
                    return Err(ApplyError::Busy { line, what });
                }
            }
            t.sets.remove(name);
        }
        Cmd::AddChain(name, head) => {
            let head = head.as_deref().map(normalize);
            match (t.chains.get(name), head) {
                (Some(old), Some(h)) if old.head.as_ref() != Some(&h) => {
                    let what = format!("chain {name} exists with head {:?}, not {h:?}", old.head);
                    return Err(ApplyError::NotSupported { line, what });
                }
                (Some(_), _) => {}
                (None, head) => {
                    t.chains.insert(
                        name.clone(),
                        Chain {
                            head,
                            rules: vec![],
                        },
                    );
                }
            }
        }
        Cmd::FlushChain(name) => match t.chains.get_mut(name) {
            Some(ch) => ch.rules.clear(),
            None => return Err(no_such(format!("chain {name}"))),
        },
        Cmd::DeleteChain(name) => {
            if !t.chains.contains_key(name) {
                return Err(no_such(format!("chain {name}")));
            }
            if let Some(user) = chain_users(t, name) {
                let what = format!("chain {name} is still jumped to by {user}");
                return Err(ApplyError::Busy { line, what });
            }
            t.chains.remove(name);
        }
        Cmd::AddRule(chain, rule) => {
            check_family(rule, family).map_err(|what| ApplyError::Invalid { line, what })?;
            let (sets, chains) = references(rule);
            if let Some(s) = sets.iter().find(|s| !t.sets.contains_key(**s)) {
                return Err(no_such(format!("set {s} named by rule {rule:?}")));
            }
            if let Some(c) = chains.iter().find(|c| !t.chains.contains_key(**c)) {
                return Err(no_such(format!("chain {c} jumped to by rule {rule:?}")));
            }
            if let Some(what) = crashes_nft(t, rule) {
                return Err(ApplyError::Aborted { line, what });
            }
            match t.chains.get_mut(chain) {
                Some(ch) => ch.rules.push(rule.clone()),
                None => return Err(no_such(format!("chain {chain}"))),
            }
        }
        Cmd::AddElements(set, items) => {
            for (key, value, comment) in items {
                add_element(t, line, set, key, value.as_deref(), comment.as_deref())?;
            }
        }
        Cmd::DeleteElements(set, keys) => {
            let Some(s) = t.sets.get_mut(set) else {
                return Err(no_such(format!("set {set}")));
            };
            for key in keys {
                let atoms = types::atoms(&s.ty.key, key, s.ty.interval)
                    .map_err(|what| ApplyError::Invalid { line, what })?;
                let canonical = types::text(&atoms);
                if s.elements.remove(&canonical).is_none() {
                    return Err(no_such(format!("element {key} of {set}")));
                }
                s.comments.remove(&canonical);
            }
        }
    }
    Ok(())
}

fn add_element(
    t: &mut Table,
    line: usize,
    set: &str,
    key: &str,
    value: Option<&str>,
    comment: Option<&str>,
) -> Result<(), ApplyError> {
    let invalid = |what: String| ApplyError::Invalid { line, what };
    let Some(s) = t.sets.get(set) else {
        return Err(ApplyError::NoSuch {
            line,
            what: format!("set {set}"),
        });
    };
    let atoms = types::atoms(&s.ty.key, key, s.ty.interval).map_err(invalid)?;
    let value = match (&s.ty.value, value) {
        (Some(vt), Some(v)) => types::text(&types::atoms(vt, v, false).map_err(invalid)?),
        (None, None) => String::new(),
        (Some(_), None) => {
            return Err(invalid(format!(
                "Invalid argument: map {set} needs a value for {key}"
            )));
        }
        (None, Some(v)) => {
            return Err(invalid(format!(
                "set {set} takes no value, got {key} : {v}"
            )));
        }
    };
    if let Some(chain) = types::Verdict::parse(&value)
        .as_ref()
        .and_then(|v| v.chain())
        && s.ty.is_verdict_map()
        && !t.chains.contains_key(chain)
    {
        return Err(ApplyError::NoSuch {
            line,
            what: format!("chain {chain} named by element {key} of {set}"),
        });
    }
    let canonical = types::text(&atoms);
    if comment.is_some_and(|c| c.len() > 128) {
        return Err(invalid(format!(
            "comment too long, 128 characters maximum allowed: {key} of {set}"
        )));
    }
    match s.elements.get(&canonical) {
        // As the kernel: the same element again is fine, and keeps its old comment.
        Some(old) if *old == value => return Ok(()),
        Some(old) => {
            let what = format!("element {canonical} of {set} holds {old:?}, not {value:?}");
            return Err(ApplyError::Exists { line, what });
        }
        None => {}
    }
    if s.ty.interval {
        for other in s.elements.keys() {
            let Ok(o) = types::atoms(&s.ty.key, other, true) else {
                continue;
            };
            if types::clashes(&atoms, &o) {
                let what = format!("{canonical} overlaps {other} in {set}");
                return Err(if atoms.len() == 1 {
                    ApplyError::ConflictingIntervals { line, what }
                } else {
                    ApplyError::Exists { line, what }
                });
            }
        }
    }
    if let Some(s) = t.sets.get_mut(set) {
        if let Some(c) = comment {
            s.comments.insert(canonical.clone(), c.to_string());
        }
        s.elements.insert(canonical, value);
    }
    Ok(())
}
