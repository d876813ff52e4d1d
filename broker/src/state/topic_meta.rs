//! Topic metadata on disk: one CRC'd file per topic, `<data_dir>/meta/<topic>.topic`
//! (name, id, partition count, config overrides), and the cluster identity in
//! `<data_dir>/meta/cluster.json`, each replaced atomically.
//!
//! The metadata file is written before a topic's partition directories are created
//! and removed before they are deleted, so after a crash at any point the file alone
//! says whether the topic exists: partition directories without a topic file are
//! leftovers of an unfinished delete (or create) and are removed at start-up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rill_storage::atomic_file;
use serde::{Deserialize, Serialize};

use super::{new_uuid, storage_error};
use crate::config::Config;
use crate::error::BrokerError;

/// The persisted form of a topic.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct TopicMeta {
    pub(super) name: String,
    pub(super) id: String,
    pub(super) partitions: i32,
    pub(super) configs: BTreeMap<String, String>,
}

/// The persisted cluster identity.
#[derive(Debug, Serialize, Deserialize)]
struct ClusterMeta {
    cluster_id: String,
}

/// Where the metadata file of topic `name` lives.
fn topic_path(meta_dir: &Path, name: &str) -> PathBuf {
    meta_dir.join(format!("{name}.topic"))
}

/// Reads every topic's metadata file, removing leftovers of interrupted atomic writes.
pub(super) fn load_all(meta_dir: &Path) -> Result<Vec<TopicMeta>, BrokerError> {
    let mut metas = Vec::new();
    for entry in std::fs::read_dir(meta_dir).map_err(storage_error)? {
        let path = entry.map_err(storage_error)?.path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("topic") => {}
            Some("tmp") => {
                // An interrupted atomic write: the rename never happened.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            _ => continue,
        }
        let body = atomic_file::read(&path)
            .map_err(storage_error)?
            .ok_or_else(|| storage_error(format!("{} vanished", path.display())))?;
        let meta: TopicMeta = serde_json::from_slice(&body)
            .map_err(|e| BrokerError::Storage(format!("{}: {e}", path.display())))?;
        metas.push(meta);
    }
    Ok(metas)
}

/// Writes (atomically replaces) a topic's metadata file.
pub(super) fn write(meta_dir: &Path, meta: &TopicMeta) -> Result<(), BrokerError> {
    let body = serde_json::to_vec_pretty(meta).map_err(storage_error)?;
    atomic_file::write(&topic_path(meta_dir, &meta.name), &body).map_err(storage_error)
}

/// Removes a topic's metadata file durably (the directory is synced after the unlink).
pub(super) fn remove(meta_dir: &Path, name: &str) -> Result<(), BrokerError> {
    std::fs::remove_file(topic_path(meta_dir, name)).map_err(storage_error)?;
    atomic_file::sync_dir(meta_dir).map_err(storage_error)
}

/// Removes what a failed topic creation made: the metadata file first (durably), then
/// the partition directories. Whatever cannot be removed now is an orphan that start-up
/// removes, because the metadata file is gone.
pub(super) fn undo_create(config: &Config, meta: &TopicMeta) {
    let meta_dir = config.topics_dir();
    if let Err(e) = remove(&meta_dir, &meta.name) {
        let path = topic_path(&meta_dir, &meta.name);
        tracing::error!(file = %path.display(), error = %e, "could not remove the metadata file of a topic that failed to be created");
        return;
    }
    for index in 0..meta.partitions {
        let dir = config.partition_dir(&meta.name, index);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove partition directory; removed at next start")
            }
        }
    }
}

/// The cluster id kept in `cluster.json`, created (and persisted) on first start.
pub(super) fn load_cluster_id(meta_dir: &Path) -> Result<String, BrokerError> {
    let path = meta_dir.join("cluster.json");
    if let Some(body) = atomic_file::read(&path).map_err(storage_error)? {
        let meta: ClusterMeta = serde_json::from_slice(&body)
            .map_err(|e| BrokerError::Storage(format!("{}: {e}", path.display())))?;
        return Ok(meta.cluster_id);
    }
    let meta = ClusterMeta {
        cluster_id: new_uuid().simple().to_string(),
    };
    let body = serde_json::to_vec(&meta).map_err(storage_error)?;
    atomic_file::write(&path, &body).map_err(storage_error)?;
    Ok(meta.cluster_id)
}

/// The persisted identity of the broker that owns a data directory.
#[derive(Debug, Serialize, Deserialize)]
struct NodeMeta {
    node_id: i32,
}

/// Binds the data directory to `node_id`: the first start writes `node.json`; a later
/// start with another `node_id` is refused, since the directory's replicas, votes and
/// terms are that other broker's (a second broker claiming them would vote twice in
/// its groups' terms and serve another broker's log as its own). Returns whether this
/// start created the file: the data directory is fresh (new, or wiped), so every Raft
/// term and vote of an earlier life of this broker is gone.
pub(super) fn check_node_id(meta_dir: &Path, node_id: i32) -> Result<bool, BrokerError> {
    let path = meta_dir.join("node.json");
    if let Some(body) = atomic_file::read(&path).map_err(storage_error)? {
        let meta: NodeMeta = serde_json::from_slice(&body)
            .map_err(|e| BrokerError::Storage(format!("{}: {e}", path.display())))?;
        if meta.node_id != node_id {
            return Err(BrokerError::Storage(format!(
                "the data directory belongs to node_id {} (meta/node.json), not to node_id \
                 {node_id}: start that broker with its own data directory",
                meta.node_id
            )));
        }
        return Ok(false);
    }
    let body = serde_json::to_vec(&NodeMeta { node_id }).map_err(storage_error)?;
    atomic_file::write(&path, &body).map_err(storage_error)?;
    Ok(true)
}
