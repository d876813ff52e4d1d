//! `rill group list|describe|delete|delete-offsets|reset-offsets`: consumer groups, their members and
//! assignments, committed offsets and lag (Kafka's `kafka-consumer-groups.sh`).

use std::collections::{BTreeMap, BTreeSet};

use clap::{ArgGroup, Args, Subcommand};
use rill_client::{Admin, ClientConfig, Error, GroupDescription, OffsetSpec, TopicPartition};

#[derive(Subcommand, Debug)]
pub(crate) enum GroupCommand {
    /// List groups with their state and protocol type.
    List {
        /// Only groups in this state (repeatable): Empty, Stable, PreparingRebalance,
        /// CompletingRebalance, Dead (case-insensitive).
        #[arg(long = "state")]
        states: Vec<String>,
    },
    /// Show a group's state, protocol, members with their assignments, and per partition
    /// the committed offset, log end offset and lag.
    Describe {
        /// Groups to describe.
        #[arg(required = true)]
        groups: Vec<String>,
    },
    /// Delete groups that have no members, with their committed offsets.
    Delete {
        /// Groups to delete.
        #[arg(required = true)]
        groups: Vec<String>,
    },
    /// Delete a group's committed offsets of some topics (OffsetDelete); refused for a
    /// topic a live member of the group subscribes to.
    DeleteOffsets {
        /// The group.
        group: String,
        /// Topics (repeatable), `name` for every partition or `name:0,2` for some.
        #[arg(long = "topic", value_name = "TOPIC[:PARTITIONS]", required = true)]
        topics: Vec<String>,
    },
    /// Move a group's committed offsets. The group must have no members. Prints the plan
    /// and changes nothing unless `--execute` is given.
    ResetOffsets(ResetArgs),
}

#[derive(Args, Debug)]
#[command(group(
    ArgGroup::new("target")
        .required(true)
        .args(["to_earliest", "to_latest", "to_offset", "shift_by"])
))]
pub(crate) struct ResetArgs {
    /// The group.
    group: String,
    /// To the log start offset.
    #[arg(long)]
    to_earliest: bool,
    /// To the log end offset.
    #[arg(long)]
    to_latest: bool,
    /// To this offset (kept within the log: below its start goes to the start, past its
    /// end to the end).
    #[arg(long, value_name = "OFFSET")]
    to_offset: Option<i64>,
    /// Move each committed offset by this many records (negative: back), kept within
    /// the log.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    shift_by: Option<i64>,
    /// Topics to reset (repeatable), `name` for every partition or `name:0,2` for some;
    /// default: every partition the group has a committed offset for.
    #[arg(long = "topic", value_name = "TOPIC[:PARTITIONS]")]
    topics: Vec<String>,
    /// Commit the new offsets (without it, only the plan is printed).
    #[arg(long)]
    execute: bool,
}

/// Where `reset-offsets` moves an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResetTarget {
    Earliest,
    Latest,
    Offset(i64),
    ShiftBy(i64),
}

impl ResetArgs {
    fn target(&self) -> ResetTarget {
        match (
            self.to_earliest,
            self.to_latest,
            self.to_offset,
            self.shift_by,
        ) {
            (true, ..) => ResetTarget::Earliest,
            (_, true, ..) => ResetTarget::Latest,
            (_, _, Some(offset), _) => ResetTarget::Offset(offset),
            (_, _, _, Some(n)) => ResetTarget::ShiftBy(n),
            // clap's required ArgGroup makes one of them present.
            _ => ResetTarget::Earliest,
        }
    }
}

/// The new offset of one partition: `target` kept within [`earliest`, `latest`], as
/// Kafka's tool does. `--shift-by` needs a committed offset to shift.
fn plan_offset(
    target: ResetTarget,
    committed: Option<i64>,
    earliest: i64,
    latest: i64,
) -> Result<i64, String> {
    let wanted = match target {
        ResetTarget::Earliest => earliest,
        ResetTarget::Latest => latest,
        ResetTarget::Offset(offset) => offset,
        ResetTarget::ShiftBy(n) => committed
            .ok_or("no committed offset to shift")?
            .saturating_add(n),
    };
    Ok(wanted.clamp(earliest, latest.max(earliest)))
}

