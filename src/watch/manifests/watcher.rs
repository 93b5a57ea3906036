//! When to look at the manifests directory again, and at what: inotify events on the directory,
//! debounced into one batch of file names, a slow safety rescan, and polling where inotify is
//! unavailable or the directory is missing.
//!
//! Invariants and recovery:
//! - The watch is (re)added before every rescan (`ensure_watch`), so a change made while the
//!   scanner reads is either seen by that scan or reported by an event afterwards.
//! - An event naming a manifest file asks for that file only; any other event (on the directory
//!   itself, a name that is not a manifest, a lost or overflowed queue) asks for a rescan.
//! - Without a watch (inotify could not be initialised, or the directory is missing, renamed or
//!   unreadable), the directory is rescanned every `POLL_INTERVAL`, as before inotify; with one,
//!   every `SAFETY_RESCAN`, which repairs anything the events missed (network filesystems, a
//!   manifest symlinked to a file outside the directory).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use inotify::{EventMask, EventOwned, EventStream, Inotify, WatchDescriptor, WatchMask};
use tokio::time::{Instant, sleep, sleep_until};
use tracing::{debug, warn};

use super::{dir_id, is_manifest};

/// How often the directory is rescanned while there is no watch on it.
pub(super) const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How often the directory is rescanned although a watch is on it.
const SAFETY_RESCAN: Duration = Duration::from_secs(30);
/// Events within this time of the first one are handled together (an editor's write and
/// rename, a tool writing several files): one read per file.
const DEBOUNCE: Duration = Duration::from_millis(5);
/// Every way a name in the directory can come to mean other content, and the directory's own end.
const MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::DELETE)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::ONLYDIR);

/// What the scanner should do next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Work {
    /// Stat every file and read those whose stat changed.
    Rescan,
    /// Read these manifest files again. `others`: a name that is not a manifest changed too,
    /// which matters when manifests are symlinks (a ConfigMap volume's `..data` swap).
    Files {
        names: BTreeSet<String>,
        others: bool,
    },
}

pub(super) struct Watcher {
    dir: PathBuf,
    /// `None` when inotify could not be initialised (then the directory is polled).
    events: Option<EventStream<Vec<u8>>>,
    /// The watch on `dir`, and the (device, inode) of the directory it was added to.
    watch: Option<(WatchDescriptor, (u64, u64))>,
    last_rescan: Instant,
}

impl Watcher {
    /// Must be called within the tokio runtime.
    pub(super) fn new(dir: PathBuf) -> Watcher {
        let events = Inotify::init().and_then(|i| i.into_event_stream(vec![0; 64 * 1024]));
        let events = match events {
            Ok(events) => Some(events),
            Err(e) => {
                warn!(error = %e, "cannot use inotify; polling the manifests directory every 100 ms");
                None
            }
        };
        Watcher {
            dir,
            events,
            watch: None,
            last_rescan: Instant::now(),
        }
    }

    /// Adds the watch when there is none, or when `dir` now names another directory.
    pub(super) fn ensure_watch(&mut self) {
        let Some(events) = &self.events else { return };
        let id = dir_id(&self.dir);
        if id.is_some() && id == self.watch.as_ref().map(|(_, id)| *id) {
            return;
        }
        if let Some((wd, _)) = self.watch.take() {
            let _ = events.watches().remove(wd); // fails when the kernel already dropped it
        }
        let Some(id) = id else { return };
        match events.watches().add(&self.dir, MASK) {
            Ok(wd) => self.watch = Some((wd, id)),
            // The rescan that follows reports the directory's trouble; polling goes on meanwhile.
            Err(e) => {
                debug!(dir = %self.dir.display(), error = %e, "cannot watch the manifests directory")
            }
        }
    }

    /// Waits until there is something to do. `failing`: the last scan could not list the
    /// directory, so it is retried every `POLL_INTERVAL`.
    pub(super) async fn next(&mut self, failing: bool) -> Work {
        let wait = if self.events.is_none() || self.watch.is_none() || failing {
            POLL_INTERVAL
        } else {
            SAFETY_RESCAN.saturating_sub(self.last_rescan.elapsed())
        };
        let Some(events) = self.events.as_mut() else {
            sleep(wait).await;
            return self.rescan();
        };
        let first = tokio::select! {
            event = events.next() => event,
            () = sleep(wait) => return self.rescan(),
        };
        let mut batch = Batch::default();
        let deadline = Instant::now() + DEBOUNCE;
        let mut event = first;
        loop {
            match event {
                Some(Ok(event)) => self.add(&mut batch, event),
                Some(Err(e)) => return self.give_up(&e.to_string()),
                None => return self.give_up("the event stream ended"),
            }
            let Some(events) = self.events.as_mut() else {
                break;
            };
            event = tokio::select! {
                event = events.next() => event,
                () = sleep_until(deadline) => break,
            };
        }
        if batch.rescan {
            self.rescan()
        } else {
            Work::Files {
                names: batch.names,
                others: batch.others,
            }
        }
    }

    fn rescan(&mut self) -> Work {
        self.last_rescan = Instant::now();
        Work::Rescan
    }

    /// The event stream failed: poll from now on.
    fn give_up(&mut self, why: &str) -> Work {
        warn!(
            error = why,
            "inotify failed; polling the manifests directory every 100 ms"
        );
        self.events = None;
        self.watch = None;
        self.rescan()
    }

    fn add(&mut self, batch: &mut Batch, event: EventOwned) {
        if event.mask.contains(EventMask::Q_OVERFLOW) {
            debug!("inotify queue overflowed; rescanning the manifests directory");
            batch.rescan = true;
            return;
        }
        if self.watch.as_ref().is_none_or(|(wd, _)| *wd != event.wd) {
            return; // from a watch removed since
        }
        let lost = EventMask::IGNORED | EventMask::DELETE_SELF | EventMask::MOVE_SELF;
        if event.mask.intersects(lost) {
            // Removed, renamed away or unmounted: poll until `dir` is a directory again.
            if let (Some((wd, _)), Some(events)) = (self.watch.take(), &self.events) {
                let _ = events.watches().remove(wd);
            }
            batch.rescan = true;
            return;
        }
        match event.name.map(|n| n.into_string()) {
            Some(Ok(name)) if is_manifest(&name) => {
                batch.names.insert(name);
            }
            Some(_) => batch.others = true,
            None => batch.rescan = true, // the directory itself (its permissions, say)
        }
    }
}

#[derive(Default)]
struct Batch {
    names: BTreeSet<String>,
    others: bool,
    rescan: bool,
}
