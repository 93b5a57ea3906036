//! kproxy: a kube-proxy dataplane. Sources (`watch`) feed a model (`model`); the sync loop
//! (`sync`) plans every service port and hands the plans to a backend (`backends`).

pub mod alloc;
pub mod backends;
pub mod config;
pub mod conntrack;
pub mod explain;
pub mod health;
pub mod instance;
pub mod logs;
pub mod metrics;
pub mod model;
pub mod netns;
pub mod nfnetlink;
pub mod nftables;
pub mod node;
pub mod own;
pub mod relay;
pub mod state;
pub mod sync;
#[cfg(test)]
pub(crate) mod testing;
pub mod watch;
