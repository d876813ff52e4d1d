//! The network layer: accepting connections and turning bytes into frames
//! (mini-redis's `server` + `connection`). Frames become typed requests in
//! [`crate::api`], which runs them against the shared [`Broker`] context.
//!
//! Shutdown (STYLE: "a broadcast plus a wait for every handler"): a `watch` flips to
//! true; the accept loop stops accepting, every connection stops reading new
//! requests, finishes and writes the ones in flight, and closes; [`Server::run`]
//! waits for all connections (bounded by `shutdown_timeout_ms`), then flushes every
//! partition.

pub mod connection;
pub mod framing;
pub mod write;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::clock::now_ms;
use crate::cluster::{Cluster, SelfRegistration};
use crate::config::Config;
use crate::context::Broker;
use crate::metrics::Metrics;
use crate::state::PartitionManager;
use crate::transport::{BrokerRegistrationInfo, Transport, TransportConfig};

/// A bound, not yet running, broker.
pub struct Server {
    listener: TcpListener,
    admin: Option<TcpListener>,
    broker: Arc<Broker>,
    shutdown_tx: watch::Sender<bool>,
}

impl Server {
    /// Opens the data directory and binds the client (and admin) ports.
    pub async fn bind(config: Config) -> Result<Server, Box<dyn std::error::Error>> {
        let config = Arc::new(config);
        let manager = {
            let config = Arc::clone(&config);
            tokio::task::spawn_blocking(move || PartitionManager::open(config)).await??
        };
        // Serve once every partition's group has elected itself (a client's first
        // request after a restart then finds leaders).
        let partitions: Vec<_> = manager
            .all_partitions()
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        manager.wait_leaders(&partitions).await;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("cannot listen on {} (key `listen`): {e}", config.listen))?;
        let local = listener.local_addr()?;
        let admin = match config.admin_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("cannot listen on {addr} (key `admin_listen`): {e}"))?,
            ),
            None => None,
        };
        let (advertised_host, advertised_port) = match &config.advertised_listen {
            Some(text) => {
                let (host, port) = text.rsplit_once(':').expect("validated at load");
                (
                    host.to_string(),
                    port.parse::<i32>().expect("validated at load"),
                )
            }
            // A wildcard address is no place a client can connect to; the operator
            // must say which name to advertise.
            None if local.ip().is_unspecified() => {
                return Err(format!(
                    "`listen` is {local}, a wildcard address: set `advertised_listen` \
                     to the host:port clients should connect to"
                )
                .into())
            }
            None => (local.ip().to_string(), i32::from(local.port())),
        };
        let manager = Arc::new(manager);
        if !config.controller_voters.is_empty() {
            join_cluster(&config, &manager, &advertised_host, advertised_port).await?;
        }
        let (shutdown_tx, shutdown) = watch::channel(false);
        let groups = crate::group::GroupCoordinator::new(
            Arc::clone(&config),
            Arc::clone(&manager),
            shutdown.clone(),
        );
        groups.start();
        Ok(Server {
            listener,
            admin,
            broker: Arc::new(Broker {
                config,
                manager,
                groups,
                advertised_host,
                advertised_port,
                shutdown,
            }),
            shutdown_tx,
        })
    }

    /// The bound client address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// In a cluster: becomes `Some(reason)` once this process may no longer speak for
    /// its node id (a duplicate of a live broker, or a stale incarnation); the caller
    /// should stop the broker with that reason. `None` on a single node.
    pub fn fenced(&self) -> Option<watch::Receiver<Option<String>>> {
        self.broker.manager.cluster().map(|c| c.fenced())
    }

    /// The bound admin address, if the admin port is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `signal` completes, then shuts down gracefully.
    pub async fn run(self, signal: impl std::future::Future<Output = ()>) -> std::io::Result<()> {
        let Server {
            listener,
            admin,
            broker,
            shutdown_tx,
        } = self;
        let config = Arc::clone(&broker.config);
        let mut background = JoinSet::new();
        if let Some(admin) = admin {
            background.spawn(crate::admin::serve(admin, Arc::clone(&broker)));
        }
        background.spawn(retention_loop(Arc::clone(&broker)));
        // One data directory, one cleaner thread (ends when the manager is dropped).
        crate::cleaner::spawn(
            Arc::downgrade(&broker.manager),
            crate::cleaner::CleanerConfig::from(&*broker.config),
        )?;

        let limit = Arc::new(Semaphore::new(config.connections_max));
        let per_ip = Arc::new(ConnectionsPerIp::default());
        let request_budget = Arc::new(Semaphore::new(config.queued_request_max_bytes));
        let frame_pool = framing::FramePool::with_metrics(Arc::clone(&broker.manager.metrics));
        let mut connections = JoinSet::new();
        let mut shutdown = broker.shutdown.clone();
        tokio::pin!(signal);
        loop {
            tokio::select! {
                _ = &mut signal => break,
                _ = shutdown.changed() => break,
                accepted = listener.accept() => {
                    let (socket, peer) = match accepted {
                        Ok(pair) => pair,
                        Err(e) => {
                            // Out of file descriptors and the like: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
                        Metrics::add(&broker.metrics().connections_refused_total, 1);
                        tracing::warn!(%peer, limit = config.connections_max, "connection refused: connections_max reached");
                        drop(socket);
                        continue;
                    };
                    let Some(ip_slot) = per_ip.try_add(peer.ip(), config.connections_max_per_ip) else {
                        Metrics::add(&broker.metrics().connections_refused_total, 1);
                        tracing::warn!(%peer, limit = config.connections_max_per_ip, "connection refused: connections_max_per_ip reached");
                        drop(socket);
                        continue;
                    };
                    Metrics::add(&broker.metrics().connections_total, 1);
                    let _ = socket.set_nodelay(true);
                    let span = tracing::info_span!("conn", %peer);
                    let broker = Arc::clone(&broker);
                    let request_budget = Arc::clone(&request_budget);
                    let frame_pool = Arc::clone(&frame_pool);
                    connections.spawn(async move {
                        connection::serve(socket, broker, request_budget, frame_pool).await;
                        drop(ip_slot);
                        drop(permit);
                    }.instrument(span));
                    // Reap finished connection tasks so the set does not grow.
                    while connections.try_join_next().is_some() {}
                }
            }
        }
        tracing::info!("shutting down: handing off leaderships, then finishing in-flight requests");
        drop(listener);
        // Controlled shutdown: other brokers take over this one's leaderships while it
        // still answers (requests for moved partitions get NOT_LEADER_OR_FOLLOWER and
        // clients go to the new leader), instead of after an election timeout.
        if let Some(cluster) = broker.manager.cluster() {
            cluster.hand_off_leaderships(HAND_OFF_TIMEOUT).await;
        }
        let _ = shutdown_tx.send(true);
        let grace = Duration::from_millis(config.shutdown_timeout_ms);
        if tokio::time::timeout(grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!(
                remaining = connections.len(),
                "shutdown_timeout_ms elapsed; abandoning connections"
            );
            connections.abort_all();
        }
        background.abort_all();
        match broker.manager.shutdown().await {
            Ok(()) => tracing::info!("flushed every partition; bye"),
            Err(e) => {
                tracing::error!(error = %e, "final flush failed");
                return Err(std::io::Error::other(e.to_string()));
            }
        }
        Ok(())
    }
}

