//! The tracer's `dnat` statements: a map lookup (with `numgen`, every slot and the first one
//! beyond them) or the affinity form, and the `mod N` an `lb-N` chain must draw.
//!
//! Invariants: as the tracer's (`trace.rs`): a slot missing, a slot left beyond `mod N` or a
//! chain drawing another `mod` than its name says is `Broken`, never an answer.

use super::*;

impl Run<'_> {
    /// `dnat FAMILY to KEY map @M` (KEY may end in `numgen random mod N`: every slot), or
    /// `dnat FAMILY to KEY map @ADDRS : KEY2 map @PORTS` (the affinity form).
    pub(super) fn dnat(&mut self, chain: &str, rule: &str, toks: &[&str]) -> Result<Flow, String> {
        let want = if self.family == IpFamily::V4 {
            "ip"
        } else {
            "ip6"
        };
        if toks.get(1).copied() != Some(want) || toks.get(2).copied() != Some("to") {
            return Err(format!("unsupported dnat in the {want} table: {rule:?}"));
        }
        let Some((key, n)) = self.expr(&toks[3..], rule)? else {
            return Ok(Flow::Next);
        };
        let map = match &toks[3 + n..] {
            ["map", m] => m.trim_start_matches('@'),
            ["map", m, ":", ..] => {
                let Some((port_key, n2)) = self.expr(&toks[3 + n + 3..], rule)? else {
                    return Ok(Flow::Next);
                };
                let ["map", ports] = &toks[3 + n + 3 + n2..] else {
                    return Err(format!("unsupported dnat in {rule:?}"));
                };
                let addrs = m.trim_start_matches('@');
                let (Some(addr), Some(port)) = (
                    self.lookup(addrs, &key)?,
                    self.lookup(ports.trim_start_matches('@'), &port_key)?,
                ) else {
                    return Ok(Flow::Next);
                };
                let ep = self.endpoint(addrs, &format!("{addr} . {port}"))?;
                return Ok(Flow::Done(Outcome::Dnat(vec![ep])));
            }
            _ => return Err(format!("unsupported dnat in {rule:?}")),
        };
        let Some(Val::Numgen(modulus)) = key.last().cloned() else {
            return Ok(match self.lookup(map, &key)? {
                Some(v) => Flow::Done(Outcome::Dnat(vec![self.endpoint(map, &v)?])),
                None => Flow::Next,
            });
        };
        self.check_modulus(chain, modulus)?;
        let head = format!("{} . ", self.text(&key[..key.len() - 1])?);
        // Every slot, and the first beyond them (where a shrunk ruleset leaves one behind).
        let asked = (0..=modulus).map(|slot| (map.to_string(), format!("{head}{slot}")));
        self.asked.borrow_mut().extend(asked);
        let mut eps = Vec::new();
        for slot in 0..modulus {
            let k = format!("{head}{slot}");
            let Some(v) = self.set(map)?.elements.get(&k) else {
                return Err(format!(
                    "{chain} draws slot {slot} of {modulus}, but {map} has no element {k}: \
                     packets drawing it are not DNATed"
                ));
            };
            eps.push(self.endpoint(map, v)?);
        }
        let s = self.set(map)?;
        for (k, _) in s
            .elements
            .range(head.clone()..)
            .take_while(|(k, _)| k.starts_with(&head))
        {
            if k[head.len()..]
                .parse::<u32>()
                .is_ok_and(|slot| slot >= modulus)
            {
                return Err(format!(
                    "{map} holds {k}, a slot beyond the mod {modulus} that {chain} draws"
                ));
            }
        }
        Ok(Flow::Done(Outcome::Dnat(eps)))
    }

    /// An `<prefix>-N` load-balancing chain must draw `mod N`.
    pub(super) fn check_modulus(&self, chain: &str, modulus: u32) -> Result<(), String> {
        if modulus == 0 {
            return Err(format!("{chain} draws numgen mod 0"));
        }
        let n = chain.rsplit_once('-').and_then(|(prefix, n)| {
            LB_FAMILIES
                .iter()
                .any(|(p, _)| *p == prefix)
                .then(|| n.parse::<u32>().ok())
                .flatten()
        });
        match n {
            Some(n) if n != modulus => Err(format!(
                "chain {chain} draws numgen mod {modulus}: its name promises mod {n}"
            )),
            _ => Ok(()),
        }
    }
}
