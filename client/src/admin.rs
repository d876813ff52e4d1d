//! Cluster administration: topics, partitions, configs, cluster description, and
//! consumer groups ([`groups`]).

pub mod groups;
mod lag;

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreateTopicsRequest, DeleteRecordsRequest, DeleteTopicsRequest,
    DescribeClusterRequest, DescribeConfigsRequest, IncrementalAlterConfigsRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::cluster::{BrokerInfo, Cluster, TopicInfo};
use crate::config::ClientConfig;
use crate::conn::Connection;
use crate::error::{Error, Result};

/// A topic to create.
#[derive(Debug, Clone)]
pub struct NewTopic {
    /// Topic name.
    pub name: String,
    /// Partition count; `-1` takes the broker's default.
    pub partitions: i32,
    /// Replication factor; `-1` takes the broker's default.
    pub replication_factor: i16,
    /// Topic configs (`retention.ms`, `cleanup.policy`, …).
    pub configs: BTreeMap<String, String>,
}

impl NewTopic {
    /// A topic with `partitions` partitions and the broker's default replication factor.
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        NewTopic {
            name: name.into(),
            partitions,
            replication_factor: -1,
            configs: BTreeMap::new(),
        }
    }

    /// Adds a topic config.
    pub fn with_config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.configs.insert(key.into(), value.into());
        self
    }
}

/// One config entry as the broker describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    /// Config key.
    pub name: String,
    /// Value (`None` when sensitive or unset).
    pub value: Option<String>,
    /// Whether the value cannot be changed.
    pub read_only: bool,
    /// Whether the value was left at its default (Kafka's config source 5 or the
    /// v0 `is_default` flag).
    pub is_default: bool,
    /// Whether the value is sensitive (and therefore hidden).
    pub is_sensitive: bool,
}

/// The cluster as DescribeCluster reports it.
#[derive(Debug, Clone)]
pub struct ClusterDescription {
    /// Cluster id.
    pub cluster_id: String,
    /// Controller broker id.
    pub controller_id: i32,
    /// Brokers.
    pub brokers: Vec<BrokerInfo>,
}

/// Administrative operations.
///
/// ```no_run
/// # async fn demo() -> Result<(), rill_client::Error> {
/// use rill_client::{Admin, ClientConfig, NewTopic};
/// let admin = Admin::new(ClientConfig::new("127.0.0.1:9092"))?;
/// admin.create_topics(&[NewTopic::new("events", 8)]).await?;
/// for topic in admin.list_topics().await? {
///     println!("{topic}");
/// }
/// # Ok(()) }
/// ```
pub struct Admin {
    pub(crate) cluster: Arc<Cluster>,
}

/// Per-operation server-side timeout sent in admin requests.
const ADMIN_OPERATION_TIMEOUT_MS: i32 = 30_000;

impl Admin {
    /// An admin client; connects lazily on the first call.
    pub fn new(config: ClientConfig) -> Result<Admin> {
        Ok(Admin {
            cluster: Arc::new(Cluster::new(config, false)?),
        })
    }

    /// The connection to the controller if metadata names one, else any broker.
    pub(crate) async fn controller(&self) -> Result<Arc<Connection>> {
        let metadata = self.cluster.metadata().await?;
        if metadata.controller_id >= 0 && metadata.brokers.contains_key(&metadata.controller_id) {
            if let Ok(conn) = self.cluster.broker_connection(metadata.controller_id).await {
                return Ok(conn);
            }
        }
        self.cluster.any_connection().await
    }

    /// Creates topics. Fails with the first per-topic error (e.g.
    /// `TOPIC_ALREADY_EXISTS`); topics before it in the list may have been created.
    pub async fn create_topics(&self, topics: &[NewTopic]) -> Result<()> {
        self.create_topics_inner(topics, false).await
    }

    /// Asks the broker to validate the creation without creating anything.
    pub async fn validate_create_topics(&self, topics: &[NewTopic]) -> Result<()> {
        self.create_topics_inner(topics, true).await
    }

