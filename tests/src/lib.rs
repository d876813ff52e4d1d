//! Test harness: runs the real `rilld` binary as a child process on loopback, with
//! its own temporary data directory, for integration tests with real sockets and
//! real (third-party) clients.
//!
//! # Finding the binary
//!
//! If the environment variable `RILLD_BIN` (for the `rill` CLI: `RILL_BIN`) is set,
//! that file is run. Otherwise the harness builds it once per test process with
//! `cargo build --workspace --lib --bins --tests --examples` (adding `--release` when
//! the tests are built in release mode), into the same target directory and profile
//! as the test binary itself, and runs `<target>/<profile>/rilld`. Those are the
//! targets `cargo test --workspace` builds, so under it (CI) the build is a no-op
//! check that `rilld` is current; under `cargo test -p rill-tests` it builds the
//! workspace once. The first test to need the binary pays for that; the rest reuse it.
//!
//! # Ports
//!
//! A broker starts on client and admin ports from [`ports::reserve`]: below the
//! kernel's ephemeral range, so no client connection can take them while the broker
//! is down between a kill and its restart (a port picked by binding port 0 could be);
//! the harness reads the bound ports from the single line
//! `rilld listening on ADDR admin ADDR` that `rilld` prints on stdout when ready. A
//! restart reuses the same ports, so clients that reconnect find the broker where it
//! was.
//!
//! Every broker is killed (SIGKILL) when its [`RilldProcess`] is dropped, also when
//! a test panics.
//!
//! # Layout
//!
//! - this file: [`RilldProcess`] and the binaries it runs;
//! - [`raw`]: a blocking raw Kafka-protocol connection and request builders;
//! - [`ports`]: loopback ports for brokers, outside the ephemeral range;
//! - [`proxy`]: a fault-injecting TCP proxy to put between brokers;
//! - [`history`]: a checker of produce acknowledgements against what reads found, and
//!   of replicas' log files against each other.

#![forbid(unsafe_code)]

pub mod history;
pub mod ports;
pub mod proxy;
pub mod raw;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a broker gets to print its ready line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a graceful stop may take before the test fails.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Free-space floor the harness gives brokers unless a test sets its own.
const TEST_LOG_DIR_FREE_BYTES_MIN: u64 = 16 * 1024 * 1024;

/// `journal_bytes` of test brokers (4 MiB; the default 64 MiB would be written at
/// every start of a fresh data directory).
pub const TEST_JOURNAL_BYTES: u64 = 4 << 20;

/// Segment size the harness gives brokers (a test that needs another one sets the
/// topic's `segment.bytes`): small, so tests roll segments without writing much.
pub const TEST_SEGMENT_BYTES: u64 = 8 * 1024 * 1024;

static RILLD: OnceLock<PathBuf> = OnceLock::new();
static RILL: OnceLock<PathBuf> = OnceLock::new();
static WORKSPACE_BUILT: OnceLock<PathBuf> = OnceLock::new();

/// The `rilld` binary to run (see the crate docs).
pub fn rilld_bin() -> PathBuf {
    RILLD
        .get_or_init(|| workspace_bin("rilld", "RILLD_BIN"))
        .clone()
}

/// The `rill` CLI binary to run: `RILL_BIN` if set, else built like `rilld`.
pub fn rill_bin() -> PathBuf {
    RILL.get_or_init(|| workspace_bin("rill", "RILL_BIN"))
        .clone()
}

/// The workspace binary `name`: the file named by the environment variable
/// `override_var` if set, else `<target>/<profile>/<name>` after building the workspace
/// once per test process (see the crate docs).
fn workspace_bin(name: &str, override_var: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(override_var) {
        return PathBuf::from(path);
    }
    let bin = WORKSPACE_BUILT.get_or_init(build_workspace).join(name);
    assert!(bin.exists(), "{} missing after build", bin.display());
    bin
}

