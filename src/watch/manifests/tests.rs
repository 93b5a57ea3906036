//! Tests of the manifests source: a `Scanner` driven scan by scan over a temporary directory
//! (here), and `run` observed through its channel (`run`).

use std::fs;
use std::path::Path;

use tempfile::TempDir;

use super::*;
use crate::model::validate::RejectReason;
use crate::model::{NamespacedName, Service};

fn service(name: &str, selector: bool, port: u16) -> String {
    let selector = if selector {
        "  selector: {app: x}\n"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n{selector}  clusterIP: 10.96.0.10\n  ports: [{{name: p, port: {port}}}]\n"
    )
}

fn endpoints(name: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Endpoints\nmetadata: {{name: {name}, labels: {{{labels}}}}}\n\
         subsets: [{{addresses: [{{ip: 192.0.2.1}}], ports: [{{name: p, port: 5432}}]}}]\n"
    )
}

fn nn(name: &str) -> NamespacedName {
    NamespacedName::new("default", name)
}

fn write(dir: &Path, name: &str, content: &str) {
    fs::write(dir.join(name), content).unwrap();
}

fn scanner(dir: &Path) -> Scanner {
    Scanner::new(dir.to_path_buf(), "node1".into(), Arc::new(Metrics::new()))
}

fn rejections(m: &Metrics, reason: RejectReason) -> u64 {
    m.rejected_objects
        .with_label_values(&[reason.as_str()])
        .get()
}

/// The Services a batch of changes sets (`Some`) or deletes (`None`), by name.
fn services(changes: &[Change]) -> Vec<(String, Option<Service>)> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Service(n, s) => Some((n.name.clone(), s.as_deref().cloned())),
            _ => None,
        })
        .collect()
}

fn slice_names(changes: &[Change]) -> Vec<(String, bool)> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Slice(n, s) => Some((n.name.clone(), s.is_some())),
            _ => None,
        })
        .collect()
}

fn port_of(s: &Option<Service>) -> Option<u16> {
    s.as_ref().map(|s| s.ports[0].port)
}

#[test]
fn each_kind_of_bad_document_is_counted_and_the_good_ones_in_its_file_still_served() {
    let tmp = TempDir::new().unwrap();
    let docs = [
        service("good-a", true, 80),
        "apiVersion: v1\nkind: Service\nmetadata: {name: [unclosed\n".into(),
        service("wrong-type", true, 80).replace("port: 80", "port: eighty"),
        service("bad-ip", true, 80).replace("10.96.0.10", "10.96.0.300"),
        service("bad-port", true, 80).replace("port: 80", "port: 65536"),
        service("bad-proto", true, 80).replace("port: 80", "port: 80, protocol: ICMP"),
        service("nameless", true, 80).replace("name: nameless, ", ""),
        service("good-b", true, 81),
    ];
    write(tmp.path(), "mixed.yaml", &docs.join("---\n"));
    let mut s = scanner(tmp.path());
    let changes = s.scan().unwrap();
    let served: Vec<String> = services(&changes).into_iter().map(|(n, _)| n).collect();
    assert_eq!(served, ["good-a", "good-b"]);
    for reason in [
        RejectReason::Parse,
        RejectReason::WrongType,
        RejectReason::BadIp,
        RejectReason::BadPort,
        RejectReason::BadProtocol,
        RejectReason::MissingName,
    ] {
        assert_eq!(rejections(&s.metrics, reason), 1, "{reason:?}");
    }
    assert_eq!(rejections(&s.metrics, RejectReason::Invalid), 0);
    // An unchanged file is not parsed (nor counted) again.
    assert_eq!(s.scan().unwrap(), vec![]);
    assert_eq!(rejections(&s.metrics, RejectReason::Parse), 1);
}

#[test]
fn a_broken_file_takes_effect_once_fixed() {
    let tmp = TempDir::new().unwrap();
    write(
        tmp.path(),
        "web.yaml",
        &service("web", true, 80).replace("port: 80", "port: 0"),
    );
    let mut s = scanner(tmp.path());
    assert_eq!(s.scan().unwrap(), vec![]);
    write(tmp.path(), "web.yaml", &service("web", true, 80));
    assert_eq!(port_of(&services(&s.scan().unwrap())[0].1), Some(80));
}

