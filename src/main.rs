//! The kproxy binary: parse flags, start a source, then set up the host, the HTTP endpoints
//! and the sync loop; or clean up, or print the ruleset once (--dry-run), or write the
//! configuration (--write-config-to), or answer `kproxy explain` (`kproxy::explain`).
//!
//! Exit codes of `kproxy explain`: 0 with an answer, 1 when `--live` finds the kernel differing
//! from the plan (or cannot read it), 2 on bad flags.
//!
//! Exit codes: 0 on success and on SIGTERM/SIGINT (rules left in place; SIGHUP is logged and
//! ignored), 2 on bad flags or configuration (one line on stderr), 1 on any other failure, such
//! as another kproxy in this network namespace (`kproxy::instance`).

use std::process::ExitCode;

/// kproxy's own allocations go to mimalloc, away from libnftables' heap (see `kproxy::alloc`).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOCATOR: kproxy::alloc::MiMalloc = kproxy::alloc::MiMalloc;
use std::sync::Arc;

use anyhow::Context;
use kproxy::backends::{self, BackendConfig, ProxyMode};
use kproxy::config::{self, Config, Feature, LogFormat, Parsed};
use kproxy::explain::{self, args as explain_args};
use kproxy::health::{self, ProxyHealth, service::ServiceHealthServers};
use kproxy::metrics::Metrics;
use kproxy::node::NodeFacts;
use kproxy::sync::{self, Shared, Syncer, Timing};
use kproxy::watch::{self, ChangeTx};

