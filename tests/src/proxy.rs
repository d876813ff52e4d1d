//! A fault-injecting TCP proxy for cluster tests: put one between two brokers (or a
//! client and a broker) and cut, delay, sever or flap the link at runtime.
//!
//! [`FaultProxy::start`] listens on a free loopback port and forwards every connection
//! it accepts to one upstream address, in both directions. A [`FaultControl`] (cheap to
//! clone, usable from any task or thread) changes the faults of every connection at
//! once, per [`Direction`]:
//!
//! | fault | effect |
//! |---|---|
//! | [`cut`](FaultControl::cut) | bytes in that direction are held back; the proxy stops reading them, so TCP back-pressure stops the sender (nothing is lost, nothing buffered without bound) |
//! | [`delay`](FaultControl::delay) | each chunk is written that long after it was read; order is kept, buffering is bounded |
//! | [`sever`](FaultControl::sever) | closes every connection and closes new ones as soon as they are accepted |
//! | [`drop_connections`](FaultControl::drop_connections) | closes every live connection once; new ones work |
//! | [`flap`](FaultControl::flap) | cuts and heals both directions on a schedule |
//! | [`heal`](FaultControl::heal) | ends cuts, sever and flapping (delays stay until set to zero) |
//!
//! A cut holds bytes; it does not close connections, so a cut that is healed before
//! the peers time out looks like a slow network, and a long one like a partition in
//! which the peers' own timeouts fire. New connections are accepted and connected
//! upstream during a cut (only their bytes are held).
//!
//! Dropping the [`FaultProxy`] stops its tasks and closes every connection;
//! [`FaultProxy::shutdown`] does the same and waits until they are gone.
//!
//! # Layout
//!
//! - this file: the public handle and control, the accept loop, the flap schedule;
//! - `connection`: one proxied connection, a reader and a writer per direction.

mod connection;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Most bytes one read takes from a socket, so one chunk (the unit of delay and of
/// what a cut may catch in flight).
pub const CHUNK_BYTES_MAX: usize = 16 * 1024;
/// Chunks read but not yet written, per direction of a connection: with
/// [`CHUNK_BYTES_MAX`] this bounds what a delay buffers to 1 MiB per direction; beyond
/// it the proxy stops reading and TCP back-pressure applies.
pub const CHUNKS_IN_FLIGHT_MAX: usize = 64;
/// Most connections proxied at once; more are closed as soon as they are accepted.
pub const CONNECTIONS_MAX: usize = 256;
/// How long the proxy waits for the upstream to accept a connection before closing
/// the client's.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed accept (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Which way bytes travel through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the peer that connected to the proxy, to the upstream.
    Forward,
    /// From the upstream back to the peer that connected.
    Backward,
}

impl Direction {
    /// Both directions, forward first.
    pub const BOTH: [Direction; 2] = [Direction::Forward, Direction::Backward];
}

/// A running proxy. Its tasks stop, and its connections close, when it is dropped.
pub struct FaultProxy {
    listen_addr: SocketAddr,
    upstream_addr: SocketAddr,
    control: FaultControl,
    acceptor: JoinHandle<()>,
    flapper: JoinHandle<()>,
    /// Never sent on: dropping it is the stop signal for the tasks above.
    stop: watch::Sender<()>,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards each accepted connection to
    /// `upstream`, with no faults until the control says so. Must be called inside a
    /// tokio runtime, which then runs the proxy. Fails if `upstream` is not a loopback
    /// address (the proxy is for tests on one machine) or the listener cannot bind.
    pub async fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        if !upstream.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("fault proxy upstream {upstream} is not a loopback address"),
            ));
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let listen_addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let (stop, stop_rx) = watch::channel(());
        let acceptor = tokio::spawn(accept_loop(
            listener,
            upstream,
            shared.clone(),
            stop_rx.clone(),
        ));
        let flapper = tokio::spawn(flap_loop(shared.clone(), stop_rx));
        Ok(FaultProxy {
            listen_addr,
            upstream_addr: upstream,
            control: FaultControl { shared },
            acceptor,
            flapper,
            stop,
        })
    }

    /// The address peers connect to instead of the upstream.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// The address every connection is forwarded to.
    pub fn upstream_addr(&self) -> SocketAddr {
        self.upstream_addr
    }

    /// The fault control; clone it to hand it to other tasks.
    pub fn control(&self) -> &FaultControl {
        &self.control
    }

    /// Stops accepting, closes every connection and waits until all of the proxy's
    /// tasks have ended (dropping the proxy does the same without the wait).
    pub async fn shutdown(mut self) {
        // Replacing the sender drops the one the tasks watch: that is the stop signal.
        drop(std::mem::replace(&mut self.stop, watch::channel(()).0));
        // A task that panicked has ended too; the panic already failed the test output.
        let _ = (&mut self.acceptor).await;
        let _ = (&mut self.flapper).await;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its set of connection tasks, which aborts each
        // of them: the runtime drops them, and with them their sockets, at once.
        self.acceptor.abort();
        self.flapper.abort();
    }
}