/// Parses `name` or `name:0,2`.
fn parse_topic(spec: &str) -> Result<(String, Option<Vec<i32>>), String> {
    match spec.split_once(':') {
        None => Ok((spec.to_owned(), None)),
        Some((name, list)) => {
            let partitions = list
                .split(',')
                .map(|p| {
                    p.trim()
                        .parse::<i32>()
                        .map_err(|_| format!("bad partition {p:?} in --topic {spec}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((name.to_owned(), Some(partitions)))
        }
    }
}

fn dash(value: Option<i64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

pub(crate) async fn run(client: ClientConfig, cmd: GroupCommand) -> Result<(), Error> {
    let admin = Admin::new(client)?;
    match cmd {
        GroupCommand::List { states } => {
            let states: Vec<&str> = states.iter().map(String::as_str).collect();
            let list = admin.list_groups(&states).await?;
            println!("{:<40} {:<20} PROTOCOL-TYPE", "GROUP", "STATE");
            for g in &list.groups {
                println!("{:<40} {:<20} {}", g.group_id, g.state, g.protocol_type);
            }
            // The groups those brokers coordinate are missing: say so, and fail, so a
            // script never takes a partial list for the whole.
            for (broker, e) in &list.unreachable {
                eprintln!("broker {broker} could not be asked (its groups are not listed): {e}");
            }
            match list.unreachable.into_iter().next() {
                Some((_, e)) => Err(e),
                None => Ok(()),
            }
        }
        GroupCommand::Describe { groups } => {
            let refs: Vec<&str> = groups.iter().map(String::as_str).collect();
            for (i, description) in admin.describe_groups(&refs).await?.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                describe(&admin, description).await?;
            }
            Ok(())
        }
        GroupCommand::Delete { groups } => {
            let refs: Vec<&str> = groups.iter().map(String::as_str).collect();
            let mut failed = None;
            for (group, result) in admin.delete_groups(&refs).await? {
                match result {
                    Ok(()) => println!("deleted group {group}"),
                    Err(e) => {
                        eprintln!("group {group}: {e}");
                        failed = Some(e);
                    }
                }
            }
            failed.map_or(Ok(()), Err)
        }
        GroupCommand::DeleteOffsets { group, topics } => {
            let partitions = topic_partitions(&admin, &topics).await?;
            let mut failed = None;
            for (tp, result) in admin
                .delete_consumer_group_offsets(&group, &partitions)
                .await?
            {
                match result {
                    Ok(()) => println!("deleted offset {}/{}", tp.topic, tp.partition),
                    Err(e) => {
                        eprintln!("{}/{}: {e}", tp.topic, tp.partition);
                        failed = Some(e);
                    }
                }
            }
            failed.map_or(Ok(()), Err)
        }
        GroupCommand::ResetOffsets(args) => reset_offsets(&admin, args).await,
    }
}

async fn describe(admin: &Admin, g: &GroupDescription) -> Result<(), Error> {
    if g.state == "Dead" {
        println!("group {} does not exist", g.group_id);
        return Ok(());
    }
    println!(
        "group {}  state {}  protocol-type {}  protocol {}  coordinator {}",
        g.group_id,
        g.state,
        if g.protocol_type.is_empty() {
            "-"
        } else {
            &g.protocol_type
        },
        if g.protocol.is_empty() {
            "-"
        } else {
            &g.protocol
        },
        g.coordinator_id
    );
    println!("members {}", g.members.len());
    let mut owner: BTreeMap<TopicPartition, &str> = BTreeMap::new();
    for m in &g.members {
        let assignment: Vec<String> = m
            .assignment
            .iter()
            .map(|tp| format!("{}-{}", tp.topic, tp.partition))
            .collect();
        println!(
            "  member {}  client-id {}  host {}{}  assignment [{}]",
            m.member_id,
            m.client_id,
            m.client_host,
            m.group_instance_id
                .as_deref()
                .map(|i| format!("  instance {i}"))
                .unwrap_or_default(),
            assignment.join(",")
        );
        for tp in &m.assignment {
            owner.insert(tp.clone(), &m.member_id);
        }
    }
    let assigned: Vec<TopicPartition> = owner.keys().cloned().collect();
    let lags = admin.consumer_group_lag(&g.group_id, &assigned).await?;
    println!(
        "{:<30} {:>9} {:>12} {:>12} {:>10}  MEMBER",
        "TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG"
    );
    for row in lags {
        println!(
            "{:<30} {:>9} {:>12} {:>12} {:>10}  {}",
            row.partition.topic,
            row.partition.partition,
            dash(row.committed_offset),
            dash(row.log_end_offset),
            dash(row.lag),
            owner.get(&row.partition).copied().unwrap_or("-")
        );
    }
    Ok(())
}

async fn reset_offsets(admin: &Admin, args: ResetArgs) -> Result<(), Error> {
    let group = args.group.as_str();
    let description = admin
        .describe_groups(&[group])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Protocol("no description of the group".into()))?;
    // Committing with generation -1 is only allowed into a group without members, and
    // moving offsets under running consumers would be overwritten by their next commit.
    if !description.members.is_empty() || !matches!(description.state.as_str(), "Empty" | "Dead") {
        return Err(Error::Config(format!(
            "group {group} is {} with {} member(s): offsets can only be reset while it has \
             no members (stop its consumers first)",
            description.state,
            description.members.len()
        )));
    }
    let committed = admin.list_consumer_group_offsets(group).await?;
    let mut partitions: BTreeSet<TopicPartition> = BTreeSet::new();
    if args.topics.is_empty() {
        partitions.extend(committed.keys().cloned());
    } else {
        partitions.extend(topic_partitions(admin, &args.topics).await?);
    }
    if partitions.is_empty() {
        println!("group {group} has no committed offsets to reset (name topics with --topic)");
        return Ok(());
    }
    let partitions: Vec<TopicPartition> = partitions.into_iter().collect();
    let earliest = admin
        .list_offsets(&partitions, OffsetSpec::Earliest)
        .await?;
    let latest = admin.list_offsets(&partitions, OffsetSpec::Latest).await?;
    let target = args.target();
    let mut plan: BTreeMap<TopicPartition, i64> = BTreeMap::new();
    println!(
        "{:<30} {:>9} {:>12} {:>12}",
        "TOPIC", "PARTITION", "CURRENT", "NEW"
    );
    for tp in &partitions {
        let current = committed.get(tp).copied();
        let start = earliest.get(tp).copied().unwrap_or(0);
        let end = latest.get(tp).copied().unwrap_or(start);
        let new = plan_offset(target, current, start, end)
            .map_err(|e| Error::Config(format!("{}/{}: {e}", tp.topic, tp.partition)))?;
        println!(
            "{:<30} {:>9} {:>12} {:>12}",
            tp.topic,
            tp.partition,
            dash(current),
            new
        );
        plan.insert(tp.clone(), new);
    }
    if args.execute {
        admin.alter_consumer_group_offsets(group, &plan).await?;
        println!("committed {} offset(s) for group {group}", plan.len());
    } else {
        println!("dry run: nothing changed (add --execute to commit these offsets)");
    }
    Ok(())
}

/// The partitions `--topic` specs name (`name`: every partition, `name:0,2`: some).
async fn topic_partitions(admin: &Admin, specs: &[String]) -> Result<Vec<TopicPartition>, Error> {
    let names: Vec<String> = specs
        .iter()
        .map(|t| parse_topic(t).map(|(name, _)| name))
        .collect::<Result<_, _>>()
        .map_err(Error::Config)?;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let topics = admin.describe_topics(&refs).await?;
    let mut partitions: BTreeSet<TopicPartition> = BTreeSet::new();
    for spec in specs {
        let (name, wanted) = parse_topic(spec).map_err(Error::Config)?;
        let count = topics
            .iter()
            .find(|t| t.name == name)
            .map_or(0, |t| t.partitions.len() as i32);
        match wanted {
            None => partitions.extend((0..count).map(|p| TopicPartition::new(&name, p))),
            Some(list) => {
                for p in list {
                    if !(0..count).contains(&p) {
                        return Err(Error::UnknownPartition {
                            topic: name.clone(),
                            partition: p,
                        });
                    }
                    partitions.insert(TopicPartition::new(&name, p));
                }
            }
        }
    }
    Ok(partitions.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_stay_within_the_log() {
        assert_eq!(plan_offset(ResetTarget::Earliest, Some(7), 3, 10), Ok(3));
        assert_eq!(plan_offset(ResetTarget::Latest, None, 3, 10), Ok(10));
        assert_eq!(plan_offset(ResetTarget::Offset(5), None, 3, 10), Ok(5));
        assert_eq!(plan_offset(ResetTarget::Offset(0), None, 3, 10), Ok(3));
        assert_eq!(plan_offset(ResetTarget::Offset(99), None, 3, 10), Ok(10));
        assert_eq!(plan_offset(ResetTarget::ShiftBy(-2), Some(7), 3, 10), Ok(5));
        assert_eq!(plan_offset(ResetTarget::ShiftBy(-9), Some(7), 3, 10), Ok(3));
        assert_eq!(plan_offset(ResetTarget::ShiftBy(9), Some(7), 3, 10), Ok(10));
        assert!(plan_offset(ResetTarget::ShiftBy(1), None, 3, 10).is_err());
    }

    #[test]
    fn topic_specs_name_all_or_some_partitions() {
        assert_eq!(parse_topic("t"), Ok(("t".to_owned(), None)));
        assert_eq!(parse_topic("t:0,2"), Ok(("t".to_owned(), Some(vec![0, 2]))));
        assert!(parse_topic("t:x").is_err());
    }
}
