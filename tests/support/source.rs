//! `watch::kube::run` in a task of the test, against the test API server: what it sent, read
//! with a deadline, and small helpers to summarise it.

use std::sync::Arc;
use std::time::Duration;

use kproxy::metrics::Metrics;
use kproxy::model::NamespacedName;
use kproxy::watch::kube::{client, run};
use kproxy::watch::{Change, ChangeRx, Kind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::apiserver::{ApiServer, Request};
use super::{eventually, expect_eq, metric};

pub const WAIT: Duration = Duration::from_secs(15);

/// `run` in a task, and what it sent.
pub struct Source {
    pub rx: ChangeRx,
    pub metrics: Arc<Metrics>,
    task: JoinHandle<()>,
}

impl Drop for Source {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Source {
    pub async fn start(server: &ApiServer) -> Source {
        let client = client(None, Some(&server.url()))
            .await
            .expect("client for --master");
        let (tx, rx) = mpsc::unbounded_channel();
        let metrics = Arc::new(Metrics::new());
        let task = tokio::spawn(run(client, "node1".into(), tx, metrics.clone()));
        Source { rx, metrics, task }
    }

    pub async fn next(&mut self) -> Change {
        match tokio::time::timeout(WAIT, self.rx.recv()).await {
            Ok(Some(change)) => change,
            Ok(None) => panic!("the source stopped"),
            Err(_) => panic!("no change within {WAIT:?}"),
        }
    }

    /// Changes received until `Listed` arrived for every kind in `kinds`.
    pub async fn until_listed(&mut self, kinds: &[Kind]) -> Vec<Change> {
        let mut missing = kinds.to_vec();
        let mut changes = Vec::new();
        while !missing.is_empty() {
            let change = self.next().await;
            if let Change::Listed(kind) = &change {
                missing.retain(|k| k != kind);
            }
            changes.push(change);
        }
        changes
    }

    /// The next change that is not about Nodes or slices: the Service changes of a test.
    pub async fn next_service(&mut self) -> Change {
        loop {
            match self.next().await {
                c @ (Change::Service(..) | Change::Listed(Kind::Services)) => return c,
                _ => continue,
            }
        }
    }

    pub fn rejected(&self, reason: &str) -> f64 {
        metric(
            &self.metrics.render(),
            &format!("kproxy_rejected_objects_total{{reason=\"{reason}\"}}"),
        )
        .unwrap_or(-1.0)
    }
}

pub const ALL: [Kind; 4] = [
    Kind::Services,
    Kind::EndpointSlices,
    Kind::Nodes,
    Kind::ServiceCidrs,
];

pub fn nn(name: &str) -> NamespacedName {
    NamespacedName::new("default", name)
}

/// A Service change reduced to (name, first port number or None for a delete).
pub fn svc_summary(change: &Change) -> Option<(String, Option<u16>)> {
    match change {
        Change::Service(key, svc) => {
            Some((key.name.clone(), svc.as_ref().map(|s| s.ports[0].port)))
        }
        _ => None,
    }
}

pub fn watches(server: &ApiServer, kind: Kind) -> Vec<Request> {
    server
        .requests_for(kind)
        .into_iter()
        .filter(|r| r.is_watch())
        .collect()
}

pub async fn wait_for_watch(server: &ApiServer, kind: Kind) {
    eventually(&format!("an open {kind:?} watch"), WAIT, || async {
        expect_eq(server.open_watches(kind), 1)
    })
    .await;
}