/// Changes the faults of a running [`FaultProxy`] and reads its counters. Cloneable;
/// every clone controls the same proxy. Changes apply to live connections at once and
/// to every later connection. After the proxy is dropped, changes have no effect.
#[derive(Clone)]
pub struct FaultControl {
    shared: Arc<Shared>,
}

impl FaultControl {
    /// Holds back the bytes travelling in `direction` until [`heal`](Self::heal).
    pub fn cut(&self, direction: Direction) {
        self.modify(|f| f.direction_mut(direction).cut = true);
    }

    /// Holds back the bytes in both directions (a full partition of this link).
    pub fn cut_both(&self) {
        self.modify(|f| {
            f.forward.cut = true;
            f.backward.cut = true;
        });
    }

    /// Ends every cut, the sever and flapping; held bytes flow again in order.
    /// Delays stay (set them to zero with [`delay`](Self::delay)).
    pub fn heal(&self) {
        self.modify(|f| {
            f.forward.cut = false;
            f.backward.cut = false;
            f.severed = false;
            f.flap = None;
            f.flap_cut = false;
        });
    }

    /// Closes every live connection and closes each new one as soon as it is
    /// accepted, until [`heal`](Self::heal).
    pub fn sever(&self) {
        self.modify(|f| f.severed = true);
    }

    /// Writes each chunk read in `direction` `delay` after it was read (zero: no
    /// delay). Applies to chunks read from now on; order is kept.
    pub fn delay(&self, direction: Direction, delay: Duration) {
        self.modify(|f| f.direction_mut(direction).delay = delay);
    }

    /// Closes every live connection now; the peers must reconnect (new connections
    /// are proxied as before).
    pub fn drop_connections(&self) {
        self.modify(|f| f.drop_generation += 1);
    }

    /// Cuts both directions for `cut_fraction` of every `period` and heals them for
    /// the rest, starting with a cut, until [`heal`](Self::heal). Explicit cuts stay in
    /// force during the heal phases.
    ///
    /// # Panics
    ///
    /// If `period` is zero or `cut_fraction` is not strictly between 0 and 1 (a test
    /// that wants a permanent cut or none says so with `cut`/`heal`).
    pub fn flap(&self, period: Duration, cut_fraction: f64) {
        assert!(!period.is_zero(), "flap period must be positive");
        assert!(
            cut_fraction > 0.0 && cut_fraction < 1.0,
            "flap cut_fraction {cut_fraction} must be in (0, 1)"
        );
        let cut_duration = period.mul_f64(cut_fraction);
        self.modify(|f| {
            f.flap = Some(FlapSchedule {
                period,
                cut_duration,
            })
        });
    }

    /// True while bytes in `direction` are held back (an explicit cut, a flap's cut
    /// phase, or a sever).
    pub fn is_cut(&self, direction: Direction) -> bool {
        self.shared.faults.borrow().is_cut(direction)
    }

    /// Bytes written to their destination in `direction`, over all connections.
    pub fn bytes_forwarded(&self, direction: Direction) -> u64 {
        self.shared.bytes_counter(direction).load(Ordering::Relaxed)
    }

    /// Connections accepted and proxied (refused ones not counted).
    pub fn connections_accepted(&self) -> u64 {
        self.shared.connections_accepted.load(Ordering::Relaxed)
    }

    /// Connections closed as soon as they were accepted (severed, or over
    /// [`CONNECTIONS_MAX`]).
    pub fn connections_refused(&self) -> u64 {
        self.shared.connections_refused.load(Ordering::Relaxed)
    }

    /// Connections being proxied now.
    pub fn connections_live(&self) -> u64 {
        self.shared.connections_live.load(Ordering::Relaxed)
    }

