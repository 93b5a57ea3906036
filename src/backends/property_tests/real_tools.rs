//! The real tools on a fixed-seed sample of the property tests' cases: the nftables dry-run
//! ruleset and IPVS mode's companion tables through `nft -c -f -`, and each family's iptables
//! load through `iptables-restore --test` and `ip6tables-restore --test` of every variant
//! installed (nft, legacy), then committed (`--noflush`) into a fresh namespace of its own,
//! since iptables-nft's `--test` never asks the kernel (it accepts `-j NO-SUCH-CHAIN`).
//!
//! Invariants: nothing runs outside the namespaces this test creates, each deleted on drop,
//! also when the test fails (`Netns`), and the host's tables are never touched; without root
//! the test skips, and under CI=true a skip or a missing tool is a failure; a refusal is shrunk
//! like any other failure, so it names a small manifest and the tool's message.

use std::path::Path;
use std::process::Command;

use proptest::test_runner::TestCaseError;

use super::{Tally, backends::iptables_load, run};
use crate::backends::Backend;
use crate::backends::iptables::Variant;
use crate::backends::ipvs::IpvsBackend;
use crate::backends::ipvs::fake_kernel::FakeKernel;
use crate::backends::nft::transport_tests::Netns;
use crate::backends::process::run_piped;
use crate::model::IpFamily;

/// Cases checked by the real tools (each runs nft twice and iptables-restore up to eight times).
const SAMPLE: u32 = 40;
const SAMPLE_SEED: u64 = 0x5eed_0019;

fn installed(program: &str) -> bool {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|dir| Path::new(dir).join(program).exists())
}

/// Runs `args` in `ns` with `input` on stdin; a failure carries the tool's message and the input.
fn accepts(ns: &Netns, args: &[&str], input: &str) -> Result<(), TestCaseError> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name]).args(args);
    let tool = args.join(" ");
    let out = run_piped(cmd, Some(input))
        .map_err(|e| TestCaseError::fail(format!("cannot run {tool}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(TestCaseError::fail(format!(
        "{tool} refused: {stderr}\n{input}"
    )))
}

#[test]
fn a_fixed_sample_of_random_manifests_compiles_into_rulesets_nft_and_iptables_restore_accept() {
    let Some(ns) = Netns::new() else { return };
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let variants: Vec<Variant> = [Variant::Nft, Variant::Legacy]
        .into_iter()
        .filter(|v| installed(&v.restore(IpFamily::V4)) && installed(&v.restore(IpFamily::V6)))
        .collect();
    if !installed("nft") || variants.is_empty() {
        assert!(!ci, "CI=true but nft or iptables-restore is missing");
        eprintln!("skipped: needs nft and iptables-restore");
        return;
    }
    let tally = Tally::default();
    run(SAMPLE, SAMPLE_SEED, &tally, |p| {
        accepts(&ns, &["nft", "-c", "-f", "-"], &p.nft_text)?;
        let ipvs = IpvsBackend::new(&p.config, Box::new(FakeKernel::default()))
            .with_families(IpFamily::ALL.to_vec())
            .render(&p.plans, &p.node);
        let companion = &ipvs[..ipvs.find("# IPVS").expect("the IPVS part")];
        accepts(&ns, &["nft", "-c", "-f", "-"], companion)?;
        let fresh = Netns::new().ok_or_else(|| TestCaseError::fail("no namespace"))?;
        for family in IpFamily::ALL {
            let text = iptables_load(p, family);
            for v in &variants {
                let restore = v.restore(family);
                accepts(&ns, &[&restore, "-w", "5", "--test", "--noflush"], &text)?;
                accepts(&fresh, &[&restore, "-w", "5", "--noflush"], &text)?;
            }
        }
        Ok(())
    });
    tally.assert_some_planned();
}