#[test]
fn endpoints_are_mirrored_only_for_a_selectorless_service_that_allows_it() {
    let tmp = TempDir::new().unwrap();
    write(
        tmp.path(),
        "db.yaml",
        &[service("db", false, 5432), endpoints("db", "")].join("---\n"),
    );
    write(
        tmp.path(),
        "app.yaml",
        &[service("app", true, 80), endpoints("app", "")].join("---\n"),
    );
    let skip = endpoints("opt", "endpointslice.kubernetes.io/skip-mirror: 'true'");
    write(
        tmp.path(),
        "opt.yaml",
        &[service("opt", false, 80), skip].join("---\n"),
    );
    write(tmp.path(), "orphan.yaml", &endpoints("orphan", ""));
    let mut s = scanner(tmp.path());
    let changes = s.scan().unwrap();
    assert_eq!(slice_names(&changes), [("db-mirror-0".to_string(), true)]);
    let Some(Change::Slice(_, Some(slice))) =
        changes.iter().find(|c| matches!(c, Change::Slice(..)))
    else {
        unreachable!()
    };
    assert_eq!(slice.service, nn("db"));
    assert_eq!(slice.endpoints[0].ip.to_string(), "192.0.2.1");

    // The Service gaining a selector ends the mirroring.
    write(
        tmp.path(),
        "db.yaml",
        &[service("db", true, 5432), endpoints("db", "")].join("---\n"),
    );
    assert_eq!(
        slice_names(&s.scan().unwrap()),
        [("db-mirror-0".to_string(), false)]
    );
}

#[test]
fn the_lexically_later_file_wins_and_the_earlier_one_returns_when_it_goes() {
    let tmp = TempDir::new().unwrap();
    write(tmp.path(), "a.yaml", &service("web", true, 80));
    write(tmp.path(), "b.yaml", &service("web", true, 8080));
    let mut s = scanner(tmp.path());
    let first = services(&s.scan().unwrap());
    assert_eq!(first.len(), 1);
    assert_eq!(port_of(&first[0].1), Some(8080));
    fs::remove_file(tmp.path().join("b.yaml")).unwrap();
    assert_eq!(port_of(&services(&s.scan().unwrap())[0].1), Some(80));
    fs::remove_file(tmp.path().join("a.yaml")).unwrap();
    assert_eq!(s.scan().unwrap(), vec![Change::Service(nn("web"), None)]);
}

#[test]
fn hidden_backup_foreign_and_nested_files_are_not_read() {
    let tmp = TempDir::new().unwrap();
    for name in [
        ".web.yaml",
        "web.yaml~",
        ".web.yaml.swp",
        "web.txt",
        "web.yaml.bak",
    ] {
        write(tmp.path(), name, &service("web", true, 80));
    }
    fs::create_dir(tmp.path().join("sub.yaml")).unwrap();
    write(
        &tmp.path().join("sub.yaml"),
        "web.yaml",
        &service("web", true, 80),
    );
    assert_eq!(scanner(tmp.path()).scan().unwrap(), vec![]);
}

#[test]
fn an_unreadable_directory_withdraws_nothing() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("manifests");
    fs::create_dir(&dir).unwrap();
    write(&dir, "web.yaml", &service("web", true, 80));
    let mut s = scanner(&dir);
    assert_eq!(services(&s.scan().unwrap()).len(), 1);
    fs::rename(&dir, tmp.path().join("elsewhere")).unwrap();
    assert_eq!(s.scan(), None);
    fs::rename(tmp.path().join("elsewhere"), &dir).unwrap();
    assert_eq!(s.scan(), Some(vec![]));
}

