//! A test Kubernetes API server: list and watch of Services, EndpointSlices and Nodes over real
//! HTTP/1.1 on 127.0.0.1, with knobs to force relists, to go away and come back, and to fail in
//! the ways real ones do (`faults`).
//!
//! Invariants: one global resourceVersion counter (as etcd); every mutation appends to a history
//! that watches replay from any resourceVersion not older than `compact()`'s mark; label and field
//! selectors filter lists and watches (an object leaving a watch's selector arrives as DELETED).
//! Lists are paged by `limit`/`continue` in key order (a continued page reads the current objects,
//! not a snapshot). Every request is recorded. The state survives `stop()`/`start()`; open
//! connections do not. Limits: only cluster-wide paths are served.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use kproxy::watch::Kind;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

mod faults;
mod serve;

use serve::serve;

/// One recorded request.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// The raw query string (without `?`).
    pub query: String,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// When its headers had arrived.
    pub at: std::time::Instant,
}

impl Request {
    /// A query parameter, percent-decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k) == name).then(|| decode(v))
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_watch(&self) -> bool {
        self.param("watch").as_deref() == Some("true")
    }
}

/// `application/x-www-form-urlencoded` decoding, as kube encodes query parameters.
pub fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct KindInfo {
    path: &'static str,
    kind: &'static str,
    api_version: &'static str,
    namespaced: bool,
}

fn info(kind: Kind) -> KindInfo {
    match kind {
        Kind::Services => KindInfo {
            path: "/api/v1/services",
            kind: "Service",
            api_version: "v1",
            namespaced: true,
        },
        Kind::EndpointSlices => KindInfo {
            path: "/apis/discovery.k8s.io/v1/endpointslices",
            kind: "EndpointSlice",
            api_version: "discovery.k8s.io/v1",
            namespaced: true,
        },
        Kind::Nodes => KindInfo {
            path: "/api/v1/nodes",
            kind: "Node",
            api_version: "v1",
            namespaced: false,
        },
        Kind::ServiceCidrs => KindInfo {
            path: "/apis/networking.k8s.io/v1/servicecidrs",
            kind: "ServiceCIDR",
            api_version: "networking.k8s.io/v1",
            namespaced: false,
        },
    }
}

const KINDS: [Kind; 4] = [
    Kind::Services,
    Kind::EndpointSlices,
    Kind::Nodes,
    Kind::ServiceCidrs,
];

fn kind_of_object(obj: &Value) -> Kind {
    let k = obj["kind"].as_str().unwrap_or_default();
    KINDS
        .into_iter()
        .find(|&kind| info(kind).kind == k)
        .unwrap_or_else(|| panic!("test API server does not serve kind {k:?}"))
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum EventType {
    Added,
    Modified,
    Deleted,
    Bookmark,
}

struct Entry {
    kind: Kind,
    rv: u64,
    event: EventType,
    object: Value,
    old: Option<Value>,
}

type Key = (String, String);

#[derive(Default)]
struct State {
    rv: u64,
    objects: HashMap<Kind, BTreeMap<Key, Value>>,
    history: Vec<Entry>,
    /// Watches from a resourceVersion below this get 410 Expired.
    compacted: u64,
    /// Bumped by `expire_watches`: open watches of the kind end with 410 Expired.
    epochs: HashMap<Kind, u64>,
    held: bool,
    open_watches: HashMap<Kind, usize>,
    requests: Vec<Request>,
    faults: faults::Faults,
}

struct Shared {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the state and wakes every open watch.
    fn mutate<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut self.lock());
        self.changed.send_modify(|n| *n += 1);
        out
    }
}

pub struct ApiServer {
    addr: SocketAddr,
    /// The network namespace it listens in (`None`: the test's own).
    netns: Option<String>,
    shared: Arc<Shared>,
    running: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

impl ApiServer {
    /// Starts an empty server on a random port of 127.0.0.1.
    pub async fn start() -> ApiServer {
        Self::start_in(None).await
    }