    async fn create_topics_inner(&self, topics: &[NewTopic], validate_only: bool) -> Result<()> {
        let request = CreateTopicsRequest::default()
            .with_timeout_ms(ADMIN_OPERATION_TIMEOUT_MS)
            .with_validate_only(validate_only)
            .with_topics(
                topics
                    .iter()
                    .map(|t| {
                        CreatableTopic::default()
                            .with_name(topic_name(&t.name))
                            .with_num_partitions(t.partitions)
                            .with_replication_factor(t.replication_factor)
                            .with_configs(
                                t.configs
                                    .iter()
                                    .map(|(k, v)| {
                                        CreatableTopicConfig::default()
                                            .with_name(StrBytes::from_string(k.clone()))
                                            .with_value(Some(StrBytes::from_string(v.clone())))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        let response = self.controller().await?.request(&request).await?;
        self.cluster.invalidate();
        for t in &response.topics {
            if let Some(e) = Error::from_code(t.error_code, t.error_message.as_deref()) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Deletes topics by name.
    pub async fn delete_topics(&self, names: &[&str]) -> Result<()> {
        let conn = self.controller().await?;
        let version = conn.version_of::<DeleteTopicsRequest>()?;
        let mut request =
            DeleteTopicsRequest::default().with_timeout_ms(ADMIN_OPERATION_TIMEOUT_MS);
        // v6 names topics in `topics` (to allow ids); older versions in `topic_names`.
        if version >= 6 {
            request.topics = names
                .iter()
                .map(|n| DeleteTopicState::default().with_name(Some(topic_name(n))))
                .collect();
        } else {
            request.topic_names = names.iter().map(|n| topic_name(n)).collect();
        }
        let response = conn.request_at(&request, version).await?;
        self.cluster.invalidate();
        for t in &response.responses {
            if let Some(e) = Error::from_code(t.error_code, t.error_message.as_deref()) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Names of all topics, sorted.
    pub async fn list_topics(&self) -> Result<Vec<String>> {
        let metadata = self.cluster.all_topics().await?;
        let mut names: Vec<String> = metadata.topics.into_keys().collect();
        names.sort();
        Ok(names)
    }

    /// Partition placement of the named topics (all topics when `names` is empty),
    /// sorted by name. An unknown name is [`Error::UnknownTopic`].
    pub async fn describe_topics(&self, names: &[&str]) -> Result<Vec<TopicInfo>> {
        let metadata = self.cluster.all_topics().await?;
        let mut out = Vec::new();
        if names.is_empty() {
            out.extend(metadata.topics.into_values());
        } else {
            for name in names {
                match metadata.topics.get(*name) {
                    Some(t) => out.push(t.clone()),
                    None => return Err(Error::UnknownTopic((*name).to_owned())),
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Grows `topic` to `partition_count_total` partitions.
    pub async fn create_partitions(&self, topic: &str, partition_count_total: i32) -> Result<()> {
        let request = CreatePartitionsRequest::default()
            .with_timeout_ms(ADMIN_OPERATION_TIMEOUT_MS)
            .with_topics(vec![CreatePartitionsTopic::default()
                .with_name(topic_name(topic))
                .with_count(partition_count_total)]);
        let response = self.controller().await?.request(&request).await?;
        self.cluster.invalidate();
        for r in &response.results {
            if let Some(e) = Error::from_code(r.error_code, r.error_message.as_deref()) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// All configs of a topic, sorted by key.
    pub async fn describe_topic_configs(&self, topic: &str) -> Result<Vec<ConfigEntry>> {
        /// Kafka's ConfigResource.Type.TOPIC.
        const RESOURCE_TYPE_TOPIC: i8 = 2;
        /// Kafka's ConfigSource.DEFAULT_CONFIG.
        const CONFIG_SOURCE_DEFAULT: i8 = 5;
        let request = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(RESOURCE_TYPE_TOPIC)
                .with_resource_name(StrBytes::from_string(topic.to_owned()))
                .with_configuration_keys(None),
        ]);
        let response = self.cluster.request_any(&request).await?;
        let mut entries = Vec::new();
        for result in response.results {
            if let Some(e) = Error::from_code(result.error_code, result.error_message.as_deref()) {
                return Err(e);
            }
            for c in result.configs {
                entries.push(ConfigEntry {
                    name: c.name.to_string(),
                    value: c.value.map(|v| v.to_string()),
                    read_only: c.read_only,
                    is_default: c.config_source == CONFIG_SOURCE_DEFAULT,
                    is_sensitive: c.is_sensitive,
                });
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// Alters a topic's configs through IncrementalAlterConfigs at the controller: sets
    /// each `(key, value)` of `set` and returns each key of `delete` to its default; the
    /// other keys keep their values. An unknown key or a bad value is
    /// [`Error::Broker`] with INVALID_CONFIG naming the key.
    pub async fn alter_topic_configs(
        &self,
        topic: &str,
        set: &[(String, String)],
        delete: &[String],
    ) -> Result<()> {
        /// Kafka's ConfigResource.Type.TOPIC.
        const RESOURCE_TYPE_TOPIC: i8 = 2;
        /// Kafka's AlterConfigOp SET and DELETE.
        const OP_SET: i8 = 0;
        const OP_DELETE: i8 = 1;
        let mut configs: Vec<AlterableConfig> = set
            .iter()
            .map(|(k, v)| {
                AlterableConfig::default()
                    .with_name(StrBytes::from_string(k.clone()))
                    .with_config_operation(OP_SET)
                    .with_value(Some(StrBytes::from_string(v.clone())))
            })
            .collect();
        configs.extend(delete.iter().map(|k| {
            AlterableConfig::default()
                .with_name(StrBytes::from_string(k.clone()))
                .with_config_operation(OP_DELETE)
        }));
        let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(RESOURCE_TYPE_TOPIC)
                .with_resource_name(StrBytes::from_string(topic.to_owned()))
                .with_configs(configs),
        ]);
        let response = self.controller().await?.request(&request).await?;
        for r in &response.responses {
            if let Some(e) = Error::from_code(r.error_code, r.error_message.as_deref()) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Deletes the records of `topic`-`partition` below `offset` (DeleteRecords at the
    /// partition's leader; -1 means the high watermark). Returns the partition's new
    /// log start offset (its low watermark).
    pub async fn delete_records(&self, topic: &str, partition: i32, offset: i64) -> Result<i64> {
        let metadata = self
            .cluster
            .topic(topic, std::time::Duration::from_secs(5))
            .await?;
        let leader = metadata
            .topics
            .get(topic)
            .and_then(|t| t.partitions.get(partition as usize))
            .map(|p| p.leader)
            .filter(|l| *l >= 0)
            .ok_or_else(|| Error::UnknownTopic(format!("{topic}-{partition}")))?;
        let request = DeleteRecordsRequest::default()
            .with_timeout_ms(ADMIN_OPERATION_TIMEOUT_MS)
            .with_topics(vec![DeleteRecordsTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(vec![DeleteRecordsPartition::default()
                    .with_partition_index(partition)
                    .with_offset(offset)])]);
        let response = self
            .cluster
            .broker_connection(leader)
            .await?
            .request(&request)
            .await?;
        let answered = response
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == partition)
            .ok_or_else(|| Error::Protocol("DeleteRecords answered no partition".into()))?;
        match Error::from_code(answered.error_code, None) {
            Some(e) => Err(e),
            None => Ok(answered.low_watermark),
        }
    }

    /// Cluster id, controller and brokers. Uses DescribeCluster where the broker supports
    /// it, else Metadata.
    pub async fn describe_cluster(&self) -> Result<ClusterDescription> {
        let conn = self.cluster.any_connection().await?;
        if conn.version_of::<DescribeClusterRequest>().is_ok() {
            let response = conn.request(&DescribeClusterRequest::default()).await?;
            if let Some(e) =
                Error::from_code(response.error_code, response.error_message.as_deref())
            {
                return Err(e);
            }
            let mut brokers: Vec<BrokerInfo> = response
                .brokers
                .into_iter()
                .map(|b| BrokerInfo {
                    node_id: b.broker_id.0,
                    host: b.host.to_string(),
                    port: b.port,
                    rack: b.rack.map(|r| r.to_string()),
                })
                .collect();
            brokers.sort_by_key(|b| b.node_id);
            return Ok(ClusterDescription {
                cluster_id: response.cluster_id.to_string(),
                controller_id: response.controller_id.0,
                brokers,
            });
        }
        let metadata = self.cluster.all_topics().await?;
        let mut brokers: Vec<BrokerInfo> = metadata.brokers.into_values().collect();
        brokers.sort_by_key(|b| b.node_id);
        Ok(ClusterDescription {
            cluster_id: metadata.cluster_id.unwrap_or_default(),
            controller_id: metadata.controller_id,
            brokers,
        })
    }
}

pub(crate) fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}
