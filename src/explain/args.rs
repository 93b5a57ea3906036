//! The command line of `kproxy explain`: its own flags (`--packet`, `--output`, `--live`) taken
//! out, the rest left for the daemon's parser, so every source and mode flag (`--manifests`,
//! `--kubeconfig`, `--proxy-mode`, `--config`, `--hostname-override`, …) means what it means
//! for the daemon.
//!
//! Invariants: `split` answers `None` unless the first argument is `explain`; the returned
//! arguments keep the program name first and every other argument in order.

use std::ffi::OsString;

use super::Packet;

pub const HELP: &str = "\
Usage: kproxy explain --packet \"PROTO SRC -> DST:PORT\" [--output text|json] [--live] [FLAGS]

What kproxy does with the first packet of a connection, and why: the Service and port it
belongs to, the verdict (dnat, reject, drop, not-a-service), the endpoints it can reach with
their chances, masquerading, session affinity and the reason. The answer comes from the plans
kproxy makes of the same sources the daemon reads, and is checked against the rules kproxy
compiles from them by the mode's packet tracer.

Options:
  --packet \"PROTO SRC -> DST:PORT\"  the packet: tcp, udp or sctp; IPv6 as [addr]:port,
                                    e.g. \"tcp 10.0.0.5 -> 10.96.0.10:80\"
  --output text|json                text (default) or one JSON object
  --live                            also trace the packet through the rules in this node's
                                    kernel (as root, in the node's network namespace); exits 1
                                    when the kernel differs from the plan
  FLAGS                             the daemon's flags: --manifests DIR or the API flags,
                                    --proxy-mode, --hostname-override, --config, … (kproxy --help)
";

/// What `kproxy explain` is asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExplainArgs {
    pub packet: Packet,
    pub json: bool,
    pub live: bool,
}

/// What the command line asks of `explain`.
#[derive(Debug, PartialEq, Eq)]
pub enum Asked {
    Help,
    Explain(ExplainArgs, Vec<OsString>),
}

/// `explain`'s own flags and the daemon's, when the first argument is `explain`; `Err` is a
/// one-line reason naming the flag.
pub fn split(args: &[OsString]) -> Option<Result<Asked, String>> {
    if args.get(1).is_none_or(|a| a != "explain") {
        return None;
    }
    Some(split_explain(args))
}

fn split_explain(args: &[OsString]) -> Result<Asked, String> {
    let mut rest = vec![args[0].clone()];
    let (mut packet, mut json, mut live) = (None, false, false);
    let mut it = args[2..].iter();
    while let Some(arg) = it.next() {
        let text = arg.to_string_lossy();
        let (flag, inline) = match text.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (text.to_string(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .map(|v| v.to_string_lossy().into_owned())
                    .ok_or_else(|| format!("{name} needs a value")),
            }
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Asked::Help),
            "--packet" => {
                let v = value("--packet")?;
                packet = Some(v.parse::<Packet>().map_err(|e| format!("--packet: {e}"))?);
            }
            "--output" | "-o" => match value("--output")?.as_str() {
                "json" => json = true,
                "text" => json = false,
                other => return Err(format!("--output: {other:?} (want text or json)")),
            },
            "--live" => live = true,
            _ => rest.push(arg.clone()),
        }
    }
    let packet = packet.ok_or("explain needs --packet \"PROTO SRC -> DST:PORT\"")?;
    Ok(Asked::Explain(ExplainArgs { packet, json, live }, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn explain_takes_its_flags_and_leaves_the_daemons_in_order() {
        let args = os(&[
            "kproxy",
            "explain",
            "--manifests",
            "/m",
            "--packet",
            "tcp 10.0.0.5 -> 10.96.0.10:80",
            "--output=json",
            "--proxy-mode=iptables",
            "--live",
        ]);
        let Some(Ok(Asked::Explain(e, rest))) = split(&args) else {
            panic!("not an explain command")
        };
        assert!(e.json && e.live);
        assert_eq!(e.packet.to_string(), "tcp 10.0.0.5 -> 10.96.0.10:80");
        assert_eq!(
            rest,
            os(&["kproxy", "--manifests", "/m", "--proxy-mode=iptables"])
        );
    }

    #[test]
    fn only_a_first_argument_explain_is_the_subcommand() {
        assert_eq!(split(&os(&["kproxy", "--manifests", "explain"])), None);
        assert_eq!(split(&os(&["kproxy"])), None);
        assert_eq!(
            split(&os(&["kproxy", "explain", "--help"])),
            Some(Ok(Asked::Help))
        );
    }

    #[test]
    fn a_missing_or_bad_explain_flag_is_one_line_naming_it() {
        for (args, want) in [
            (&["kproxy", "explain"][..], "explain needs --packet"),
            (&["kproxy", "explain", "--packet"], "--packet needs a value"),
            (
                &["kproxy", "explain", "--packet", "tcp x"],
                "--packet: no \"->\"",
            ),
            (
                &[
                    "kproxy",
                    "explain",
                    "--packet",
                    "tcp 1.1.1.1 -> 2.2.2.2:1",
                    "--output",
                    "yaml",
                ],
                "--output: \"yaml\"",
            ),
        ] {
            let err = split(&os(args)).unwrap().unwrap_err();
            assert!(
                err.starts_with(want) && !err.contains('\n'),
                "{args:?}: {err}"
            );
        }
    }
}