/// Starts the inter-broker transport, connects the replica engine to it, and opens
/// this broker's replica of the metadata group (see [`crate::cluster`]).
async fn join_cluster(
    config: &Config,
    manager: &Arc<PartitionManager>,
    advertised_host: &str,
    advertised_port: i32,
) -> Result<(), Box<dyn std::error::Error>> {
    let peers: HashMap<i32, SocketAddr> = config
        .controller_voters
        .iter()
        .filter(|(id, _)| *id != config.node_id)
        .copied()
        .collect();
    let (inbound_tx, inbound_rx) = tokio::sync::mpsc::channel(INBOUND_BATCHES_MAX);
    // Peers learn from the handshake where clients reach this broker; the controller
    // registers what it hears (and registers itself with the same record).
    let registration = BrokerRegistrationInfo {
        client_host: advertised_host.to_string(),
        client_port: u16::try_from(advertised_port)?,
        // A broker outside `controller_voters` is reached at the address it announces.
        inter_broker_host: config.inter_broker_listen.ip().to_string(),
        inter_broker_port: config.inter_broker_listen.port(),
        rack: None,
        incarnation_id: BrokerRegistrationInfo::random_incarnation_id(),
    };
    let transport_config = TransportConfig::new(
        config.node_id,
        manager.cluster_id.clone(),
        config.inter_broker_listen,
    )
    .with_registration(registration.clone());
    let transport = Arc::new(
        Transport::start(transport_config, peers, inbound_tx)
            .await
            .map_err(|e| {
                format!(
                    "cannot start the inter-broker transport on {} (key `inter_broker_listen`): {e}",
                    config.inter_broker_listen
                )
            })?,
    );
    manager.engine.connect(Arc::clone(&transport), inbound_rx)?;
    let me = SelfRegistration {
        broker_id: config.node_id,
        registration,
        inter_broker: transport.local_addr(),
    };
    let cluster = crate::runtime::off_runtime(|| {
        Cluster::start(Arc::clone(manager), Arc::clone(&transport), me)
    })?;
    manager.set_cluster(cluster);
    tracing::info!(
        inter_broker = %transport.local_addr(),
        voters = ?config.controller_voters,
        "joined the cluster"
    );
    Ok(())
}

/// Received frames of peer messages waiting for the engine's inbound thread.
const INBOUND_BATCHES_MAX: usize = 1024;
/// How long controlled shutdown waits for this broker's leaderships to move.
const HAND_OFF_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections being served per peer IP address (`connections_max_per_ip`).
#[derive(Debug, Default)]
struct ConnectionsPerIp {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in [`ConnectionsPerIp`], given back when dropped.
struct IpSlot {
    owner: Arc<ConnectionsPerIp>,
    ip: IpAddr,
}

impl ConnectionsPerIp {
    /// A slot for one more connection from `ip`, or `None` if it has `max` already.
    fn try_add(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            owner: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            // Forget addresses with no connection, so the map is bounded by connections_max.
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Applies retention every `retention_check_interval_ms`.
async fn retention_loop(broker: Arc<Broker>) {
    let period = Duration::from_millis(broker.config.retention_check_interval_ms);
    let mut ticker = tokio::time::interval(period);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let manager = Arc::clone(&broker.manager);
        let now_ms = now_ms();
        let _ = tokio::task::spawn_blocking(move || manager.apply_retention(now_ms)).await;
    }
}
