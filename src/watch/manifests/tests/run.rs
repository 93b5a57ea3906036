//! Tests of `run`: changes made to a directory observed through the channel, with a deadline on
//! every change and the time each one took printed.

use std::time::Duration;

use tokio::sync::mpsc;

use super::*;
use crate::watch::ChangeRx;

/// Generous for a loaded 2-core machine; the source itself reacts within ~10 ms (inotify, a
/// 5 ms debounce and one read), or ~100 ms while it polls a missing directory.
const DEADLINE: Duration = Duration::from_secs(3);

/// Starts `run` on `dir` and checks the initial list: `initial` changes, then the three `Listed`.
async fn start(dir: &Path, initial: usize) -> ChangeRx {
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(run(
        dir.to_path_buf(),
        tx,
        Arc::new(Metrics::new()),
        "node1".into(),
        DEFAULT_MAX_FILE_SIZE,
    ));
    for _ in 0..initial {
        assert!(!matches!(next(&mut rx).await, Change::Listed(_)));
    }
    for kind in [Kind::Services, Kind::EndpointSlices, Kind::Nodes] {
        assert_eq!(next(&mut rx).await, Change::Listed(kind));
    }
    rx
}

async fn next(rx: &mut ChangeRx) -> Change {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("a change before the deadline")
        .expect("the source is running")
}

/// The next change to Service `name` with a value satisfying `want`. A plain write can be seen
/// half-done (truncated), so intermediate values of the same Service are let through.
async fn next_service(rx: &mut ChangeRx, name: &str, want: impl Fn(&Option<Service>) -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let change = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("the change before the deadline")
            .expect("the source is running");
        match change {
            Change::Service(n, s) if n == nn(name) && want(&s.as_deref().cloned()) => return,
            Change::Service(n, _) if n == nn(name) => {}
            other => panic!("unexpected change {other:?}"),
        }
    }
}

#[tokio::test]
async fn run_sends_every_object_then_listed_for_each_kind() {
    let tmp = TempDir::new().unwrap();
    write(tmp.path(), "a.yaml", &service("a", true, 80));
    write(tmp.path(), "b.yml", &service("b", true, 80));
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(run(
        tmp.path().to_path_buf(),
        tx,
        Arc::new(Metrics::new()),
        "node1".into(),
        DEFAULT_MAX_FILE_SIZE,
    ));
    let mut names = Vec::new();
    for _ in 0..2 {
        let Change::Service(n, Some(_)) = next(&mut rx).await else {
            panic!("a Service first")
        };
        names.push(n.name.clone());
    }
    assert_eq!(names, ["a", "b"]);
    for kind in [Kind::Services, Kind::EndpointSlices, Kind::Nodes] {
        assert_eq!(next(&mut rx).await, Change::Listed(kind));
    }
}

