//! The shared broker context: what every request handler can reach ([`Broker`]),
//! and the order in which a connection's requests take effect ([`order`]).
//!
//! Both the network layer ([`crate::server`], which builds the context and hands
//! each request its turn) and the handlers ([`crate::api`]) depend on this module;
//! it depends on neither.

pub mod order;

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Config;
use crate::group::GroupCoordinator;
use crate::metrics::Metrics;
use crate::state::PartitionManager;

/// What every request handler can reach.
#[derive(Debug)]
pub struct Broker {
    /// The configuration.
    pub config: Arc<Config>,
    /// Topics and partitions.
    pub manager: Arc<PartitionManager>,
    /// The consumer-group coordinator.
    pub groups: Arc<GroupCoordinator>,
    /// Host and port Metadata advertises.
    pub advertised_host: String,
    /// Port Metadata advertises.
    pub advertised_port: i32,
    /// Flips to true when the broker is shutting down (long polls return early).
    pub shutdown: watch::Receiver<bool>,
}

impl Broker {
    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.manager.metrics
    }
}