fn main() -> ExitCode {
    let started = std::time::SystemTime::now();
    kproxy::alloc::configure();
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let explain = match kproxy::explain::args::split(&args) {
        None => None,
        Some(Ok(explain_args::Asked::Help)) => {
            print!("{}", explain_args::HELP);
            return ExitCode::SUCCESS;
        }
        Some(Ok(explain_args::Asked::Explain(asked, rest))) => {
            args = rest;
            Some(asked)
        }
        Some(Err(e)) => {
            eprintln!("kproxy explain: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = match config::parse(args) {
        Ok(Parsed::Run(cfg)) => cfg,
        Ok(Parsed::Help(text)) | Ok(Parsed::Version(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("kproxy: {e}");
            return ExitCode::from(2);
        }
    };
    // explain prints its answer on stdout; its logs are warnings only, unless -v asks more.
    let verbosity = match &explain {
        Some(_) => cfg.verbosity.saturating_sub(2),
        None => cfg.verbosity,
    };
    init_tracing(cfg.log_format, verbosity, explain.is_some());
    for warning in &cfg.warnings {
        tracing::warn!("{warning}");
    }
    // As upstream: write the configuration and exit, before touching the kernel or the API.
    if let Some(path) = &cfg.write_config_to {
        return match config::write_config_file(&cfg, path) {
            Ok(()) => {
                tracing::info!(file = %path.display(), "Wrote configuration");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kproxy: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kproxy: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(asked) = explain {
        let result = runtime.block_on(run_explain(cfg, asked));
        runtime.shutdown_timeout(std::time::Duration::from_millis(100));
        return match result {
            Ok(code) => code,
            Err(e) => {
                eprintln!("kproxy explain: {}", kproxy::logs::chain(e.as_ref()));
                ExitCode::FAILURE
            }
        };
    }
    let result = runtime.block_on(run(cfg, started));
    // A sync still running on its blocking thread (SIGTERM during a long iptables-restore) is
    // not waited for: the kernel applies it atomically or not at all.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kproxy: {}", kproxy::logs::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// klog-style verbosity: 0-2 info (warn for `quiet`), 3-4 debug, 5+ trace; RUST_LOG overrides.
/// Colour only on a terminal without `NO_COLOR` (`kproxy::logs::colour`).
fn init_tracing(format: LogFormat, verbosity: u8, quiet: bool) {
    let level = match verbosity {
        0..=2 if quiet => "warn",
        0..=2 => "info",
        3..=4 => "debug",
        _ => "trace",
    };
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("kproxy={level},warn")));
    // kproxy tells watch failures itself, once a streak (`watch::kube::trouble`); kube's watcher
    // would add a warning, and its HTTP client an error, of their own for every retry. RUST_LOG
    // naming a kube crate wins.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("kube_")) {
        for directive in [
            "kube_runtime::watcher=error",
            "kube_client::client::builder=off",
        ] {
            filter = filter.add_directive(directive.parse().expect("directive"));
        }
    }
    use std::io::IsTerminal;
    let colour = kproxy::logs::colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(cfg: Config, started: std::time::SystemTime) -> anyhow::Result<()> {
    let mut backend_config = cfg.backend_config();
    if cfg.dry_run {
        // --dry-run touches nothing, not even the iptables tools that `auto` would run; the
        // printed input is the same for both variants.
        backend_config.iptables_variant =
            backends::iptables::VariantChoice::Fixed(backends::iptables::Variant::Nft);
    }
    if cfg.cleanup {
        return cleanup(&backend_config, cfg.dry_run);
    }
    if cfg.cleanup_kube_proxy {
        if cfg.dry_run {
            let plan = backends::leftovers::plan_kube_proxy()
                .context("reading upstream kube-proxy's leftovers")?;
            print!("{}", cleanup_listing("--cleanup-kube-proxy", &plan));
            return Ok(());
        }
        backends::leftovers::remove_kube_proxy()
            .context("removing upstream kube-proxy's leftovers")?;
        tracing::info!("upstream kube-proxy's rules removed");
        return Ok(());
    }
    if cfg.init_only {
        set_up_host(&cfg, &mut backend_config);
        backends::for_mode(cfg.mode, backend_config)
            .prepare_host()
            .context("--init-only")?;
        tracing::info!(mode = %cfg.mode.as_str(), "--init-only: the node is set up; exiting");
        return Ok(());
    }
    // The daemon: one per network namespace, and signals handled from here on.
    let _lock = if cfg.dry_run {
        None
    } else {
        Some(kproxy::instance::take()?)
    };
    let signals = Signals::install();
    let metrics = Arc::new(Metrics::for_mode(cfg.mode, &backends::host_families()));
    let shared = Arc::new(Shared {
        health: ProxyHealth::new(cfg.sync_period * 2),
        ..Shared::default()
    });
    // The source first: a bad kubeconfig fails here, before the host is touched (as upstream,
    // whose client comes before its conntrack setup).
    let mut rx = start_source(&cfg, metrics.clone()).await?;
    if !cfg.dry_run {
        set_up_host(&cfg, &mut backend_config);
        backends::remove_other_modes_leftovers(cfg.mode);
    }
    let mut syncer = syncer_for(&cfg, backend_config, metrics.clone(), shared.clone());

    if cfg.dry_run {
        if cfg.manifests.is_some() {
            syncer = syncer.with_addresses_from_node();
        }
        first_list(&mut syncer, &mut rx).await?;
        print!("{}", syncer.render().await);
        return Ok(());
    }

    health::serve(
        cfg.metrics_bind_address,
        cfg.healthz_bind_address,
        cfg.bind_address_hard_fail,
        shared,
        metrics,
        cfg.mode,
        health::zpages::Zpages {
            configz: config::configz_json(&cfg),
            flagz: cfg.flagz.clone(),
            started,
            serve_flagz: cfg.feature_gates.enabled(Feature::ComponentFlagz),
            serve_statusz: cfg.feature_gates.enabled(Feature::ComponentStatusz),
        },
    )
    .await?;
    tracing::info!(mode = %cfg.mode, node = %cfg.node_name, "kproxy started");
    let timing = Timing {
        min_sync_period: cfg.min_sync_period,
        sync_period: cfg.sync_period,
    };
    sync::run(syncer, rx, timing, signals.shutdown()).await;
    Ok(())
}

/// The OOM score and conntrack tuning (the daemon and --init-only; never a dry run).
fn set_up_host(cfg: &Config, backend_config: &mut BackendConfig) {
    kproxy::node::setup::oom_score_adj(cfg.oom_score_adj);
    backend_config.conntrack_tcp_be_liberal = kproxy::node::setup::conntrack(&cfg.conntrack);
}

/// The sync loop's `Syncer` for `cfg` (its source started apart, `start_source`).
fn syncer_for(
    cfg: &Config,
    backend_config: BackendConfig,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
) -> Syncer {
    let mut base_node = NodeFacts::new(&cfg.node_name);
    base_node.nodeport_addresses = cfg.nodeport_addresses.clone();
    base_node.detect_local = cfg.detect_local.clone();
    let backend = match cfg.dry_run {
        true => backends::for_dry_run(cfg.mode, backend_config),
        false => backends::for_mode(cfg.mode, backend_config),
    };
    let conntrack: Box<dyn kproxy::conntrack::Reconciler> = if cfg.dry_run {
        Box::new(kproxy::conntrack::Noop)
    } else {
        Box::new(kproxy::conntrack::CtReconciler::new(metrics.clone()))
    };
    let mut syncer = Syncer::new(
        backend,
        conntrack,
        base_node,
        metrics,
        shared,
        ServiceHealthServers::default(),
    );
    let relay_off = cfg
        .feature_gates
        .given()
        .get("KubeProxyNFTablesLocalhostNodePorts")
        == Some(&false);
    if cfg.mode == ProxyMode::Nftables && cfg.nodeport_addresses.localhost && !cfg.dry_run {
        if relay_off {
            tracing::info!("KubeProxyNFTablesLocalhostNodePorts=false: no localhost NodePorts");
        } else {
            syncer = syncer.with_localhost_relay();
        }
    }
    if !cfg.feature_gates.enabled(Feature::AllowServiceExternalIPs) {
        tracing::info!("AllowServiceExternalIPs is off: Services' externalIPs are not served");
        syncer = syncer.without_external_ips();
    }
    syncer
}

/// Reads the source until its first full list, as --dry-run does.
async fn first_list(
    syncer: &mut Syncer,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<watch::Change>,
) -> anyhow::Result<()> {
    while !syncer.ready() {
        let change = rx
            .recv()
            .await
            .context("the source stopped before its initial list")?;
        syncer.apply(change);
    }
    // What the source sent with its lists (the Node, the end of its list).
    while let Ok(change) = rx.try_recv() {
        syncer.apply(change);
    }
    Ok(())
}

/// `kproxy explain`: plans from the source, compiles, explains, traces; exit 1 when the
/// kernel (--live) differs from the plan.
async fn run_explain(
    mut cfg: Config,
    asked: explain_args::ExplainArgs,
) -> anyhow::Result<ExitCode> {
    cfg.dry_run = true;
    let mut backend_config = cfg.backend_config();
    backend_config.iptables_variant =
        backends::iptables::VariantChoice::Fixed(backends::iptables::Variant::Nft);
    let metrics = Arc::new(Metrics::for_mode(cfg.mode, &backends::host_families()));
    let shared = Arc::new(Shared::default());
    let mut rx = start_source(&cfg, metrics.clone()).await?;
    let mut syncer = syncer_for(&cfg, backend_config, metrics, shared.clone());
    first_list(&mut syncer, &mut rx).await?;
    let concerns = |p: &_| explain::concerns(p, &asked.packet);
    let rules = syncer.render_where(Some(&concerns)).await;
    let plans = shared.plans.read().expect("plans lock").clone();
    let node = shared.node.read().expect("node lock").clone();
    // The daemon's own configuration: --live reads the kernel with the iptables variant and
    // nftables transport the daemon uses (the syncer's renders either variant's text alike).
    let config = cfg.backend_config();
    let facts = explain::Facts {
        mode: cfg.mode,
        node: &node,
        config: &config,
    };
    let mut answer = explain::explain(&plans, &facts, &asked.packet);
    answer.rules = Some(explain::trace::compiled(
        &facts,
        &rules,
        &asked.packet,
        &answer,
    ));
    if asked.live {
        let live = explain::trace::live(&facts, &asked.packet, &answer).context("--live")?;
        answer.kernel = Some(live);
    }
    if asked.json {
        println!("{}", serde_json::to_string(&answer).expect("serialisable"));
    } else {
        print!("{}", explain::text::render(&answer));
    }
    let differs = answer
        .kernel
        .as_deref()
        .is_some_and(|k| k.starts_with("differs"));
    Ok(if differs {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// --cleanup: remove what kproxy created, in every mode; with --dry-run, print it instead and
/// remove nothing.
fn cleanup(config: &BackendConfig, dry_run: bool) -> anyhow::Result<()> {
    // iptables' cleanup covers both variants, so there is nothing to detect.
    let config = BackendConfig {
        iptables_variant: backends::iptables::VariantChoice::Fixed(
            backends::iptables::Variant::Nft,
        ),
        ..config.clone()
    };
    let mut plan = Vec::new();
    for mode in ProxyMode::ALL {
        if dry_run {
            let lines = backends::for_dry_run(mode, config.clone())
                .cleanup_plan()
                .with_context(|| format!("reading what the {mode} backend would clean up"))?;
            plan.extend(lines);
        } else {
            backends::for_mode(mode, config.clone())
                .cleanup()
                .with_context(|| format!("cleaning up the {mode} backend"))?;
        }
    }
    if dry_run {
        plan.extend(backends::leftovers::plan_ipsets());
        print!("{}", cleanup_listing("--cleanup", &plan));
        return Ok(());
    }
    backends::leftovers::remove_ipsets().context("removing kproxy's ipsets")?;
    tracing::info!("cleanup done");
    Ok(())
}

/// What `flag --dry-run` prints: a header, then one line per object it would remove.
fn cleanup_listing(flag: &str, plan: &[String]) -> String {
    let mut out = match plan.is_empty() {
        true => format!("# {flag} --dry-run: nothing to remove\n"),
        false => format!(
            "# {flag} --dry-run: would remove these {} objects (nothing was removed)\n",
            plan.len()
        ),
    };
    for line in plan {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Starts the source (`--manifests` or the API server); its changes arrive on the receiver.
async fn start_source(
    cfg: &Config,
    metrics: Arc<Metrics>,
) -> anyhow::Result<tokio::sync::mpsc::UnboundedReceiver<watch::Change>> {
    let (tx, rx): (ChangeTx, _) = tokio::sync::mpsc::unbounded_channel();
    let node = cfg.node_name.clone();
    if let Some(dir) = cfg.manifests.clone() {
        if cfg.dry_run {
            // A dry run prints what it can read now: a directory it cannot list would leave it
            // waiting forever for a first read.
            anyhow::ensure!(
                dir.is_dir(),
                "--manifests {}: not a directory",
                dir.display()
            );
            std::fs::read_dir(&dir)
                .with_context(|| format!("--manifests {}: cannot list it", dir.display()))?;
        } else if !dir.is_dir() {
            // The daemon waits for it (a volume mounted late): nothing is programmed and
            // /healthz turns 503 after its timeout, as for any update never applied; the
            // source logs once and serves as soon as the directory can be listed.
            tracing::warn!(dir = %dir.display(), "--manifests: not a directory (yet); waiting for it");
        }
        tokio::spawn(watch::manifests::run(
            dir,
            tx,
            metrics,
            node,
            cfg.manifests_max_file_size,
        ));
    } else {
        let client = watch::kube::client_with(
            cfg.kubeconfig.as_deref(),
            cfg.master.as_deref(),
            cfg.client.rate_limit(),
        )
        .await
        .context("connecting to the Kubernetes API")?;
        tokio::spawn(watch::kube::run(client, node, tx, metrics));
    }
    Ok(rx)
}

/// SIGTERM and SIGINT stop kproxy (rules left in place); SIGHUP is logged and ignored (kproxy
/// reloads nothing: restart it to apply a changed `--config`). Installed at start-up, so a signal
/// that comes early is handled too.
struct Signals {
    streams: Option<[tokio::signal::unix::Signal; 3]>,
}

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        let streams = (|| {
            Some([
                signal(SignalKind::terminate()).ok()?,
                signal(SignalKind::interrupt()).ok()?,
                signal(SignalKind::hangup()).ok()?,
            ])
        })();
        if streams.is_none() {
            tracing::error!("cannot install signal handlers; stop kproxy with SIGKILL");
        }
        Signals { streams }
    }

    /// Resolves on SIGTERM or SIGINT.
    async fn shutdown(self) {
        let Some([mut term, mut int, mut hup]) = self.streams else {
            return std::future::pending().await;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return tracing::info!("SIGTERM: stopping"),
                _ = int.recv() => return tracing::info!("SIGINT: stopping"),
                _ = hup.recv() => tracing::info!(
                    "SIGHUP: ignored (kproxy reloads nothing; restart it to apply a changed --config)"
                ),
            }
        }
    }
}
