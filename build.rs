//! Build-time facts for `kubernetes_build_info` (src/metrics/build_info.rs), handed to the
//! crate as environment variables read with `option_env!`: the git commit and tree state, the
//! build date and the Rust compiler's version (also `/statusz`'s).
//!
//! Invariants: a value given from outside wins (`KPROXY_GIT_COMMIT`, `KPROXY_GIT_TREE_STATE`,
//! `SOURCE_DATE_EPOCH`: a container build has no `.git`); otherwise git is asked, and nothing
//! is set when it cannot answer (the metric then says "unknown"). The script runs again when
//! HEAD moves or a compiled file changes, and the tree state describes the compiled files only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// What the binary is built from: a change here reruns the script, and only a change here
/// makes the tree "dirty".
const COMPILED: [&str; 4] = ["build.rs", "src", "Cargo.toml", "Cargo.lock"];

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    for var in [
        "KPROXY_GIT_COMMIT",
        "KPROXY_GIT_TREE_STATE",
        "SOURCE_DATE_EPOCH",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    for path in COMPILED {
        println!("cargo:rerun-if-changed={path}");
    }
    for path in git_files(&root) {
        println!("cargo:rerun-if-changed={}", path.display());
    }

    let commit = given("KPROXY_GIT_COMMIT").or_else(|| git(&root, &["rev-parse", "HEAD"]));
    if let Some(commit) = commit {
        println!("cargo:rustc-env=KPROXY_GIT_COMMIT={commit}");
    }
    let state = given("KPROXY_GIT_TREE_STATE").or_else(|| {
        let mut args = vec![
            "--no-optional-locks",
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
        ];
        args.extend(COMPILED);
        let changes = git(&root, &args)?;
        Some(if changes.is_empty() { "clean" } else { "dirty" }.to_string())
    });
    if let Some(state) = state {
        println!("cargo:rustc-env=KPROXY_GIT_TREE_STATE={state}");
    }
    let epoch = given("SOURCE_DATE_EPOCH").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            .to_string()
    });
    println!("cargo:rustc-env=KPROXY_BUILD_EPOCH={epoch}");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    // Always set: `/statusz` reads it with env!.
    let version = run(Command::new(rustc).arg("--version")).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=KPROXY_RUSTC_VERSION={version}");
}

/// A non-empty environment variable.
fn given(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

/// What git prints (trimmed) when it succeeds in `root`.
fn git(root: &Path, args: &[&str]) -> Option<String> {
    run(Command::new("git").current_dir(root).args(args))
}

fn run(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then_some(())?;
    Some(String::from_utf8(out.stdout).ok()?.trim().to_string())
}

/// The files that change when HEAD moves: HEAD, the branch it points to, packed-refs; only
/// those that exist (cargo reruns a script on every build for a path that does not).
fn git_files(root: &Path) -> Vec<PathBuf> {
    let mut names = vec!["HEAD".to_string(), "packed-refs".to_string()];
    names.extend(git(root, &["symbolic-ref", "-q", "HEAD"]));
    names
        .iter()
        .filter_map(|n| git(root, &["rev-parse", "--git-path", n]))
        .map(|p| root.join(p))
        .filter(|p| p.exists())
        .collect()
}