    fn modify(&self, change: impl FnOnce(&mut Faults)) {
        // send_modify notifies even with no receiver, so this works before any connection.
        self.shared.faults.send_modify(change);
    }
}

/// State shared by the control and the proxy's tasks.
struct Shared {
    /// The current faults; tasks wait on changes (a cut to heal, a sever, a drop).
    faults: watch::Sender<Faults>,
    forward_bytes: AtomicU64,
    backward_bytes: AtomicU64,
    connections_accepted: AtomicU64,
    connections_refused: AtomicU64,
    connections_live: AtomicU64,
}

impl Default for Shared {
    fn default() -> Shared {
        Shared {
            faults: watch::channel(Faults::default()).0,
            forward_bytes: AtomicU64::new(0),
            backward_bytes: AtomicU64::new(0),
            connections_accepted: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            connections_live: AtomicU64::new(0),
        }
    }
}

impl Shared {
    fn bytes_counter(&self, direction: Direction) -> &AtomicU64 {
        match direction {
            Direction::Forward => &self.forward_bytes,
            Direction::Backward => &self.backward_bytes,
        }
    }
}

/// Every fault in force. One value behind one watch channel, so a task sees a
/// consistent set (e.g. a heal clears the cut and the flap together).
#[derive(Clone, Debug, Default)]
struct Faults {
    forward: DirectionFaults,
    backward: DirectionFaults,
    severed: bool,
    flap: Option<FlapSchedule>,
    /// The flap's current phase, set only by the flap loop while `flap` is `Some`.
    flap_cut: bool,
    /// Bumped by `drop_connections`; a connection that started under an older value ends.
    drop_generation: u64,
}

impl Faults {
    fn is_cut(&self, direction: Direction) -> bool {
        self.severed || self.flap_cut || self.direction(direction).cut
    }

    fn direction(&self, direction: Direction) -> &DirectionFaults {
        match direction {
            Direction::Forward => &self.forward,
            Direction::Backward => &self.backward,
        }
    }

    fn direction_mut(&mut self, direction: Direction) -> &mut DirectionFaults {
        match direction {
            Direction::Forward => &mut self.forward,
            Direction::Backward => &mut self.backward,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct DirectionFaults {
    cut: bool,
    delay: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FlapSchedule {
    period: Duration,
    /// The cut phase at the start of each period; the rest of it is healed.
    cut_duration: Duration,
}

/// Accepts connections and runs each as a task of its own set, until `stop` closes;
/// then ends every connection and waits for them.
async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // Err once the proxy drops the sender; nothing is ever sent.
            _ = stop.changed() => break,
            // Reap finished connections so the set holds only live ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((client, _peer)) = accepted else {
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                };
                let severed = shared.faults.borrow().severed;
                if severed || connections.len() >= CONNECTIONS_MAX {
                    shared.connections_refused.fetch_add(1, Ordering::Relaxed);
                    drop(client);
                    continue;
                }
                shared.connections_accepted.fetch_add(1, Ordering::Relaxed);
                connections.spawn(connection::run(client, upstream, shared.clone()));
            }
        }
    }
    connections.shutdown().await;
}

/// Runs the flap schedule whenever one is set: writes the phase into
/// `Faults::flap_cut`, which the connections obey like any cut.
async fn flap_loop(shared: Arc<Shared>, mut stop: watch::Receiver<()>) {
    let mut faults = shared.faults.subscribe();
    loop {
        let schedule = faults.borrow_and_update().flap;
        let Some(schedule) = schedule else {
            tokio::select! {
                changed = faults.changed() => if changed.is_err() { return },
                _ = stop.changed() => return,
            }
            continue;
        };
        let mut cut_phase = true;
        loop {
            // Checked under the channel's lock: a heal that ended this schedule in the
            // meantime is not undone.
            let still_flapping = shared.faults.send_if_modified(|f| {
                if f.flap == Some(schedule) {
                    f.flap_cut = cut_phase;
                    true
                } else {
                    false
                }
            });
            if !still_flapping {
                break;
            }
            let phase_duration = if cut_phase {
                schedule.cut_duration
            } else {
                schedule.period.saturating_sub(schedule.cut_duration)
            };
            tokio::select! {
                _ = tokio::time::sleep(phase_duration) => {}
                changed = faults.wait_for(|f| f.flap != Some(schedule)) => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                _ = stop.changed() => return,
            }
            cut_phase = !cut_phase;
        }
    }
}

#[cfg(test)]
mod tests;