#[tokio::test]
async fn a_created_file_is_served() {
    let tmp = TempDir::new().unwrap();
    let mut rx = start(tmp.path(), 0).await;
    let t = std::time::Instant::now();
    write(tmp.path(), "web.yaml", &service("web", true, 80));
    next_service(&mut rx, "web", |s| port_of(s) == Some(80)).await;
    println!(
        "manifests: a created file was served after {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn a_file_modified_in_place_is_served_anew() {
    let tmp = TempDir::new().unwrap();
    write(tmp.path(), "web.yaml", &service("web", true, 80));
    let mut rx = start(tmp.path(), 1).await;
    let t = std::time::Instant::now();
    write(tmp.path(), "web.yaml", &service("web", true, 8080));
    next_service(&mut rx, "web", |s| port_of(s) == Some(8080)).await;
    println!(
        "manifests: a modified file was served after {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn a_file_replaced_by_rename_is_served_anew() {
    let tmp = TempDir::new().unwrap();
    write(tmp.path(), "web.yaml", &service("web", true, 80));
    let mut rx = start(tmp.path(), 1).await;
    // As editors and `kubectl`-style tools save: write a hidden temp file, rename it over.
    let t = std::time::Instant::now();
    write(tmp.path(), ".web.yaml.tmp", &service("web", true, 81));
    fs::rename(
        tmp.path().join(".web.yaml.tmp"),
        tmp.path().join("web.yaml"),
    )
    .unwrap();
    assert_eq!(
        next(&mut rx).await,
        Change::Service(
            nn("web"),
            services_of(&service("web", true, 81), "web.yaml").map(Arc::new)
        )
    );
    println!(
        "manifests: a renamed-over file was served after {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn a_deleted_file_withdraws_its_objects() {
    let tmp = TempDir::new().unwrap();
    write(tmp.path(), "web.yaml", &service("web", true, 80));
    let mut rx = start(tmp.path(), 1).await;
    let t = std::time::Instant::now();
    fs::remove_file(tmp.path().join("web.yaml")).unwrap();
    assert_eq!(next(&mut rx).await, Change::Service(nn("web"), None));
    println!(
        "manifests: a deleted file was withdrawn after {:?}",
        t.elapsed()
    );
}

/// Lays out `dir` as the kubelet does a ConfigMap volume: `web.yaml -> ..data/web.yaml`,
/// `..data -> ..<version>`; a later version swaps `..data` by renaming a new symlink over it.
fn configmap_version(dir: &Path, version: &str, content: &str) {
    let data = dir.join(version);
    fs::create_dir(&data).unwrap();
    write(&data, "web.yaml", content);
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(version, &tmp).unwrap();
    fs::rename(&tmp, dir.join("..data")).unwrap();
    if !dir.join("web.yaml").exists() {
        std::os::unix::fs::symlink("..data/web.yaml", dir.join("web.yaml")).unwrap();
    }
}

#[tokio::test]
async fn a_configmap_volume_update_is_served() {
    let tmp = TempDir::new().unwrap();
    configmap_version(tmp.path(), "..v1", &service("web", true, 80));
    let mut rx = start(tmp.path(), 1).await;
    let t = std::time::Instant::now();
    configmap_version(tmp.path(), "..v2", &service("web", true, 8080));
    fs::remove_dir_all(tmp.path().join("..v1")).unwrap();
    next_service(&mut rx, "web", |s| port_of(s) == Some(8080)).await;
    println!(
        "manifests: a ConfigMap volume update was served after {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn a_directory_removed_withdraws_nothing_and_its_replacement_is_served_and_watched() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("manifests");
    fs::create_dir(&dir).unwrap();
    write(&dir, "web.yaml", &service("web", true, 80));
    write(&dir, "db.yaml", &service("db", true, 5432));
    let mut rx = start(&dir, 2).await;
    fs::remove_dir_all(&dir).unwrap();
    fs::create_dir(&dir).unwrap();
    write(&dir, "web.yaml", &service("web", true, 8080));
    write(&dir, "db.yaml", &service("db", true, 5432));
    // Only the Service whose value changed: db was never withdrawn.
    next_service(&mut rx, "web", |s| port_of(s) == Some(8080)).await;
    let t = std::time::Instant::now();
    write(&dir, "web.yaml", &service("web", true, 9090));
    next_service(&mut rx, "web", |s| port_of(s) == Some(9090)).await;
    println!(
        "manifests: a file in a re-created directory was served after {:?}",
        t.elapsed()
    );
}

/// The Service `yaml` defines, as read from the file `origin`.
fn services_of(yaml: &str, origin: &str) -> Option<Service> {
    match parse::parse_file(origin, yaml.as_bytes(), "node1")
        .objects
        .pop()
    {
        Some((_, parse::Object::Service { service, .. })) => service.map(|s| {
            let mut s = Service::clone(&s);
            s.origin = Some(origin.into());
            s
        }),
        other => panic!("not a Service: {other:?}"),
    }
}
