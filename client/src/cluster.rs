//! The cluster view shared by one producer, consumer or admin: connections by broker
//! id and a metadata cache.
//!
//! Metadata is refreshed when it is older than `metadata_max_age_ms`, when a topic is
//! missing, and whenever a caller reports an error that says it is stale
//! ([`Error::invalidates_metadata`]: NOT_LEADER_OR_FOLLOWER, UNKNOWN_TOPIC_OR_PARTITION,
//! a lost connection, …). Concurrent refreshes collapse into one.

use rill_protocol::decode::Decode;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::{Request, StrBytes};
use tokio::sync::Mutex as AsyncMutex;

use crate::config::ClientConfig;
use crate::conn::Connection;
use crate::error::{Error, Result};

/// One broker's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    /// Broker id.
    pub node_id: i32,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: i32,
    /// Rack, if configured.
    pub rack: Option<String>,
}

impl BrokerInfo {
    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// One partition's placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition index.
    pub partition: i32,
    /// Leader broker id, `-1` while there is none.
    pub leader: i32,
    /// Leader epoch.
    pub leader_epoch: i32,
    /// Replica broker ids.
    pub replicas: Vec<i32>,
    /// In-sync replica broker ids.
    pub isr: Vec<i32>,
    /// Kafka error code for this partition (0 = none).
    pub error_code: i16,
}

/// One topic's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Topic name.
    pub name: String,
    /// Whether the topic is internal (e.g. `__consumer_offsets`).
    pub is_internal: bool,
    /// Partitions, indexed by partition number.
    pub partitions: Vec<PartitionInfo>,
}

/// A snapshot of cluster metadata.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    /// Cluster id, if the broker reports one.
    pub cluster_id: Option<String>,
    /// Controller broker id (`-1` if unknown).
    pub controller_id: i32,
    /// Brokers by id.
    pub brokers: HashMap<i32, BrokerInfo>,
    /// Topics by name (only topics that exist; errors are not cached).
    pub topics: HashMap<String, TopicInfo>,
}

