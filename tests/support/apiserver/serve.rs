//! The test API server's HTTP side: one connection's requests, lists, and watch streams
//! (chunked newline-delimited events replayed from the history, then live).
//!
//! Invariants: a watch ends the connection; a watch whose kind's epoch changes sends ERROR 410
//! before anything else; while watches are held nothing but that ERROR is delivered. Faults
//! (`faults.rs`) apply before anything else is answered: delay first, then 403, then 410s.

use std::ops::Bound::{Excluded, Unbounded};
use std::sync::Arc;
use std::time::Duration;

use kproxy::watch::Kind;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;

use super::{Entry, EventType, KINDS, Key, Request, Shared, info};
use crate::support::selector::Selector;

/// Serves one connection: keep-alive GETs until a watch, which ends the connection.
pub(super) async fn serve(shared: Arc<Shared>, stream: TcpStream) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    loop {
        let mut request_line = String::new();
        match rd.read_line(&mut request_line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // GET requests carry no body: the headers end the request.
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            match rd.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) if line.trim_end().is_empty() => break,
                Ok(_) => {
                    if let Some((k, v)) = line.split_once(':') {
                        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                    }
                }
            }
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let req = Request {
            method,
            path: path.to_string(),
            query: query.to_string(),
            headers,
            at: std::time::Instant::now(),
        };
        shared.lock().requests.push(req.clone());
        let kind = KINDS.into_iter().find(|&k| info(k).path == req.path);
        let kind = kind.filter(|k| !shared.lock().faults.not_served.contains(k));
        let (delay, forbidden) = match kind {
            Some(kind) => {
                let s = shared.lock();
                let delay = s.faults.delay.get(&kind).copied();
                (delay, s.faults.forbidden.contains(&kind))
            }
            None => (None, false),
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let result = match kind {
            Some(kind) if forbidden => {
                let resource = info(kind).path.rsplit('/').next().unwrap_or_default();
                let message = format!(
                    "{resource} is forbidden: User \"system:serviceaccount:kube-system:kproxy\" \
                     cannot list resource \"{resource}\" at the cluster scope"
                );
                respond(&mut wr, 403, &status(403, "Forbidden", &message)).await
            }
            Some(kind) if req.method == "GET" && req.is_watch() => {
                let _ = watch_kind(&shared, &mut wr, kind, &req).await;
                return;
            }
            Some(kind) if req.method == "GET" => match list(&shared, kind, &req) {
                Ok(list) => respond(&mut wr, 200, &list).await,
                Err(gone) => respond(&mut wr, 410, &gone).await,
            },
            _ => {
                let message = format!("{} not served", req.path);
                respond(&mut wr, 404, &status(404, "NotFound", &message)).await
            }
        };
        if result.is_err() {
            return;
        }
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "code": code, "reason": reason, "message": message})
}

async fn respond(wr: &mut OwnedWriteHalf, code: u16, body: &Value) -> std::io::Result<()> {
    let body = body.to_string();
    let reason = match code {
        200 => "OK",
        403 => "Forbidden",
        404 => "Not Found",
        410 => "Gone",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    wr.write_all(head.as_bytes()).await?;
    wr.write_all(body.as_bytes()).await?;
    wr.flush().await
}

struct Filter {
    labels: Selector,
    fields: Selector,
}

impl Filter {
    fn of(req: &Request) -> Filter {
        Filter {
            labels: Selector::parse(&req.param("labelSelector").unwrap_or_default()),
            fields: Selector::parse(&req.param("fieldSelector").unwrap_or_default()),
        }
    }

    fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        let labels = |k: &str| meta["labels"][k].as_str().map(str::to_string);
        let fields = |k: &str| match k {
            "metadata.name" => meta["name"].as_str().map(str::to_string),
            "metadata.namespace" => meta["namespace"].as_str().map(str::to_string),
            "spec.clusterIP" => obj["spec"]["clusterIP"].as_str().map(str::to_string),
            _ => None,
        };
        self.labels.matches(labels) && self.fields.matches(fields)
    }
}

/// One page of a list: `limit` items (all when absent or 0) after the `continue` token's key,
/// in key order. The token is `rv/namespace/name` of the page's first list and its last key.
fn list(shared: &Shared, kind: Kind, req: &Request) -> Result<Value, Value> {
    let filter = Filter::of(req);
    let mut s = shared.lock();
    let ki = info(kind);
    let limit = req
        .param("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|&l| l > 0)
        .unwrap_or(usize::MAX);
    let token = req.param("continue").filter(|c| !c.is_empty());
    if token.is_some() && s.faults.take_expired_continue() {
        return Err(status(
            410,
            "Expired",
            "The provided continue parameter is too old to display a consistent list result. \
             You can start a new list without the continue parameter.",
        ));
    }
    let (rv, after) = match token
        .as_deref()
        .map(|t| t.splitn(3, '/').collect::<Vec<_>>())
    {
        Some(parts) if parts.len() == 3 => (
            parts[0].to_string(),
            Some((parts[1].to_string(), parts[2].to_string())),
        ),
        _ => (s.rv.to_string(), None),
    };
    let empty = Default::default();
    let objects = s.objects.get(&kind).unwrap_or(&empty);
    let range = match &after {
        Some(key) => objects.range::<Key, _>((Excluded(key), Unbounded)),
        None => objects.range::<Key, _>(..),
    };
    let mut matching = range.filter(|(_, o)| filter.matches(o));
    let page: Vec<(&Key, &Value)> = matching.by_ref().take(limit).collect();
    let remaining = matching.count();
    let next = match page.last() {
        Some((key, _)) if remaining > 0 => Some(format!("{rv}/{}/{}", key.0, key.1)),
        _ => None,
    };
    let items: Vec<Value> = page
        .into_iter()
        .map(|(_, o)| o)
        .map(|o| {
            // As the real API server, list items carry no kind/apiVersion.
            let mut o = o.clone();
            if let Some(map) = o.as_object_mut() {
                map.remove("kind");
                map.remove("apiVersion");
            }
            o
        })
        .collect();
    let mut metadata = json!({"resourceVersion": rv});
    if let Some(next) = next {
        metadata["continue"] = json!(next);
        metadata["remainingItemCount"] = json!(remaining);
    }
    Ok(
        json!({"kind": format!("{}List", ki.kind), "apiVersion": ki.api_version,
        "metadata": metadata, "items": items}),
    )
}

fn expired() -> Value {
    json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "code": 410, "reason": "Expired", "message": "too old resource version"}})
}

