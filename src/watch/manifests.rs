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
//!   served, and fixing the file takes effect as soon as it is seen.
//! - A manifest name that is not a regular file (a directory, FIFO, socket, device or symlink
//!   loop) is skipped with one warn line, seen by a rescan or an event alike; again only after
//!   it changed or went away.
//! - The same object in two files: the lexically last file name wins (see `state`).
//! - Each Service and slice is held once, as the `Arc` that is sent to the model (see `state`);
//!   neither a file's bytes nor its parsed YAML are kept after parsing.
//! - An unreadable or missing directory keeps everything served as it was, and is retried every
//!   100 ms (one warn line per outage); nothing, not even `Listed`, is sent before the first
//!   listing.
//! - A file that cannot be read (permissions) keeps serving what it held, until it changes.
//!
//! Change detection (see `watcher`): an inotify watch on the directory names the files that were
//! created, written, renamed, deleted or touched; after a few milliseconds of debouncing only
//! those files are read again, and a file whose content hash is unchanged is not re-parsed. Any
//! other event (on a name that is not a manifest, such as the `..data` symlink a ConfigMap volume
//! swaps, when manifests are symlinks; the directory itself; a queue overflow) rescans the
//! directory: one stat per file, reading only files whose `(mtime, size, inode, device)` changed
//! (stat follows symlinks). The same rescan runs every 30 s, to repair events that never came
//! (network filesystems, a symlink to a file outside the directory), and every 100 ms instead of
//! events while inotify is unavailable or the directory is missing. On a rescan, a file modified
//! within the last 100 ms is read again by the next rescan too, since a second write within the
//! filesystem's timestamp granularity could leave its stat unchanged; an event-driven read never
//! trusts the stat.

mod limits;
mod mirror;
mod parse;
mod state;
mod watcher;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, Metadata};
use std::hash::{DefaultHasher, Hasher};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{debug, info, warn};

use super::{Change, ChangeTx, Kind};
use crate::metrics::Metrics;
use state::State;
use watcher::{Watcher, Work};

/// Files modified more recently than this are read again on the next rescan (see the module doc).
const RACY_WINDOW: Duration = Duration::from_millis(100);

pub use limits::DEFAULT_MAX_FILE_SIZE;

