//! The Kubernetes API source: kube-rs watchers for Services, EndpointSlices, this node's Node and
//! the ServiceCIDRs, each object passed through `model::validate`, relists turned into
//! differences (`relist`).
//!
//! Invariants: only validated objects are sent. A rejected object is treated as absent: if it
//! was valid before, a delete is sent, so the model is always what a freshly started kproxy would
//! build from the API server's current contents (state never depends on history). Each rejection
//! is logged and counted once per resourceVersion. Watcher errors are retried after `backoff`'s
//! wait (client-go's 0.8 s doubling to 30 s, at once for a first 410) and logged as `trouble`
//! says (a warning per streak, a reminder a minute); the streams never end. A relist, read in
//! pages of 500, forwards each object as it reads it and deletes only what a complete list did
//! not contain (`relist`): never a flush, and no second copy of the cluster while it runs.
//! Lists use kube's default `MostRecent` semantic (a consistent read), so a relist after a 410
//! cannot briefly resurrect deleted objects from a stale watch cache.
//! Every request (list page, watch) first takes a token of the client-side rate limit
//! (`--kube-api-qps`, `--kube-api-burst`; `ratelimit`), as client-go's requests do.

mod backoff;
pub mod ratelimit;
mod relist;
#[cfg(test)]
mod tests;
mod trouble;

use std::fmt::{Debug, Display};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::config::{InClusterError, KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Config, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use super::{Change, ChangeTx, Kind};
use crate::metrics::Metrics;
use crate::model::{NamespacedName, NodeInfo, Service, Slice, validate};
use backoff::Backoff;
use relist::{Input, Relist, Seen};
use trouble::{Class, Report, Streak};

/// Upstream's selector for Services and EndpointSlices: skip objects owned by another proxy and
/// headless Services' slices.
pub const LABEL_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// Upstream's field selector for Services (k/k#126769): headless Services are not even sent.
pub const SERVICE_FIELD_SELECTOR: &str = "spec.clusterIP!=None";

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("reading kubeconfig {path}: {source}")]
    ReadKubeconfig {
        path: PathBuf,
        source: KubeconfigError,
    },
    #[error("loading kubeconfig {path}: {source}")]
    LoadKubeconfig {
        path: PathBuf,
        source: KubeconfigError,
    },
    #[error("parsing --master {url:?}: {source}")]
    ParseMaster {
        url: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("loading in-cluster config (neither --kubeconfig nor --master given): {0}")]
    InClusterConfig(#[source] InClusterError),
    #[error("building the API client: {0}")]
    BuildClient(#[source] kube::Error),
}

/// The API client, as upstream's `BuildConfigFromFlags`: `--kubeconfig` (its server replaced
/// by `--master` when both are given), `--master` alone (that URL, no credentials), or the
/// in-cluster config when neither is given. No rate limit (`client_with` sets one).
pub async fn client(kubeconfig: Option<&Path>, master: Option<&str>) -> Result<Client, KubeError> {
    client_with(kubeconfig, master, None).await
}

/// `client`, with every request first taking a token from a bucket of `burst` tokens refilled
/// at `qps` a second, when `rate_limit` is `Some((qps, burst))` (`ratelimit`).
pub async fn client_with(
    kubeconfig: Option<&Path>,
    master: Option<&str>,
    rate_limit: Option<(f64, u32)>,
) -> Result<Client, KubeError> {
    let config = config(kubeconfig, master).await?;
    let builder = kube::client::ClientBuilder::try_from(config).map_err(KubeError::BuildClient)?;
    Ok(match rate_limit {
        Some((qps, burst)) => builder
            .with_layer(&ratelimit::RateLimitLayer::new(qps, burst))
            .build(),
        None => builder.build(),
    })
}

async fn config(kubeconfig: Option<&Path>, master: Option<&str>) -> Result<Config, KubeError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|source| KubeError::ReadKubeconfig {
                path: path.into(),
                source,
            })?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| KubeError::LoadKubeconfig {
                    path: path.into(),
                    source,
                })?
        }
        None => match master {
            Some(url) => Config::new(parse_master(url)?),
            None => Config::incluster().map_err(KubeError::InClusterConfig)?,
        },
    };
    if let (Some(_), Some(url)) = (kubeconfig, master) {
        config.cluster_url = parse_master(url)?;
    }
    Ok(config)
}

/// Parses `--master` into whatever URI type the kube config wants (generic so that kproxy need
/// not depend on the `http` crate to name it).
fn parse_master<U>(url: &str) -> Result<U, KubeError>
where
    U: std::str::FromStr,
    U::Err: std::error::Error + Send + Sync + 'static,
{
    url.parse().map_err(|e: U::Err| KubeError::ParseMaster {
        url: url.into(),
        source: Box::new(e),
    })
}

/// Watches Services, EndpointSlices and the Node `node_name` until the receiver of `tx` is gone.
pub async fn run(client: Client, node_name: String, tx: ChangeTx, metrics: Arc<Metrics>) {
    let labels = watcher::Config::default().labels(LABEL_SELECTOR);
    let node = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    tokio::join!(
        watch::<K8sService>(
            Api::all(client.clone()),
            labels.clone().fields(SERVICE_FIELD_SELECTOR),
            &tx,
            &metrics
        ),
        watch::<EndpointSlice>(Api::all(client.clone()), labels, &tx, &metrics),
        watch::<Node>(Api::all(client.clone()), node, &tx, &metrics),
        watch::<ServiceCIDR>(Api::all(client), watcher::Config::default(), &tx, &metrics),
    );
}