/// The watch event `entry` becomes for a watch with `filter`, if any.
fn event_for(entry: &Entry, filter: &Filter, bookmarks: bool) -> Option<Value> {
    let now = filter.matches(&entry.object);
    let before = entry.old.as_ref().is_some_and(|o| filter.matches(o));
    let ty = match (entry.event, before, now) {
        (EventType::Bookmark, _, _) if bookmarks => "BOOKMARK",
        (EventType::Bookmark, _, _) => return None,
        (EventType::Added, _, true) => "ADDED",
        (EventType::Modified, true, true) => "MODIFIED",
        (EventType::Modified, false, true) => "ADDED",
        (EventType::Modified, true, false) => "DELETED",
        (EventType::Deleted, _, true) => "DELETED",
        _ => return None,
    };
    Some(json!({"type": ty, "object": entry.object}))
}

async fn chunk(wr: &mut OwnedWriteHalf, line: &str) -> std::io::Result<()> {
    let data = format!("{line}\n");
    wr.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
        .await
}

/// Decrements the open-watch count when a watch ends (or its task is aborted).
struct OpenWatch(Arc<Shared>, Kind);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0
            .mutate(|s| *s.open_watches.entry(self.1).or_default() -= 1);
    }
}

async fn watch_kind(
    shared: &Arc<Shared>,
    wr: &mut OwnedWriteHalf,
    kind: Kind,
    req: &Request,
) -> std::io::Result<()> {
    let filter = Filter::of(req);
    let bookmarks = req.param("allowWatchBookmarks").as_deref() == Some("true");
    let timeout = req
        .param("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .unwrap_or(1800);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let since: Option<u64> = req
        .param("resourceVersion")
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0);
    wr.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await?;
    let mut changed = shared.changed.subscribe();
    let (mut cursor, epoch, cut, initial) = {
        let mut s = shared.lock();
        let epoch = s.epochs.get(&kind).copied().unwrap_or(0);
        let cut = s.faults.cut(kind).epoch;
        let gone = s.faults.take_gone_watch(kind);
        let (cursor, initial) = match since {
            _ if gone => (0, Err(())),
            Some(rv) if rv < s.compacted => (0, Err(())),
            Some(rv) => (s.history.partition_point(|e| e.rv <= rv), Ok(Vec::new())),
            // No resourceVersion (or 0): the current state as ADDED, then what follows.
            None => {
                let added = s.objects.get(&kind).into_iter().flat_map(|m| m.values());
                let added = added
                    .filter(|o| filter.matches(o))
                    .map(|o| json!({"type": "ADDED", "object": o}).to_string())
                    .collect();
                (s.history.len(), Ok(added))
            }
        };
        (cursor, epoch, cut, initial)
    };
    let Ok(initial) = initial else {
        chunk(wr, &expired().to_string()).await?;
        return wr.write_all(b"0\r\n\r\n").await;
    };
    shared.mutate(|s| *s.open_watches.entry(kind).or_default() += 1);
    let _open = OpenWatch(shared.clone(), kind);
    for line in initial {
        chunk(wr, &line).await?;
    }
    loop {
        changed.borrow_and_update();
        let (lines, end, cut_now) = {
            let s = shared.lock();
            let cut_now = Some(s.faults.cut(kind)).filter(|c| c.epoch != cut);
            if s.epochs.get(&kind).copied().unwrap_or(0) != epoch {
                (vec![expired().to_string()], true, None)
            } else if cut_now.is_some_and(|c| !c.mid_event) {
                (Vec::new(), false, cut_now)
            } else if s.held {
                (Vec::new(), false, None)
            } else {
                let lines: Vec<String> = s.history[cursor..]
                    .iter()
                    .filter(|e| e.kind == kind)
                    .filter_map(|e| event_for(e, &filter, bookmarks))
                    .map(|v| v.to_string())
                    .collect();
                // A mid-event cut waits for an event to cut in half.
                if lines.is_empty() && cut_now.is_some() {
                    (lines, false, None)
                } else {
                    cursor = s.history.len();
                    (lines, false, cut_now)
                }
            }
        };
        if let Some(cut) = cut_now {
            if cut.mid_event {
                let half = &lines[0].as_bytes()[..lines[0].len() / 2];
                wr.write_all(format!("{:x}\r\n", half.len()).as_bytes())
                    .await?;
                wr.write_all(half).await?;
                wr.write_all(b"\r\n").await?;
                wr.flush().await?;
            }
            // Ends the connection with no final chunk, as a broken one.
            return Err(std::io::Error::other("watch cut"));
        }
        for line in &lines {
            chunk(wr, line).await?;
        }
        wr.flush().await?;
        if end {
            return wr.write_all(b"0\r\n\r\n").await;
        }
        tokio::select! {
            _ = changed.changed() => {}
            _ = tokio::time::sleep_until(deadline) => return wr.write_all(b"0\r\n\r\n").await,
        }
    }
}
