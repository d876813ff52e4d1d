//! Brokers the suite starts itself: `rilld` child processes on loopback, each with a
//! data directory of its own under the suite's directory. Each is stopped by its
//! process id (SIGTERM, then SIGKILL after a grace period) and its directory removed
//! when dropped; its pid is registered with [`crate::cleanup`] meanwhile, so Ctrl-C
//! stops it too.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::Error;

/// How long a broker may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping broker may take before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// Clock ticks per second of `/proc/<pid>/stat`'s CPU times (`USER_HZ`, 100 on every
/// Linux architecture the kernel exposes to user space).
const USER_HZ: f64 = 100.0;

/// A binary of ours: `given`, else `$env_var`, else the one named `name` next to this
/// executable (the suite is built into the same target directory).
pub(crate) fn binary_path(
    given: Option<PathBuf>,
    env_var: &str,
    name: &str,
) -> Result<PathBuf, Error> {
    let path = match given.or_else(|| std::env::var_os(env_var).map(PathBuf::from)) {
        Some(path) => path,
        None => std::env::current_exe()
            .map_err(|e| Error::Config(format!("cannot locate this executable: {e}")))?
            .with_file_name(name),
    };
    if !path.is_file() {
        return Err(Error::Config(format!(
            "no {name} at {} (build it with `cargo build --release -p rill-broker -p rill-client`, \
             or pass --{name} / set {env_var})",
            path.display()
        )));
    }
    Ok(path)
}

/// CPU seconds (user + system) used so far by process `pid` (`self` for this one).
pub(crate) fn cpu_seconds_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesized command name; utime and stime are the 14th and
    // 15th fields of the whole line.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// One running `rilld`.
pub(crate) struct LocalBroker {
    child: Child,
    /// Its `node_id`.
    pub(crate) node_id: i32,
    /// Kafka client address.
    pub(crate) client_addr: SocketAddr,
    /// Admin HTTP address (`/metrics`).
    pub(crate) admin_addr: SocketAddr,
    data_dir: PathBuf,
}

impl LocalBroker {
    /// Starts `rilld` as `node_id` with its data in `dir/node-<id>` (log in
    /// `dir/node-<id>.log`), client and admin ports picked by the kernel, plus `args`;
    /// returns once it prints its listening line.
    pub(crate) fn start(
        rilld: &Path,
        dir: &Path,
        node_id: i32,
        args: &[String],
    ) -> Result<LocalBroker, Error> {
        let data_dir = dir.join(format!("node-{node_id}"));
        let log_path = dir.join(format!("node-{node_id}.log"));
        let io = |what: &str, e: std::io::Error| Error::Config(format!("{what}: {e}"));
        std::fs::create_dir_all(&data_dir).map_err(|e| io("create data directory", e))?;
        let log = std::fs::File::create(&log_path).map_err(|e| io("create broker log", e))?;
        let mut child = Command::new(rilld)
            .arg("--node-id")
            .arg(node_id.to_string())
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--admin-listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| io(&format!("start {}", rilld.display()), e))?;
        crate::cleanup::register_pid(child.id());
        let stdout = child.stdout.take().expect("stdout is piped");
        // The first stdout line names the bound ports; read it on a thread so a broker
        // that never prints it cannot hang the bench.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut broker = LocalBroker {
            child,
            node_id,
            client_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
        };
        let line = rx.recv_timeout(START_TIMEOUT).unwrap_or_default();
        // "rilld listening on ADDR admin ADDR"
        let mut words = line.split_whitespace().skip(3);
        let (client, admin) = (words.next(), words.nth(1));
        match (
            client.and_then(|a| a.parse().ok()),
            admin.and_then(|a| a.parse().ok()),
        ) {
            (Some(client), Some(admin)) => {
                broker.client_addr = client;
                broker.admin_addr = admin;
                Ok(broker)
            }
            _ => Err(Error::Config(format!(
                "broker {node_id} did not start (first line {line:?}); see {}",
                log_path.display()
            ))),
        }
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds (user + system) the process has used so far.
    pub(crate) fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds_of(&self.pid().to_string())
    }

    /// Resident memory in KiB (`VmRSS`).
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// A value of the broker's Prometheus endpoint, by exact name.
    pub(crate) fn metric(&self, name: &str) -> Option<u64> {
        let mut stream =
            TcpStream::connect_timeout(&self.admin_addr, Duration::from_secs(5)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.admin_addr
        )
        .ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Stops the broker: SIGTERM by pid, SIGKILL if it has not exited after
    /// `STOP_GRACE`.
    fn stop(&mut self) {
        crate::cleanup::stop_child(&mut self.child, STOP_GRACE);
    }
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Starts `n` brokers forming one cluster (`--controller-voters` over fresh
/// inter-broker ports), each with `args` too.
pub(crate) fn start_cluster(
    rilld: &Path,
    dir: &Path,
    n: i32,
    args: &[String],
) -> Result<Vec<LocalBroker>, Error> {
    // Below the ephemeral range, so no outgoing connection takes a port between its
    // pick and the broker's bind.
    let ports: Vec<u16> = (0..n).map(|_| rill_tests::ports::reserve()).collect();
    let voters = ports
        .iter()
        .enumerate()
        .map(|(i, port)| format!("{}@127.0.0.1:{port}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut brokers = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let mut broker_args = vec![
            "--controller-voters".to_owned(),
            voters.clone(),
            "--inter-broker-listen".to_owned(),
            format!("127.0.0.1:{port}"),
        ];
        broker_args.extend_from_slice(args);
        brokers.push(LocalBroker::start(rilld, dir, i as i32 + 1, &broker_args)?);
    }
    Ok(brokers)
}