impl Metadata {
    fn from_response(response: MetadataResponse) -> (Metadata, Vec<(String, i16)>) {
        let mut metadata = Metadata {
            cluster_id: response.cluster_id.map(|s| s.to_string()),
            controller_id: response.controller_id.0,
            ..Metadata::default()
        };
        for b in response.brokers {
            metadata.brokers.insert(
                b.node_id.0,
                BrokerInfo {
                    node_id: b.node_id.0,
                    host: b.host.to_string(),
                    port: b.port,
                    rack: b.rack.map(|r| r.to_string()),
                },
            );
        }
        let mut errors = Vec::new();
        for t in response.topics {
            let Some(name) = t.name else { continue };
            let name = name.0.to_string();
            if t.error_code != 0 {
                errors.push((name, t.error_code));
                continue;
            }
            let mut partitions: Vec<PartitionInfo> = t
                .partitions
                .into_iter()
                .map(|p| PartitionInfo {
                    partition: p.partition_index,
                    leader: p.leader_id.0,
                    leader_epoch: p.leader_epoch,
                    replicas: p.replica_nodes.iter().map(|r| r.0).collect(),
                    isr: p.isr_nodes.iter().map(|r| r.0).collect(),
                    error_code: p.error_code,
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            // A topic whose partition list has holes is not usable by index; skip it
            // (it will be refreshed) rather than misroute records.
            if partitions
                .iter()
                .enumerate()
                .any(|(i, p)| p.partition != i as i32)
            {
                errors.push((name, 0));
                continue;
            }
            metadata.topics.insert(
                name.clone(),
                TopicInfo {
                    name,
                    is_internal: t.is_internal,
                    partitions,
                },
            );
        }
        (metadata, errors)
    }
}

struct Cache {
    metadata: Arc<Metadata>,
    fetched_at: Option<Instant>,
    /// Bumped on every completed refresh; lets waiters see that someone else refreshed.
    generation: u64,
    /// Topics callers asked about; every refresh asks for all of them.
    wanted_topics: BTreeSet<String>,
    stale: bool,
}

/// Connections and metadata for one client instance.
pub(crate) struct Cluster {
    pub(crate) config: ClientConfig,
    cache: StdMutex<Cache>,
    /// Serializes refreshes so concurrent callers share one Metadata request.
    refresh_lock: AsyncMutex<()>,
    connections: AsyncMutex<HashMap<String, Arc<Connection>>>,
    allow_auto_topic_creation: bool,
    /// The cache's `generation`, readable without its lock: a caller that remembers
    /// something derived from a snapshot (the producer's partition counts) knows it is
    /// still current while this has not moved.
    published_generation: AtomicU64,
}

impl Cluster {
    pub(crate) fn new(config: ClientConfig, allow_auto_topic_creation: bool) -> Result<Cluster> {
        config.validate()?;
        Ok(Cluster {
            config,
            cache: StdMutex::new(Cache {
                metadata: Arc::new(Metadata::default()),
                fetched_at: None,
                generation: 0,
                wanted_topics: BTreeSet::new(),
                stale: true,
            }),
            refresh_lock: AsyncMutex::new(()),
            connections: AsyncMutex::new(HashMap::new()),
            allow_auto_topic_creation,
            published_generation: AtomicU64::new(0),
        })
    }

    /// The current metadata snapshot, refreshed first if stale or too old.
    pub(crate) async fn metadata(&self) -> Result<Arc<Metadata>> {
        let (needs, generation) = {
            let cache = self.cache.lock().unwrap();
            let too_old = cache.fetched_at.is_none_or(|t| {
                t.elapsed() > Duration::from_millis(self.config.metadata_max_age_ms)
            });
            (cache.stale || too_old, cache.generation)
        };
        if needs {
            self.refresh(generation).await?;
        }
        Ok(self.cache.lock().unwrap().metadata.clone())
    }

    /// The cached snapshot without any refresh.
    pub(crate) fn cached(&self) -> Arc<Metadata> {
        self.cache.lock().unwrap().metadata.clone()
    }

    /// The generation of the metadata snapshot (it moves with every refresh).
    pub(crate) fn generation(&self) -> u64 {
        self.published_generation.load(Ordering::Acquire)
    }

    /// The partition count of `topic` in the cached snapshot, if it is there (no
    /// snapshot clone).
    pub(crate) fn cached_partition_count(&self, topic: &str) -> Option<i32> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .metadata
            .topics
            .get(topic)
            .map(|t| t.partitions.len() as i32)
    }

    /// Marks metadata stale; the next [`Cluster::metadata`] refreshes it.
    pub(crate) fn invalidate(&self) {
        self.cache.lock().unwrap().stale = true;
    }

    /// Metadata for `topic`, refreshing (and, if allowed, auto-creating) until it exists
    /// or `wait` passes.
    pub(crate) async fn topic(&self, topic: &str, wait: Duration) -> Result<Arc<Metadata>> {
        let deadline = Instant::now() + wait;
        let mut attempt = 0;
        loop {
            {
                let mut cache = self.cache.lock().unwrap();
                if !cache.wanted_topics.contains(topic) {
                    cache.wanted_topics.insert(topic.to_owned());
                    cache.stale = true;
                }
            }
            let metadata = self.metadata().await;
            match metadata {
                Ok(m) if m.topics.contains_key(topic) => return Ok(m),
                Ok(_) => {}
                Err(e) if e.is_retriable() => {}
                Err(e) => return Err(e),
            }
            attempt += 1;
            if Instant::now() >= deadline {
                return Err(Error::UnknownTopic(topic.to_owned()));
            }
            self.invalidate();
            tokio::time::sleep(self.config.backoff(attempt)).await;
        }
    }

    /// Refreshes metadata unless another refresh completed after `seen_generation`.
    async fn refresh(&self, seen_generation: u64) -> Result<()> {
        let _guard = self.refresh_lock.lock().await;
        let topics: Vec<String> = {
            let cache = self.cache.lock().unwrap();
            if cache.generation != seen_generation && !cache.stale {
                return Ok(());
            }
            cache.wanted_topics.iter().cloned().collect()
        };
        let request = MetadataRequest::default()
            .with_topics(Some(
                topics
                    .iter()
                    .map(|t| {
                        MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string(t.clone()))))
                    })
                    .collect(),
            ))
            .with_allow_auto_topic_creation(self.allow_auto_topic_creation);
        let response = self.request_any(&request).await?;
        let (metadata, errors) = Metadata::from_response(response);
        for (topic, code) in errors {
            tracing::debug!(%topic, code, "metadata reports topic error");
        }
        let mut cache = self.cache.lock().unwrap();
        cache.metadata = Arc::new(metadata);
        cache.fetched_at = Some(Instant::now());
        cache.generation += 1;
        self.published_generation
            .store(cache.generation, Ordering::Release);
        cache.stale = false;
        Ok(())
    }

    /// Metadata for every topic in the cluster (does not change the cache's topic set).
    pub(crate) async fn all_topics(&self) -> Result<Metadata> {
        let request = MetadataRequest::default()
            .with_topics(None)
            .with_allow_auto_topic_creation(false);
        let response = self.request_any(&request).await?;
        Ok(Metadata::from_response(response).0)
    }

    /// Sends `request` to any reachable broker: known brokers first, then bootstrap
    /// addresses.
    pub(crate) async fn request_any<R: Request>(&self, request: &R) -> Result<R::Response>
    where
        R::Response: Decode,
    {
        let conn = self.any_connection().await?;
        let result = conn.request(request).await;
        if let Err(e) = &result {
            if e.invalidates_metadata() {
                self.invalidate();
            }
        }
        result
    }

    /// A connection to any reachable broker.
    pub(crate) async fn any_connection(&self) -> Result<Arc<Connection>> {
        let mut candidates: Vec<String> = Vec::new();
        {
            let cache = self.cache.lock().unwrap();
            candidates.extend(cache.metadata.brokers.values().map(BrokerInfo::addr));
        }
        for b in &self.config.bootstrap_servers {
            if !candidates.contains(b) {
                candidates.push(b.clone());
            }
        }
        // Prefer an already open connection.
        {
            let conns = self.connections.lock().await;
            for addr in &candidates {
                if let Some(c) = conns.get(addr) {
                    if !c.is_broken() {
                        return Ok(c.clone());
                    }
                }
            }
        }
        let mut last_error = None;
        for addr in &candidates {
            match self.connection_to(addr).await {
                Ok(c) => return Ok(c),
                Err(e) => last_error = Some(e),
            }
        }
        Err(Error::NoBrokerReachable {
            tried: candidates.join(","),
            last_error: last_error.map_or_else(|| "no address".to_owned(), |e| e.to_string()),
        })
    }

    /// A connection to broker `node_id` (by the cached metadata).
    pub(crate) async fn broker_connection(&self, node_id: i32) -> Result<Arc<Connection>> {
        let addr = {
            let cache = self.cache.lock().unwrap();
            cache.metadata.brokers.get(&node_id).map(BrokerInfo::addr)
        };
        match addr {
            Some(addr) => self.connection_to(&addr).await,
            None => {
                self.invalidate();
                Err(Error::Broker {
                    code: kafka_protocol::error::ResponseError::LeaderNotAvailable,
                    message: Some(format!("broker {node_id} not in metadata")),
                })
            }
        }
    }

    /// The open connection to `addr`, or a new one if there is none or it broke.
    pub(crate) async fn connection_to(&self, addr: &str) -> Result<Arc<Connection>> {
        let mut conns = self.connections.lock().await;
        if let Some(c) = conns.get(addr) {
            if !c.is_broken() {
                return Ok(c.clone());
            }
            conns.remove(addr);
            // A broken connection means leaders may have moved.
            self.invalidate();
        }
        let conn = Arc::new(Connection::connect(addr, &self.config).await?);
        conns.insert(addr.to_owned(), conn.clone());
        Ok(conn)
    }

    /// Reports a failed request: stale-metadata errors mark the cache for refresh.
    pub(crate) fn observe_error(&self, error: &Error) {
        if error.invalidates_metadata() {
            self.invalidate();
        }
    }
}
