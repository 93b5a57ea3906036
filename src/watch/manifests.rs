//! The `--manifests DIR` source: Services, EndpointSlices, v1 Endpoints and this node's Node
//! read from `*.yaml`, `*.yml` and `*.json` files in one directory, kept up to date as files are
//! created, edited, replaced and deleted.
//!
//! Invariants and recovery:
//! - After the first complete read it sends every object, then `Listed` for each kind; after
//!   that, only differences (`Some` for added or changed objects, `None` for removed ones).
//! - A document that does not parse, has fields of the wrong type or fails `validate` is skipped
//!   with one warn line (file, 0-based document index, reason) and counted in
//!   `kproxy_rejected_objects_total`; the rest of its file and every other file keep being
//!   served, and fixing the file takes effect on the next scan.
//! - The same object in two files: the lexically last file name wins (see `state`).
//! - An unreadable directory keeps everything served as it was, and is retried every poll
//!   (one warn line per outage); nothing, not even `Listed`, is sent before the first listing.
//! - A file that cannot be read (permissions) keeps serving what it held, until its stat changes.
//!
//! Change detection polls `(name, mtime, size, inode, device)` of every file every 100 ms
//! instead of using inotify. Polling sees every way a file can change: editors that write a temp
//! file and rename it over the original (a new inode), Kubernetes ConfigMap volumes that swap a
//! `..data` symlink (stat follows symlinks), network filesystems that send no events, and events
//! that would be lost when an inotify queue overflows. A stat per file per poll is cheap, even
//! for 10,000 files (about 2 ms per idle poll of 1,000 files in a release build), and only files
//! whose stat changed are read again; a file whose content hash is unchanged is not re-parsed. A file modified within the last 100 ms is read again on the
//! next poll too, since a second write within the filesystem's timestamp granularity could leave
//! the stat unchanged.

mod mirror;
mod parse;
mod state;

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, Metadata};
use std::hash::{DefaultHasher, Hasher};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};

use super::{Change, ChangeTx, Kind};
use crate::metrics::Metrics;
use state::State;

/// How often the directory is polled; with parsing, changes are served well within 200 ms.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Files modified more recently than this are read again on the next poll (see the module doc).
const RACY_WINDOW: Duration = Duration::from_millis(100);

/// Serves the manifests in `dir` to `tx` until the receiver goes away.
pub async fn run(dir: PathBuf, tx: ChangeTx, metrics: Arc<Metrics>, node_name: String) {
    info!(dir = %dir.display(), "serving manifests");
    let mut scanner = Scanner::new(dir, node_name, metrics);
    let mut ticks = tokio::time::interval(POLL_INTERVAL);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut listed = false;
    loop {
        ticks.tick().await;
        if tx.is_closed() {
            return;
        }
        // Reading and parsing are blocking file I/O: keep them off the async workers.
        let scanned = tokio::task::spawn_blocking(move || {
            let changes = scanner.scan();
            (scanner, changes)
        })
        .await;
        let changes;
        (scanner, changes) = match scanned {
            Ok(done) => done,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return, // the runtime is shutting down
        };
        let Some(changes) = changes else { continue };
        let firsts = if listed {
            Vec::new()
        } else {
            vec![Kind::Services, Kind::EndpointSlices, Kind::Nodes]
        };
        listed = true;
        for change in changes
            .into_iter()
            .chain(firsts.into_iter().map(Change::Listed))
        {
            if tx.send(change).is_err() {
                return;
            }
        }
    }
}

/// What was last seen of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stat {
    mtime: (i64, i64),
    size: u64,
    ino: u64,
    dev: u64,
}

impl Stat {
    fn of(m: &Metadata) -> Stat {
        Stat {
            mtime: (m.mtime(), m.mtime_nsec()),
            size: m.size(),
            ino: m.ino(),
            dev: m.dev(),
        }
    }

    /// Modified so recently that another write could still go unnoticed by its stat.
    fn is_racy(&self, now: SystemTime) -> bool {
        let mtime = Duration::new(
            u64::try_from(self.mtime.0).unwrap_or(0),
            u32::try_from(self.mtime.1).unwrap_or(0),
        );
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        mtime + RACY_WINDOW > now
    }
}

#[derive(Debug)]
struct FileState {
    stat: Stat,
    /// Hash of the content last parsed; `None` when the file could not be read.
    hash: Option<u64>,
    racy: bool,
}