/// How one watched kind maps onto model changes.
trait Watched: Resource + Clone + DeserializeOwned + Debug + Send + 'static {
    type Key: Ord + Clone + Display;
    type Value;
    const KIND: Kind;
    fn key(&self) -> Self::Key;
    fn convert(&self) -> Seen<Self::Value>;
    fn change(key: Self::Key, value: Option<Self::Value>) -> Change;
}

fn namespaced_key<K: Resource>(obj: &K) -> NamespacedName {
    NamespacedName::new(obj.namespace().unwrap_or_default(), obj.name_any())
}

fn seen<V>(result: Result<Option<V>, validate::Rejection>) -> Seen<V> {
    match result {
        Ok(Some(v)) => Seen::Valid(v),
        Ok(None) => Seen::Ignored,
        Err(why) => Seen::Rejected(why),
    }
}

impl Watched for K8sService {
    type Key = NamespacedName;
    type Value = Service;
    const KIND: Kind = Kind::Services;
    fn key(&self) -> NamespacedName {
        namespaced_key(self)
    }
    fn convert(&self) -> Seen<Service> {
        seen(validate::service(self))
    }
    fn change(key: NamespacedName, value: Option<Service>) -> Change {
        Change::Service(key, value.map(Arc::new))
    }
}

impl Watched for EndpointSlice {
    type Key = NamespacedName;
    type Value = Slice;
    const KIND: Kind = Kind::EndpointSlices;
    fn key(&self) -> NamespacedName {
        namespaced_key(self)
    }
    fn convert(&self) -> Seen<Slice> {
        seen(validate::endpoint_slice(self).map(|found| found.map(|(_, slice)| slice)))
    }
    fn change(key: NamespacedName, value: Option<Slice>) -> Change {
        Change::Slice(key, value.map(Arc::new))
    }
}

impl Watched for ServiceCIDR {
    type Key = String;
    type Value = Vec<ipnet::IpNet>;
    const KIND: Kind = Kind::ServiceCidrs;
    fn key(&self) -> String {
        self.name_any()
    }
    fn convert(&self) -> Seen<Vec<ipnet::IpNet>> {
        seen(validate::service_cidr(self).map(|(_, cidrs)| Some(cidrs)))
    }
    fn change(name: String, value: Option<Vec<ipnet::IpNet>>) -> Change {
        Change::ServiceCidr(name, value)
    }
}

impl Watched for Node {
    type Key = String;
    type Value = NodeInfo;
    const KIND: Kind = Kind::Nodes;
    fn key(&self) -> String {
        self.name_any()
    }
    fn convert(&self) -> Seen<NodeInfo> {
        seen(validate::node(self).map(Some))
    }
    fn change(_: String, value: Option<NodeInfo>) -> Change {
        Change::Node(value)
    }
}

fn input<K: Watched>(event: Event<K>) -> Input<K::Key, K::Value> {
    match event {
        Event::Init => Input::Init,
        Event::InitApply(obj) => Input::InitApply(obj.key(), obj.resource_version(), obj.convert()),
        Event::InitDone => Input::InitDone,
        Event::Apply(obj) => Input::Apply(obj.key(), obj.resource_version(), obj.convert()),
        Event::Delete(obj) => Input::Delete(obj.key()),
    }
}

/// One kind's watch loop; returns only when the change receiver is gone.
async fn watch<K: Watched>(api: Api<K>, config: watcher::Config, tx: &ChangeTx, metrics: &Metrics) {
    let mut state = Relist::<K::Key, K::Value>::default();
    let mut streak = Streak::default();
    let mut backoff = Backoff::default();
    let mut events = pin!(watcher::watcher(api, config));
    while let Some(item) = events.next().await {
        let event = match item {
            Ok(event) => event,
            Err(error) => {
                let class = Class::of(&error);
                report::<K>(&mut streak, class, &error);
                // The watcher is lazy: not polling it is the wait.
                let wait = match class {
                    Class::NotServed => trouble::NOT_SERVED_RETRY,
                    _ => backoff.after(class, std::time::Instant::now(), backoff::draw()),
                };
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        if matches!(event, Event::Apply(_) | Event::Delete(_)) {
            backoff.reset();
        }
        // `Init` comes before every list attempt, also those that fail: it ends no streak.
        if matches!(event, Event::Init) {
            debug!(kind = ?K::KIND, "listing");
        } else if let Some((failures, lasted)) = streak.succeeded(std::time::Instant::now()) {
            info!(kind = ?K::KIND, failures, lasted = ?lasted, "receiving again");
        }
        let out = state.step(input(event));
        for (key, why) in out.rejected {
            warn!(kind = ?K::KIND, object = %key, reason = why.reason.as_str(), detail = %why.detail,
                "object rejected; treated as absent");
            metrics.reject(why.reason);
        }
        for (key, value) in out.changes {
            if tx.send(K::change(key, value)).is_err() {
                return;
            }
        }
        if out.listed && tx.send(Change::Listed(K::KIND)).is_err() {
            return;
        }
    }
}

/// Logs one watch failure as `trouble` says: a warning for the first of a streak, a reminder a
/// minute, debug in between.
fn report<K: Watched>(streak: &mut Streak, class: Class, error: &watcher::Error) {
    let meaning = class.meaning();
    let error = trouble::describe(error);
    match streak.failed(class, std::time::Instant::now()) {
        Report::Routine => info!(kind = ?K::KIND, %error, "{meaning}"),
        Report::First => warn!(kind = ?K::KIND, %error, "watch failed: {meaning}"),
        Report::Repeat { failures, since } if class != Class::NotServed => {
            warn!(kind = ?K::KIND, %error, failures, since = ?since, "watch still failing: {meaning}")
        }
        Report::Repeat { .. } => debug!(kind = ?K::KIND, %error, "still not served"),
        Report::Quiet => debug!(kind = ?K::KIND, %error, "watch failed again"),
    }
}