/// Serves the manifests in `dir` to `tx` until the receiver goes away; files larger than
/// `max_file_size` bytes are refused unread.
pub async fn run(
    dir: PathBuf,
    tx: ChangeTx,
    metrics: Arc<Metrics>,
    node_name: String,
    max_file_size: u64,
) {
    info!(dir = %dir.display(), "serving manifests");
    let mut watcher = Watcher::new(dir.clone());
    let mut scanner = Scanner::new(dir, node_name, metrics);
    scanner.max_file_size = max_file_size;
    let mut work = Work::Rescan;
    let mut listed = false;
    loop {
        watcher.ensure_watch();
        // Reading and parsing are blocking file I/O: keep them off the async workers.
        let scanned = tokio::task::spawn_blocking(move || {
            let changes = scanner.apply(work);
            (scanner, changes)
        })
        .await;
        let changes;
        (scanner, changes) = match scanned {
            Ok(done) => done,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return, // the runtime is shutting down
        };
        if let Some(changes) = changes {
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
        work = tokio::select! {
            work = watcher.next(scanner.dir_failing) => work,
            () = tx.closed() => return,
        };
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

/// Reads one directory; synchronous, so tests can drive it step by step.
struct Scanner {
    dir: PathBuf,
    node_name: String,
    metrics: Arc<Metrics>,
    files: HashMap<Arc<str>, FileState>,
    state: State,
    /// The directory could not be listed on the last scan (logged once per outage).
    dir_failing: bool,
    /// Some manifest is a symlink: then a change to any other name may change what it reads.
    has_links: bool,
    /// The (device, inode) of the directory last listed.
    dir_id: Option<(u64, u64)>,
    /// Files larger than this are refused unread (`--manifests-max-file-size`).
    max_file_size: u64,
    /// Manifest names that are not regular files (directories, FIFOs, symlink loops), with
    /// what they are: each is logged once, again only after it changed or went away.
    skipped: HashMap<String, &'static str>,
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
            has_links: false,
            dir_id: None,
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            skipped: HashMap::new(),
        }
    }

    /// Does `work`: the changes since the last call, or `None` when the directory cannot be
    /// listed.
    fn apply(&mut self, work: Work) -> Option<Vec<Change>> {
        match work {
            Work::Rescan => self.scan(),
            Work::Files { others: true, .. } if self.has_links => self.scan(),
            Work::Files { .. } if self.dir_failing => self.scan(),
            Work::Files { names, .. } => self.refresh(names),
        }
    }

    /// Reads the named manifest files again, whatever their stat says. When the directory is
    /// gone or another one, it is rescanned instead: its files are not withdrawn one by one.
    fn refresh(&mut self, names: BTreeSet<String>) -> Option<Vec<Change>> {
        if dir_id(&self.dir) != self.dir_id {
            return self.scan();
        }
        let now = SystemTime::now();
        for name in names {
            let path = self.dir.join(&name);
            let meta = fs::symlink_metadata(&path).and_then(|m| {
                if m.is_symlink() {
                    self.has_links = true;
                    fs::metadata(&path)
                } else {
                    Ok(m)
                }
            });
            match meta {
                Ok(m) if m.is_file() => {
                    self.skipped.remove(&name);
                    self.load(name.into(), Stat::of(&m), now)
                }
                Ok(m) => self.skip(name, kind_of(&m)),
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                    self.skip(name, "a symlink loop")
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.skipped.remove(&name);
                    self.forget(&name)
                }
                // Keep serving what the file held; its next event or a rescan tries again.
                Err(e) => debug!(file = name, error = %e, "cannot stat manifest"),
            }
        }
        Some(self.state.changes())
    }

    /// A manifest name that is `what`, not a regular file, seen through an event: logged unless
    /// it was already logged as that, and what it held before (as a file) withdrawn.
    fn skip(&mut self, name: String, what: &'static str) {
        if self.skipped.get(&name) != Some(&what) {
            warn_skipped(&name, what);
        }
        self.forget(&name);
        self.skipped.insert(name, what);
    }

    /// Withdraws what a file that is gone defined.
    fn forget(&mut self, name: &str) {
        if let Some((file, _)) = self.files.remove_entry(name) {
            debug!(file = &*file, "manifest removed");
            self.state.set_file(&file, Vec::new());
        }
    }

    /// One rescan: the changes since the last call, or `None` when the directory cannot be
    /// listed.
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
            self.forget(&file);
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
    fn list(&mut self) -> io::Result<BTreeMap<String, Stat>> {
        let mut present = BTreeMap::new();
        let mut skipped = HashMap::new();
        self.has_links = false;
        self.dir_id = dir_id(&self.dir);
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !is_manifest(&name) {
                continue;
            }
            if entry.file_type().is_ok_and(|t| t.is_symlink()) {
                self.has_links = true;
            }
            match fs::metadata(entry.path()) {
                Ok(m) if m.is_file() => {
                    present.insert(name, Stat::of(&m));
                }
                Ok(m) => {
                    skipped.insert(name, kind_of(&m));
                }
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                    skipped.insert(name, "a symlink loop");
                }
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
        for (name, what) in &skipped {
            if self.skipped.get(name) != Some(what) {
                warn_skipped(name, what);
            }
        }
        self.skipped = skipped;
        Ok(present)
    }

    /// (Re)reads one file whose stat changed, and re-parses it if its content did.
    fn load(&mut self, name: Arc<str>, stat: Stat, now: SystemTime) {
        let racy = stat.is_racy(now);
        let limit = self.max_file_size;
        let read = if stat.size > limit {
            Ok(None)
        } else {
            read_at_most(&self.dir.join(&*name), limit)
        };
        let bytes = match read {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                warn!(
                    file = &*name,
                    size = stat.size,
                    limit,
                    "manifest is larger than --manifests-max-file-size; not read, nothing of it is served"
                );
                self.metrics
                    .reject(crate::model::validate::RejectReason::TooLarge);
                let state = FileState {
                    stat,
                    hash: None,
                    racy: false,
                };
                self.files.insert(name.clone(), state);
                self.state.set_file(&name, Vec::new());
                return;
            }
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
        let started = std::time::Instant::now();
        let parsed = parse::parse_file(&name, &bytes, &self.node_name);
        debug!(file = &*name, objects = parsed.objects.len(), took = ?started.elapsed(), "parsed manifest");
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

/// The file's bytes, or `None` when it holds more than `limit` (it may have grown since its
/// stat): never more than `limit + 1` bytes are read.
fn read_at_most(path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    fs::File::open(path)?
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

/// The one line a manifest name that is not a regular file gets (again only after it changed or
/// went away).
fn warn_skipped(name: &str, what: &str) {
    warn!(
        file = name,
        "skipping a manifest name that is {what}, not a file"
    );
}

/// What a manifest name that is not a regular file is, for the log.
fn kind_of(m: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// The (device, inode) of `dir`, when it is a directory.
fn dir_id(dir: &Path) -> Option<(u64, u64)> {
    fs::metadata(dir)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino()))
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

/// What a first scan of a directory holding only `files` (name, content) sends, and the
/// documents it refused: each file parsed and merged as `Scanner::load` does, without the file
/// system. For the property tests that drive random manifests through the whole pipeline
/// (`backends::property_tests`).
#[cfg(test)]
pub(crate) fn first_scan(
    files: &[(String, String)],
    node_name: &str,
) -> (Vec<Change>, Vec<crate::model::validate::Rejection>) {
    let mut state = State::default();
    let mut rejected = Vec::new();
    for (name, text) in files {
        let parsed = parse::parse_file(name, text.as_bytes(), node_name);
        rejected.extend(parsed.rejected.into_iter().map(|r| r.rejection));
        state.set_file(&Arc::from(name.as_str()), parsed.objects);
    }
    (state.changes(), rejected)
}

#[cfg(test)]
mod tests;
