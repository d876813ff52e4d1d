//! Shared by the tests that run `rilld` on a `rill-lossyfs` mount: the mount with its
//! temp dirs (unmounted and removed even when a test fails), and raw-protocol helpers
//! that survive the broker being SIGKILLed mid-request.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::MetadataRequest;
use rill_lossyfs::{Controls, CrashReport, LossyFs, MountOptions, Mounted};
use rill_tests::raw::requests::{produce, topic_name};
use rill_tests::raw::{record_batch, RawConn};

pub const PRODUCE_V: i16 = 9;
pub const FETCH_V: i16 = 12;
pub const METADATA_V: i16 = 12;
pub const CREATE_TOPICS_V: i16 = 4;

/// A lossyfs mount over a temp backing dir. Fields drop in order: the mount goes
/// before the directories it covers are removed. Declare the broker *after* the
/// disk, so it is killed before the disk goes.
pub struct Disk {
    mounted: Option<Mounted>,
    options: MountOptions,
    mountpoint: tempfile::TempDir,
    backing: tempfile::TempDir,
}

impl Disk {
    /// Mounts a fresh disk; `None` (after printing why) only where FUSE cannot be used.
    pub fn mount(test: &str, options: MountOptions) -> Option<Disk> {
        let (backing, mountpoint, mounted) =
            rill_lossyfs::mount_in_temp_dirs(test, "rill-lossyfs-", &options)?;
        Some(Disk {
            mounted: Some(mounted),
            options,
            mountpoint,
            backing,
        })
    }

    /// Where the broker's data directory is.
    pub fn path(&self) -> &Path {
        self.mountpoint.path()
    }

    /// The backing directory (what survives a crash).
    pub fn backing(&self) -> &Path {
        self.backing.path()
    }

    pub fn controls(&self) -> Controls {
        self.mounted.as_ref().expect("mounted").controls()
    }

    /// Power loss (call after the broker was SIGKILLed), then the power comes back:
    /// the same backing dir is mounted again at the same place.
    pub fn power_cycle(&mut self) -> CrashReport {
        let report = self
            .mounted
            .take()
            .expect("mounted")
            .crash()
            .expect("crash unmounts");
        self.mounted = Some(
            LossyFs::mount(self.backing.path(), self.mountpoint.path(), &self.options)
                .expect("remount after the crash"),
        );
        report
    }
}

/// (base offset, error code) of an acks=`acks` produce of `values` to one partition;
/// `None` if the broker closed the connection (it was killed) instead of answering.
pub fn try_produce(
    conn: &mut RawConn,
    topic: &str,
    partition: i32,
    values: &[Vec<u8>],
    acks: i16,
) -> Option<(i64, i16)> {
    let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    let response = conn.try_call(
        PRODUCE_V,
        &produce(
            topic,
            partition,
            record_batch(&refs, 1_700_000_000_000),
            acks,
        ),
    )?;
    let p = &response.responses[0].partition_responses[0];
    Some((p.base_offset, p.error_code))
}

pub use rill_tests::raw::read_all;

/// Names of the topics in an all-topics Metadata response.
pub fn topic_names(conn: &mut RawConn) -> Vec<String> {
    let response = conn.call(METADATA_V, &MetadataRequest::default().with_topics(None));
    response
        .topics
        .iter()
        .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
        .collect()
}

/// Error code of a Metadata request for `topic` (without auto-creation).
pub fn metadata_error(conn: &mut RawConn, topic: &str) -> i16 {
    let request = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name(topic)))
        ]))
        .with_allow_auto_topic_creation(false);
    conn.call(METADATA_V, &request).topics[0].error_code
}

/// Per-partition map offset → value of what the broker acknowledged.
pub type Acked = Vec<BTreeMap<i64, Vec<u8>>>;
