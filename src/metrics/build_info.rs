//! `kubernetes_build_info`: the constant 1 that component-base exports, labelled with what the
//! binary was built from, here kproxy's version and build (`build.rs` sets the variables).
//!
//! Invariants: the labels are component-base's nine. `major`, `minor` and `git_version` are
//! kproxy's (Cargo.toml's version), not a Kubernetes release; `git_commit` is "unknown" and
//! `git_tree_state` empty when the build did not know them (upstream's own default for an
//! unset tree state); `go_version` holds the Rust compiler's version and `compiler` "rustc";
//! `platform` is `os/arch` with Go's architecture names (linux/amd64, linux/arm64), so
//! dashboards that filter on it keep working.

use prometheus::{Gauge, Opts};

/// Component-base's help text.
const HELP: &str = "A metric with a constant '1' value labeled by major, minor, git version, git commit, git tree state, build date, Go version, and compiler from which Kubernetes was built, and platform on which it is running.";

/// The label values, in component-base's order.
pub fn labels() -> [(&'static str, String); 9] {
    let version = env!("CARGO_PKG_VERSION");
    [
        ("major", env!("CARGO_PKG_VERSION_MAJOR").to_string()),
        ("minor", env!("CARGO_PKG_VERSION_MINOR").to_string()),
        ("git_version", format!("v{version}")),
        (
            "git_commit",
            option_env!("KPROXY_GIT_COMMIT")
                .filter(|c| !c.is_empty())
                .unwrap_or("unknown")
                .to_string(),
        ),
        (
            "git_tree_state",
            option_env!("KPROXY_GIT_TREE_STATE")
                .unwrap_or("")
                .to_string(),
        ),
        ("build_date", build_date(option_env!("KPROXY_BUILD_EPOCH"))),
        (
            "go_version",
            option_env!("KPROXY_RUSTC_VERSION")
                .unwrap_or("")
                .to_string(),
        ),
        ("compiler", "rustc".to_string()),
        (
            "platform",
            format!(
                "{}/{}",
                std::env::consts::OS,
                go_arch(std::env::consts::ARCH)
            ),
        ),
    ]
}

/// What `kproxy --version` prints after the name: the version, then the commit (with
/// `, dirty` when the compiled files had uncommitted changes), the build date and the compiler,
/// each as the metric's labels have it.
pub fn version() -> String {
    let labels = labels();
    let label = |name: &str| {
        labels
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    };
    version_text(
        env!("CARGO_PKG_VERSION"),
        label("git_commit"),
        label("git_tree_state"),
        label("build_date"),
        label("go_version"),
    )
}

fn version_text(version: &str, commit: &str, tree: &str, date: &str, rustc: &str) -> String {
    let dirty = if tree == "dirty" { ", dirty" } else { "" };
    let rustc = if rustc.is_empty() {
        "rustc unknown"
    } else {
        rustc
    };
    format!("{version} (commit {commit}{dirty}, built {date}, {rustc})")
}

/// The gauge, set to 1.
pub fn build_info() -> Gauge {
    let mut opts = Opts::new("kubernetes_build_info", HELP);
    for (name, value) in labels() {
        opts = opts.const_label(name, value);
    }
    let g = Gauge::with_opts(opts).expect("valid gauge");
    g.set(1.0);
    g
}

/// Unix seconds as upstream formats its build date (`2006-01-02T15:04:05Z`); upstream's
/// default, the epoch, when unknown.
fn build_date(epoch: Option<&str>) -> String {
    let seconds = epoch
        .and_then(|e| e.trim().parse::<i64>().ok())
        .unwrap_or(0);
    jiff::Timestamp::from_second(seconds)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Go's name of a Rust target architecture (`GOARCH`).
fn go_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_date_is_formatted_as_upstream_and_defaults_to_the_epoch() {
        assert_eq!(build_date(Some("1700000000")), "2023-11-14T22:13:20Z");
        assert_eq!(build_date(None), "1970-01-01T00:00:00Z");
        assert_eq!(build_date(Some("not a number")), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn the_version_line_names_the_commit_its_state_the_build_date_and_the_compiler() {
        assert_eq!(
            version_text(
                "0.1.0",
                "2ccccdb",
                "clean",
                "2026-12-07T15:00:00Z",
                "rustc 1.95.0 (abc 2026-01-01)"
            ),
            "0.1.0 (commit 2ccccdb, built 2026-12-07T15:00:00Z, rustc 1.95.0 (abc 2026-01-01))"
        );
        assert_eq!(
            version_text("0.1.0", "unknown", "dirty", "1970-01-01T00:00:00Z", ""),
            "0.1.0 (commit unknown, dirty, built 1970-01-01T00:00:00Z, rustc unknown)"
        );
        let built = version();
        assert!(
            built.starts_with(concat!(env!("CARGO_PKG_VERSION"), " (commit ")),
            "{built}"
        );
    }

    #[test]
    fn architectures_get_go_names() {
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("aarch64"), "arm64");
        assert_eq!(go_arch("riscv64"), "riscv64");
    }
}
