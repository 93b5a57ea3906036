//! How transactions reach the kernel: a narrow `Transport` trait, `NftCli` (runs `nft -f -` with
//! the script on stdin and nft's stderr captured into the error), (the nftables backend's `fake_transport.rs` records instead, for tests and benches).
//! libnftables in-process (`NftLib`, the default) is in `libnft.rs`.
//!
//! Invariants: a transport applies a script atomically or not at all (nft's `-f` is one
//! transaction); `list_table` is for adoption at start-up only, never for incremental syncs; only
//! kproxy's tables are ever listed. Every error carries nft's own message.

use std::collections::BTreeMap;
use std::process::{Command, Output};

use super::elements::ElementBatch;
use super::family_name;
use super::listing::{Element, Shape};
use crate::backends::process::{RunError, run_piped};
use crate::model::IpFamily;

/// Why talking to nft failed, named after the failing step.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("starting {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("writing the script to nft's stdin: {0}")]
    WriteScript(std::io::Error),
    #[error("waiting for nft: {0}")]
    Wait(std::io::Error),
    #[error("nft -f refused the transaction ({status}): {stderr}")]
    ApplyRefused { status: String, stderr: String },
    #[error("nft list table {family} {table} failed ({status}): {stderr}")]
    ListFailed {
        family: &'static str,
        table: String,
        status: String,
        stderr: String,
    },
    #[error("probing kproxy's rules over netlink: {0}")]
    Probe(#[from] super::netlink::ProbeError),
    #[error(transparent)]
    Monitor(#[from] super::monitor::MonitorError),
    #[error("entering network namespace {0}: {1}")]
    Netns(String, std::io::Error),
    #[error("libnftables cannot be used: {0}")]
    LibraryUnavailable(String),
    #[error(transparent)]
    Elements(#[from] super::elements::ElementsError),
    #[error("this transport sends no element batches")]
    NoElementBatches,
    #[error("injected failure: {0}")]
    Injected(String),
}

/// The narrow interface the backend applies through: the `nft` command, libnftables, or the
/// recording fake.
pub trait Transport: Send {
    /// Applies `script` (nft -f syntax) as one atomic transaction.
    fn apply(&mut self, script: &str) -> Result<(), NftError>;
    /// Whether `apply_elements` sends element batches over netlink (else callers send the
    /// elements' text through `apply`).
    fn sends_element_batches(&self) -> bool {
        false
    }
    /// Applies element additions and deletions as one atomic transaction.
    fn apply_elements(&mut self, _batch: ElementBatch) -> Result<(), NftError> {
        Err(NftError::NoElementBatches)
    }
    /// The text of `table` in `family`, or `None` when it does not exist. For adoption at
    /// start-up only.
    fn list_table(&mut self, family: IpFamily, table: &str) -> Result<Option<String>, NftError>;
    /// `table` in `family` read over netlink, for adoption at start-up: its chains and sets,
    /// and through `each` every element of every set the packet path does not write, as
    /// stored. `None` when this transport does not read over netlink (list the text instead).
    fn read_table(
        &mut self,
        _family: IpFamily,
        _table: &str,
        _each: &mut (dyn FnMut(&str, Element<'_>) + Send),
    ) -> Option<Result<Shape, NftError>> {
        None
    }
    /// Every element of one set read over netlink, as stored (for a repair of what someone
    /// else changed in it); `Some(Ok(false))` when the set does not exist, `None` when this
    /// transport does not read over netlink (list the set's text instead).
    fn read_set(
        &mut self,
        _family: IpFamily,
        _table: &str,
        _set: &str,
        _each: &mut (dyn FnMut(Element<'_>) + Send),
    ) -> Option<Result<bool, NftError>> {
        None
    }
    /// The text of one set (`nft list set`), `None` when it does not exist.
    fn list_set(
        &mut self,
        _family: IpFamily,
        _table: &str,
        _set: &str,
    ) -> Result<Option<String>, NftError> {
        Ok(None)
    }
    /// Rule count per chain of `table` in `family` (empty when the table is gone). Cheap (no
    /// elements are read): the drift check runs it several times a second.
    fn rule_counts(
        &mut self,
        family: IpFamily,
        table: &str,
    ) -> Result<BTreeMap<String, usize>, NftError>;
    /// What others changed in the watched tables since the last call (`watched.rs`); `None`
    /// when this transport watches nothing (then count rules).
    fn foreign_changes(
        &mut self,
    ) -> Option<Result<super::monitor::Foreign, super::monitor::MonitorError>> {
        None
    }
}

/// Runs the `nft` command, optionally inside a network namespace (`ip netns exec NAME nft …`,
/// for tests).
#[derive(Clone, Debug)]
pub struct NftCli {
    pub program: String,
    pub netns: Option<String>,
}

impl Default for NftCli {
    fn default() -> Self {
        NftCli {
            program: "nft".into(),
            netns: None,
        }
    }
}

impl NftCli {
    /// `nft` inside the named network namespace.
    pub fn in_netns(name: &str) -> NftCli {
        NftCli {
            netns: Some(name.into()),
            ..NftCli::default()
        }
    }

    fn command(&self) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, &self.program]);
                c
            }
            None => Command::new(&self.program),
        }
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<Output, NftError> {
        let mut cmd = self.command();
        cmd.args(args);
        run_piped(cmd, stdin).map_err(|e| match e {
            RunError::Spawn(source) => NftError::Spawn {
                program: self.program.clone(),
                source,
            },
            RunError::WriteInput(e) => NftError::WriteScript(e),
            RunError::Wait(e) => NftError::Wait(e),
        })
    }
}

impl NftCli {
    /// A table's sets and maps (declarations, no elements) and chains (heads, no rules), as
    /// `nft -t list sets`, `list maps` and `list chains` print them; `None` when the table does
    /// not exist. Unlike `list table` (even terse) these leave set elements out of nft's cache:
    /// 0.01 s instead of 1.6 s at 10,000 Services.
    pub fn list_skeleton(&self, family: IpFamily, table: &str) -> Result<Option<String>, NftError> {
        let fam = family_name(family);
        // nft lists maps and chains of a whole family only; the other tables' blocks go.
        let script = format!("list sets table {fam} {table}; list maps {fam}; list chains {fam}");
        let Some(listed) = self.listed(&["-t", &script], fam, table.to_string())? else {
            return Ok(None);
        };
        let header = format!("table {fam} {table} {{");
        let mut kept = String::new();
        let mut inside = false;
        for line in listed.lines() {
            inside |= line == header;
            if inside {
                kept.push_str(line);
                kept.push('\n');
            }
            inside &= line != "}";
        }
        Ok(Some(kept))
    }

    /// `nft list <what…>` in `family` (`what`: `table NAME`, `set TABLE NAME`); `None` when it
    /// does not exist; `named` names it in an error.
    fn list(
        &self,
        family: IpFamily,
        what: &[&str],
        named: String,
    ) -> Result<Option<String>, NftError> {
        let fam = family_name(family);
        let (kind, rest) = what.split_first().expect("what to list");
        let mut args = vec!["list", kind, fam];
        args.extend_from_slice(rest);
        self.listed(&args, fam, named)
    }

    /// What `nft ARGS` printed; `None` when what it lists does not exist.
    fn listed(
        &self,
        args: &[&str],
        fam: &'static str,
        named: String,
    ) -> Result<Option<String>, NftError> {
        let out = self.run(args, None)?;
        if out.status.success() {
            return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
        }
        let stderr = stderr_of(&out);
        if stderr.contains("No such file or directory") {
            return Ok(None);
        }
        Err(NftError::ListFailed {
            family: fam,
            table: named,
            status: out.status.to_string(),
            stderr,
        })
    }
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

impl Transport for NftCli {
    fn apply(&mut self, script: &str) -> Result<(), NftError> {
        let out = self.run(&["-f", "-"], Some(script))?;
        if out.status.success() {
            return Ok(());
        }
        Err(NftError::ApplyRefused {
            status: out.status.to_string(),
            stderr: stderr_of(&out),
        })
    }

    fn list_table(&mut self, family: IpFamily, table: &str) -> Result<Option<String>, NftError> {
        self.list(family, &["table", table], table.to_string())
    }

    fn list_set(
        &mut self,
        family: IpFamily,
        table: &str,
        set: &str,
    ) -> Result<Option<String>, NftError> {
        self.list(family, &["set", table, set], format!("{table} set {set}"))
    }

    fn rule_counts(
        &mut self,
        family: IpFamily,
        table: &str,
    ) -> Result<BTreeMap<String, usize>, NftError> {
        let Some(ns) = self.netns.clone() else {
            return Ok(super::netlink::rule_counts(family, table)?);
        };
        // The probe's socket must be made inside the namespace: on a thread that enters it.
        let table = table.to_string();
        crate::netns::run_in(&ns, move || super::netlink::rule_counts(family, &table))
            .map_err(|e| NftError::Netns(ns, e))?
            .map_err(NftError::from)
    }
}