    /// Starts an empty server on a random port of 127.0.0.1 inside the named network namespace
    /// (where a kproxy under test runs).
    pub async fn start_in(netns: Option<&str>) -> ApiServer {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 1,
                ..State::default()
            }),
            changed: watch::Sender::new(0),
        });
        let mut server = ApiServer {
            addr: "127.0.0.1:0".parse().unwrap(),
            netns: netns.map(str::to_string),
            shared,
            running: None,
        };
        server.resume().await;
        server
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the listener and every open connection; the state is kept.
    pub async fn stop(&mut self) {
        if let Some((shutdown, task)) = self.running.take() {
            let _ = shutdown.send(true);
            task.await.expect("API server accept loop");
        }
    }

    /// Listens again on the same port.
    pub async fn resume(&mut self) {
        assert!(self.running.is_none(), "already running");
        let addr = self.addr;
        // std's bind sets SO_REUSEADDR, so the same port can be bound again after `stop`.
        let bind = move || {
            let l = std::net::TcpListener::bind(addr).expect("bind the test API server");
            l.set_nonblocking(true).expect("nonblocking listener");
            l
        };
        let std_listener = match &self.netns {
            Some(ns) => super::netns::run_in(ns, bind),
            None => bind(),
        };
        let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
        self.addr = listener.local_addr().unwrap();
        let (shutdown, mut stopped) = watch::channel(false);
        let shared = self.shared.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    accepted = listener.accept() => {
                        if let Ok((stream, _)) = accepted {
                            conns.spawn(serve(shared.clone(), stream));
                        }
                        while conns.try_join_next().is_some() {}
                    }
                }
            }
            drop(listener);
            conns.shutdown().await;
        });
        self.running = Some((shutdown, task));
    }

    /// Creates or replaces an object (its `kind` says which); returns its new resourceVersion.
    pub fn apply(&self, mut obj: Value) -> u64 {
        let kind = kind_of_object(&obj);
        let ki = info(kind);
        if ki.namespaced && obj["metadata"]["namespace"].is_null() {
            obj["metadata"]["namespace"] = json!("default");
        }
        obj["apiVersion"] = json!(ki.api_version);
        let key = key_of(&obj);
        self.shared.mutate(|s| {
            s.rv += 1;
            let rv = s.rv;
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            obj["metadata"]["uid"] = json!(format!("uid-{}-{}", key.0, key.1));
            let old = s.objects.entry(kind).or_default().insert(key, obj.clone());
            let event = if old.is_some() {
                EventType::Modified
            } else {
                EventType::Added
            };
            s.history.push(Entry {
                kind,
                rv,
                event,
                object: obj,
                old,
            });
            rv
        })
    }

    /// Creates many objects at once, with no history (as if compacted right after): for large
    /// clusters, whose history nobody replays.
    pub fn load(&self, objects: impl IntoIterator<Item = Value>) {
        let objects: Vec<Value> = objects.into_iter().collect();
        for obj in objects {
            self.apply(obj);
        }
        self.shared.mutate(|s| {
            assert!(
                s.open_watches.values().all(|&n| n == 0),
                "load() with open watches: their history would vanish"
            );
            s.history.clear();
            s.compacted = s.rv;
        });
    }

    /// Deletes an object; returns the resourceVersion of the deletion. Panics if it is absent.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> u64 {
        let key = (namespace.to_string(), name.to_string());
        self.shared.mutate(|s| {
            let mut obj = s
                .objects
                .entry(kind)
                .or_default()
                .remove(&key)
                .unwrap_or_else(|| panic!("delete of absent {kind:?} {namespace}/{name}"));
            s.rv += 1;
            obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
            let rv = s.rv;
            s.history.push(Entry {
                kind,
                rv,
                event: EventType::Deleted,
                object: obj,
                old: None,
            });
            rv
        })
    }

    /// Sends a BOOKMARK at the current resourceVersion to watches of `kind` that allow them.
    pub fn bookmark(&self, kind: Kind) {
        self.shared.mutate(|s| {
            let ki = info(kind);
            let object = json!({"kind": ki.kind, "apiVersion": ki.api_version,
                "metadata": {"resourceVersion": s.rv.to_string()}});
            let rv = s.rv;
            s.history.push(Entry {
                kind,
                rv,
                event: EventType::Bookmark,
                object,
                old: None,
            });
        });
    }

    /// While held, open watches deliver nothing (events queue up); used to make a watch miss
    /// changes before `expire_watches`.
    pub fn hold_watches(&self, held: bool) {
        self.shared.mutate(|s| s.held = held);
    }

    /// Watches from a resourceVersion older than now will get 410 Expired (history compacted).
    pub fn compact(&self) {
        self.shared.mutate(|s| s.compacted = s.rv);
    }

    /// Every open watch of `kind` gets an ERROR 410 Expired event and ends.
    pub fn expire_watches(&self, kind: Kind) {
        self.shared
            .mutate(|s| *s.epochs.entry(kind).or_default() += 1);
    }

    pub fn open_watches(&self, kind: Kind) -> usize {
        self.shared
            .lock()
            .open_watches
            .get(&kind)
            .copied()
            .unwrap_or(0)
    }

    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }

    /// Recorded list requests (pages included) for `kind`: its requests that are not watches.
    pub fn lists(&self, kind: Kind) -> Vec<Request> {
        let mut lists = self.requests_for(kind);
        lists.retain(|r| !r.is_watch());
        lists
    }

    /// Recorded requests for `kind`'s collection path.
    pub fn requests_for(&self, kind: Kind) -> Vec<Request> {
        let path = info(kind).path;
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }
}

fn key_of(obj: &Value) -> Key {
    let meta = &obj["metadata"];
    let ns = meta["namespace"].as_str().unwrap_or_default().to_string();
    let name = meta["name"]
        .as_str()
        .expect("test object without metadata.name")
        .to_string();
    (ns, name)
}
