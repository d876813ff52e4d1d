//! What the suite must undo if it is interrupted: the processes it started (stopped by
//! pid) and its data directory (removed). Ctrl-C (SIGINT) and SIGTERM run
//! [`interrupted`], which stops and removes them and exits; a normal end drops each
//! broker (stopping it) and removes the directory itself.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Pids of the running processes the suite started.
static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// The data directory to remove on interruption.
static DATA_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// How long interrupted children get to exit after SIGTERM before SIGKILL.
const INTERRUPT_GRACE: Duration = Duration::from_secs(5);

/// Remembers `pid` as a process to stop on interruption.
pub(crate) fn register_pid(pid: u32) {
    if let Ok(mut pids) = PIDS.lock() {
        pids.push(pid);
    }
}

/// Forgets `pid` (it is stopped or reaped by its owner).
pub(crate) fn unregister_pid(pid: u32) {
    if let Ok(mut pids) = PIDS.lock() {
        pids.retain(|p| *p != pid);
    }
}

/// Remembers the data directory to remove on interruption.
pub(crate) fn set_data_dir(dir: PathBuf) {
    if let Ok(mut d) = DATA_DIR.lock() {
        *d = Some(dir);
    }
}

/// Sends `signal` to `pid`.
pub(crate) fn signal(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Stops `child` by its pid: SIGTERM, then SIGKILL if it has not exited after
/// `grace`; reaps it and forgets its pid.
pub(crate) fn stop_child(child: &mut std::process::Child, grace: Duration) {
    unregister_pid(child.id());
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    signal(child.id(), libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Whether `pid` still exists (a zombie counts until it is reaped).
fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Stops every registered process (SIGTERM, SIGKILL after a grace period), removes the
/// data directory and exits with 130.
fn interrupted() -> ! {
    eprintln!("rill-bench: interrupted; stopping brokers and clients, removing data");
    let pids: Vec<u32> = PIDS.lock().map(|p| p.clone()).unwrap_or_default();
    for pid in &pids {
        signal(*pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + INTERRUPT_GRACE;
    // Our children stay as zombies until reaped: reap them while waiting.
    while Instant::now() < deadline && pids.iter().any(|p| alive(*p)) {
        for pid in &pids {
            let mut status = 0;
            if let Ok(p) = libc::pid_t::try_from(*pid) {
                // SAFETY: waitpid writes only into `status`, a valid local.
                unsafe {
                    libc::waitpid(p, &mut status, libc::WNOHANG);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in &pids {
        if alive(*pid) {
            signal(*pid, libc::SIGKILL);
        }
    }
    if let Some(dir) = DATA_DIR.lock().ok().and_then(|d| d.clone()) {
        let _ = std::fs::remove_dir_all(dir);
    }
    std::process::exit(130);
}

/// Installs the SIGINT/SIGTERM handling: a thread that waits for either and then
/// cleans up (so no signal-handler restrictions apply to the clean-up itself).
pub(crate) fn install() {
    std::thread::spawn(|| {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            interrupted();
        });
    });
}