#[test]
fn a_change_to_one_file_among_many_sends_only_its_objects() {
    let tmp = TempDir::new().unwrap();
    for f in 0..100 {
        let docs: Vec<String> = (0..20)
            .map(|i| service(&format!("s{f}-{i}"), true, 80))
            .collect();
        write(tmp.path(), &format!("f{f:03}.yaml"), &docs.join("---\n"));
    }
    let mut s = scanner(tmp.path());
    assert_eq!(services(&s.scan().unwrap()).len(), 2000);
    let docs: Vec<String> = (0..20)
        .map(|i| service(&format!("s7-{i}"), true, 80 + i))
        .collect();
    write(tmp.path(), "f007.yaml", &docs.join("---\n"));
    let changed: Vec<String> = services(&s.scan().unwrap())
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(changed.len(), 19, "{changed:?}"); // s7-0 keeps port 80
    assert!(changed.iter().all(|n| n.starts_with("s7-")));
}

/// The `Arc`s a batch of changes sets, Services and slices alike, by name.
fn sent_arcs(changes: Vec<Change>) -> Vec<(String, Arc<dyn std::any::Any + Send + Sync>)> {
    changes
        .into_iter()
        .filter_map(|c| match c {
            Change::Service(n, Some(s)) => {
                Some((n.name.clone(), s as Arc<dyn std::any::Any + Send + Sync>))
            }
            Change::Slice(n, Some(s)) => {
                Some((n.name.clone(), s as Arc<dyn std::any::Any + Send + Sync>))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn the_source_keeps_one_allocation_per_object_the_one_it_sent_even_after_an_equal_reparse() {
    let tmp = TempDir::new().unwrap();
    let db = [service("db", false, 5432), endpoints("db", "")].join("---\n");
    write(tmp.path(), "db.yaml", &db);
    let mut s = scanner(tmp.path());
    let sent = sent_arcs(s.scan().unwrap());
    let names: Vec<&str> = sent.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["db", "db-mirror-0"]);
    // Held by this test, by what the source sent and by the winning definition: nothing else.
    for (name, arc) in &sent {
        assert_eq!(Arc::strong_count(arc), 3, "{name}");
    }
    // Other bytes, same objects: parsed again, nothing sent, and the fresh copies dropped.
    write(tmp.path(), "db.yaml", &format!("# edited\n{db}"));
    assert_eq!(s.scan().unwrap(), vec![]);
    for (name, arc) in &sent {
        assert_eq!(Arc::strong_count(arc), 3, "{name}");
    }
    fs::remove_file(tmp.path().join("db.yaml")).unwrap();
    assert_eq!(s.scan().unwrap().len(), 2);
    for (name, arc) in &sent {
        assert_eq!(Arc::strong_count(arc), 1, "{name}");
    }
}

#[test]
fn this_nodes_node_is_sent_and_withdrawn() {
    let tmp = TempDir::new().unwrap();
    write(
        tmp.path(),
        "node.yaml",
        "apiVersion: v1\nkind: Node\nmetadata: {name: node1}\n",
    );
    let mut s = scanner(tmp.path());
    let changes = s.scan().unwrap();
    assert!(
        matches!(&changes[..], [Change::Node(Some(n))] if n.name == "node1"),
        "{changes:?}"
    );
    fs::remove_file(tmp.path().join("node.yaml")).unwrap();
    assert_eq!(s.scan().unwrap(), vec![Change::Node(None)]);
}

#[test]
fn the_example_cluster_loads_without_rejections() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cluster");
    let mut s = scanner(&dir);
    let changes = s.scan().unwrap();
    for reason in RejectReason::ALL {
        assert_eq!(rejections(&s.metrics, reason), 0, "{reason:?}");
    }
    let served = services(&changes);
    assert_eq!(served.len(), 10, "{served:?}");
    assert!(served.iter().all(|(_, s)| s.is_some()));
    assert_eq!(slice_names(&changes).len(), 11);
    assert!(slice_names(&changes).contains(&("external-db-mirror-0".to_string(), true)));
    assert!(
        changes
            .iter()
            .any(|c| matches!(c, Change::Node(Some(n)) if n.name == "node1"))
    );
}

mod run;

#[test]
fn a_file_over_the_size_limit_is_refused_unread_and_served_again_once_it_fits() {
    let tmp = TempDir::new().unwrap();
    write(tmp.path(), "a.yaml", &service("small", true, 80));
    let big = format!("{}# {}\n", service("big", true, 81), "x".repeat(4096));
    write(tmp.path(), "b.yaml", &big);
    let mut s = scanner(tmp.path());
    s.max_file_size = 2048;
    let names: Vec<String> = services(&s.scan().unwrap())
        .into_iter()
        .map(|s| s.0)
        .collect();
    assert_eq!(names, ["small"]);
    assert_eq!(rejections(&s.metrics, RejectReason::TooLarge), 1);
    // Growing past the limit withdraws what the file held.
    write(tmp.path(), "a.yaml", &big.replace("big", "small"));
    let withdrawn = services(&s.scan().unwrap());
    assert_eq!(withdrawn, [("small".to_string(), None)]);
    assert_eq!(rejections(&s.metrics, RejectReason::TooLarge), 2);
    write(tmp.path(), "b.yaml", &service("big", true, 81));
    assert_eq!(port_of(&services(&s.scan().unwrap())[0].1), Some(81));
}

#[test]
fn a_deeply_nested_file_is_refused_before_parsing_and_the_others_are_served() {
    let tmp = TempDir::new().unwrap();
    // 140 KB of nested lists took the YAML parser 13 s.
    let nested: String = (0..200)
        .map(|i| format!("{}- x{i}\n", "  ".repeat(i)))
        .collect();
    let nested = nested.repeat(140_000 / nested.len() + 1);
    write(tmp.path(), "deep.yaml", &nested);
    write(
        tmp.path(),
        "deep.json",
        &format!("{}1{}", "[".repeat(70_000), "]".repeat(70_000)),
    );
    write(tmp.path(), "web.yaml", &service("web", true, 80));
    let mut s = scanner(tmp.path());
    let started = std::time::Instant::now();
    let names: Vec<String> = services(&s.scan().unwrap())
        .into_iter()
        .map(|s| s.0)
        .collect();
    eprintln!(
        "three files, two refused as too deep, read in {:?}",
        started.elapsed()
    );
    assert_eq!(names, ["web"]);
    assert_eq!(rejections(&s.metrics, RejectReason::TooDeep), 2);
}

/// Runs `f` with kproxy's log lines captured; returns them.
fn logged(f: impl FnOnce()) -> String {
    use std::sync::Mutex;
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = lines.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn names_that_are_not_files_get_one_warn_line_each_from_a_rescan_or_an_event() {
    let tmp = TempDir::new().unwrap();
    let d = tmp.path();
    let fifo = |name: &str| {
        let path = std::ffi::CString::new(d.join(name).to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) on a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    };
    write(d, "ok.yaml", &service("ok", true, 80));
    fs::create_dir(d.join("dir.yaml")).unwrap();
    fifo("fifo.yaml");
    std::os::unix::fs::symlink("loop.yaml", d.join("loop.yaml")).unwrap();
    let mut s = scanner(d);
    let mut log = logged(|| {
        let changes = s.apply(Work::Rescan).unwrap();
        assert_eq!(services(&changes).len(), 1, "ok.yaml is served");
        s.apply(Work::Rescan); // nothing changed: nothing logged again
        // One created later and seen through an event, and an event on one already logged.
        fifo("late.yaml");
        let names = ["late.yaml", "fifo.yaml"].map(String::from).into();
        s.apply(Work::Files {
            names,
            others: false,
        });
    });
    assert!(log.contains("late.yaml"), "the event logs it:\n{log}");
    log += &logged(|| {
        s.apply(Work::Rescan);
    });
    for (name, what) in [
        ("dir.yaml", "a directory"),
        ("fifo.yaml", "a FIFO"),
        ("loop.yaml", "a symlink loop"),
        ("late.yaml", "a FIFO"),
    ] {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(name)).collect();
        assert_eq!(lines.len(), 1, "{name} once:\n{log}");
        assert!(
            lines[0].contains("WARN") && lines[0].contains(what),
            "{name}: {}",
            lines[0]
        );
    }
}