/// Polls one directory; `scan` is synchronous so tests can drive it step by step.
struct Scanner {
    dir: PathBuf,
    node_name: String,
    metrics: Arc<Metrics>,
    files: HashMap<Arc<str>, FileState>,
    state: State,
    /// The directory could not be listed on the last scan (logged once per outage).
    dir_failing: bool,
}

impl Scanner {
    fn new(dir: PathBuf, node_name: String, metrics: Arc<Metrics>) -> Scanner {
        Scanner {
            dir,
            node_name,
            metrics,
            files: HashMap::new(),
            state: State::default(),
            dir_failing: false,
        }
    }

    /// One poll: the changes since the last one, or `None` when the directory cannot be listed.
    fn scan(&mut self) -> Option<Vec<Change>> {
        let present = match self.list() {
            Ok(present) => {
                if self.dir_failing {
                    info!(dir = %self.dir.display(), "manifests directory readable again");
                    self.dir_failing = false;
                }
                present
            }
            Err(e) => {
                if !self.dir_failing {
                    warn!(dir = %self.dir.display(), error = %e, "cannot list the manifests directory; serving what was read before");
                    self.dir_failing = true;
                }
                return None;
            }
        };
        let gone: Vec<Arc<str>> = self
            .files
            .keys()
            .filter(|f| !present.contains_key(&***f))
            .cloned()
            .collect();
        for file in gone {
            debug!(file = &*file, "manifest removed");
            self.files.remove(&file);
            self.state.set_file(&file, Vec::new());
        }
        let now = SystemTime::now();
        for (name, stat) in present {
            match self.files.get(name.as_str()) {
                Some(known) if known.stat == stat && !known.racy => {}
                _ => self.load(name.into(), stat, now),
            }
        }
        Some(self.state.changes())
    }

    /// The manifest files in the directory and their stats, sorted by name.
    fn list(&self) -> io::Result<BTreeMap<String, Stat>> {
        let mut present = BTreeMap::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !is_manifest(&name) {
                continue;
            }
            match fs::metadata(entry.path()) {
                Ok(m) if m.is_file() => {
                    present.insert(name, Stat::of(&m));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {} // deleted since listing
                Err(e) => {
                    // Keep serving what the file held rather than treating it as deleted.
                    if let Some(known) = self.files.get(name.as_str()) {
                        debug!(file = name, error = %e, "cannot stat manifest");
                        present.insert(name, known.stat);
                    }
                }
            }
        }
        Ok(present)
    }

    /// (Re)reads one file whose stat changed, and re-parses it if its content did.
    fn load(&mut self, name: Arc<str>, stat: Stat, now: SystemTime) {
        let racy = stat.is_racy(now);
        let bytes = match fs::read(self.dir.join(&*name)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return, // gone; next scan removes it
            Err(e) => {
                warn!(file = &*name, error = %e, "cannot read manifest; serving what it held before");
                let hash = self.files.get(&name).and_then(|f| f.hash);
                self.files.insert(
                    name,
                    FileState {
                        stat,
                        hash,
                        racy: false,
                    },
                );
                return;
            }
        };
        let mut hasher = DefaultHasher::new();
        hasher.write(&bytes);
        let hash = Some(hasher.finish());
        let unchanged = self.files.get(&name).is_some_and(|f| f.hash == hash);
        self.files
            .insert(name.clone(), FileState { stat, hash, racy });
        if unchanged {
            return;
        }
        debug!(file = &*name, "parsing manifest");
        let parsed = parse::parse_file(&name, &bytes, &self.node_name);
        for r in &parsed.rejected {
            warn!(
                file = &*name,
                document = r.document,
                item = r.item,
                reason = r.rejection.reason.as_str(),
                detail = %r.rejection.detail,
                "skipping an invalid object in a manifest"
            );
            self.metrics.reject(r.rejection.reason);
        }
        self.state.set_file(&name, parsed.objects);
    }
}

/// `*.yaml`, `*.yml` or `*.json`, and not hidden (editor swap files, `..data` of ConfigMap
/// volumes) nor an editor backup (`foo.yaml~`).
fn is_manifest(name: &str) -> bool {
    !name.starts_with('.')
        && !name.ends_with('~')
        && [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

#[cfg(test)]
mod tests;