/// Builds the workspace's binaries into this test's target dir and profile; returns
/// `<target>/<profile>`.
fn build_workspace() -> PathBuf {
    // The test executable lives in <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary is in <target>/<profile>/deps")
        .to_path_buf();
    let target_dir = profile_dir.parent().expect("profile dir has a parent");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("rill-tests is inside the workspace");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        // Build the targets `cargo test --workspace` builds (lib, bins, tests,
        // examples) rather than one package's binary alone: the same target set
        // unifies features the same way, so after a `cargo test --workspace` this is a
        // no-op, where a `-p rill-broker` build would recompile the broker and its
        // dependencies with a different feature set (about a minute on 2 cores).
        .args([
            "build",
            "--workspace",
            "--lib",
            "--bins",
            "--tests",
            "--examples",
        ])
        .arg("--target-dir")
        .arg(target_dir);
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    // Output is kept unless the build fails, so test logs stay readable.
    let output = command.output().expect("run cargo build");
    assert!(
        output.status.success(),
        "cargo build of the workspace binaries failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    profile_dir
}

/// Runs `command` with `stdin` (or no input) piped in, stdout and stderr captured,
/// and waits for it. Panics if it cannot be started (with `what` in the message).
pub fn run_piped(mut command: Command, stdin: Option<&[u8]>, what: &str) -> std::process::Output {
    let mut child = command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    if let Some(input) = stdin {
        // Written on its own thread so a child that fills its stdout pipe before
        // reading all its input cannot deadlock the test.
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let input = input.to_vec();
        let writer = std::thread::spawn(move || pipe.write_all(&input));
        let output = child.wait_with_output().expect("wait for child");
        writer
            .join()
            .expect("stdin writer thread")
            .unwrap_or_else(|e| panic!("write to {what}: {e}"));
        return output;
    }
    child.wait_with_output().expect("wait for child")
}

/// Runs Debian's `kcat` with `args` (and `stdin` piped in) and returns its stdout;
/// panics with its stderr if it fails.
pub fn kcat(args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    let mut command = Command::new("kcat");
    command.args(args);
    let output = run_piped(command, stdin, "kcat (scripts/test installs it)");
    assert!(
        output.status.success(),
        "kcat {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// A memory figure of process `pid` from `/proc/<pid>/status`, in bytes: `field` is
/// e.g. `"VmRSS"` (all resident pages) or `"RssAnon"` (resident anonymous pages: heap
/// and stacks, not the file-backed pages of mapped segments).
pub fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} line in /proc/{pid}/status"));
    kib * 1024
}

/// A `rilld` child process with its own data directory.
pub struct RilldProcess {
    root: tempfile::TempDir,
    /// A data directory the test owns (e.g. a mount), instead of `<root>/data`.
    data_dir: Option<PathBuf>,
    child: Option<Child>,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    args: Vec<String>,
    starts: u32,
}

impl RilldProcess {
    /// Starts a broker with the harness defaults.
    pub fn start() -> RilldProcess {
        RilldProcess::start_with(&[])
    }

    /// Starts a broker with extra command-line flags (e.g. `["--durability", "interval"]`).
    pub fn start_with(args: &[&str]) -> RilldProcess {
        RilldProcess::start_in(None, args)
    }

    /// Starts a broker on `data_dir` (which the test owns and removes, e.g. a test file
    /// system's mount point), with extra flags; logs stay in the harness's temp dir.
    pub fn start_with_data_dir(data_dir: &Path, args: &[&str]) -> RilldProcess {
        RilldProcess::start_in(Some(data_dir.to_path_buf()), args)
    }

    fn start_in(data_dir: Option<PathBuf>, args: &[&str]) -> RilldProcess {
        let root = tempfile::Builder::new()
            .prefix("rilld-test-")
            .tempdir()
            .expect("temp dir");
        let mut process = RilldProcess {
            root,
            data_dir,
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], ports::reserve())),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], ports::reserve())),
            args: args.iter().map(|s| s.to_string()).collect(),
            starts: 0,
        };
        process.spawn();
        process
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        self.starts += 1;
        let log_path = self.root.path().join(format!("rilld-{}.log", self.starts));
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut command = Command::new(rilld_bin());
        command
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--admin-listen")
            .arg(self.admin_addr.to_string())
            .arg("--log-segment-bytes")
            .arg(TEST_SEGMENT_BYTES.to_string());
        // The default floor (1 GiB free) would refuse every topic on a nearly full CI disk;
        // tests that are about the floor set it themselves.
        if !self
            .args
            .iter()
            .any(|a| a.starts_with("--log-dir-free-bytes-min"))
        {
            command
                .arg("--log-dir-free-bytes-min")
                .arg(TEST_LOG_DIR_FREE_BYTES_MIN.to_string());
        }
        // A small journal: each start writes its journal's zeros once, and tests start
        // brokers by the dozen (a full journal checkpoints more often, which tests want).
        if !self.args.iter().any(|a| a.starts_with("--journal-bytes")) {
            command
                .arg("--journal-bytes")
                .arg(TEST_JOURNAL_BYTES.to_string());
        }
        command
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("RILLD_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = command.spawn().expect("spawn rilld");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("rilld listening on ") {
                        let mut words = rest.split(' ');
                        self.addr = words.next().and_then(|a| a.parse().ok()).expect("addr");
                        self.admin_addr = words.nth(1).and_then(|a| a.parse().ok()).expect("admin");
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("rilld exited before it was ready:\n{}", self.log())
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "rilld exited with {status} before it was ready:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "rilld not ready after {START_TIMEOUT:?}:\n{}",
                self.log()
            );
        }
    }

    /// `127.0.0.1:<port>` of the Kafka port.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    /// The Kafka port address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin HTTP port address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The data directory (survives restarts; removed when this value drops unless
    /// the test gave its own).
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| self.root.path().join("data"))
    }

    /// Everything the broker logged (all starts), for failure messages.
    pub fn log(&self) -> String {
        let mut out = String::new();
        for n in 1..=self.starts {
            let path = self.root.path().join(format!("rilld-{n}.log"));
            out.push_str(&format!("--- start {n} ---\n"));
            out.push_str(&std::fs::read_to_string(path).unwrap_or_default());
        }
        out
    }

    /// The OS process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the broker dies at once, without flushing.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits (at most [`STOP_TIMEOUT`]) for a graceful exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("-TERM")
    }

    /// SIGINT, then waits (at most [`STOP_TIMEOUT`]) for a graceful exit.
    pub fn interrupt(&mut self) -> ExitStatus {
        self.signal("-INT")
    }

    fn signal(&mut self, signal: &str) -> ExitStatus {
        let mut child = self.child.take().expect("broker running");
        let status = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait rilld") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "rilld did not exit within {STOP_TIMEOUT:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the broker again on the same data directory and ports.
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Starts the broker again on the same data directory and ports, with these extra
    /// flags instead of the earlier ones (kept for later restarts).
    pub fn restart_with(&mut self, args: &[&str]) {
        self.args = args.iter().map(|s| s.to_string()).collect();
        self.spawn();
    }

    /// Sends `signal` (e.g. `"-STOP"`, `"-CONT"`) to the running broker without waiting.
    pub fn send_signal(&self, signal: &str) {
        let pid = self.pid().expect("broker running");
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// Waits up to `timeout` for the broker to exit on its own; returns its status, or
    /// `None` if it is still running (it keeps running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().expect("wait rilld") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET path` on the admin port; returns the body.
    pub fn admin_get(&self, path: &str) -> String {
        let mut stream = TcpStream::connect(self.admin_addr).expect("connect admin port");
        write!(stream, "GET {path} HTTP/1.0\r\nHost: rilld\r\n\r\n").expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        let (head, body) = response.split_once("\r\n\r\n").expect("http response");
        assert!(head.starts_with("HTTP/1.0 200"), "{head}");
        body.to_string()
    }

    /// A counter from `/metrics`, e.g. `rill_log_flushes_total`.
    pub fn metric(&self, name: &str) -> u64 {
        let body = self.admin_get("/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing:\n{body}"))
    }
}

impl Drop for RilldProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
