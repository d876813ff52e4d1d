//! # rill-lossyfs: a file system that loses what was not fsynced
//!
//! A FUSE file system for durability tests. It passes every operation through to a
//! real *backing* directory, except that it holds back what a power loss would lose,
//! and [`Mounted::crash`] throws exactly that away. A test runs the broker on the
//! mount, SIGKILLs it, crashes the file system, mounts it again over the same backing
//! directory, and checks that the broker kept every promise it made. A broker that
//! skips an fsync passes a SIGKILL-only test (the page cache survives the process);
//! it fails here.
//!
//! # Layout
//!
//! | module | what it holds |
//! |---|---|
//! | `overlay` | [`Overlay`](overlay): one file's unsynced pages and size, merged over the backing file on read |
//! | `fs` | the `fuser::Filesystem`: state, undo log, fault injection; [`CrashReport`] |
//! | this file | [`LossyFs::mount`], [`Mounted`], [`Controls`] |
//!
//! # The model
//!
//! * **File data.** A `write`, `ftruncate`/`truncate` (setattr size) or `fallocate`
//!   changes only an in-memory overlay of the file (4 KiB pages plus the size). Reads
//!   merge the overlay over the backing file, so the running process sees its writes.
//!   `fsync` or `fdatasync` of the file writes its overlay into the backing file and
//!   fsyncs that. A crash drops every overlay: the backing file stays as of its last
//!   fsync. Whether a write happened through one descriptor or another does not
//!   matter: the overlay belongs to the inode, as the page cache does.
//! * **Names.** `create`, `mkdir`, `rename`, `unlink` and `rmdir` are applied to the
//!   backing directory at once, and recorded in an undo log tagged with the directory
//!   whose fsync makes them durable (for a rename: the target's directory). Unlinked
//!   files and replaced rename targets wait in a hidden trash directory
//!   (`.lossyfs-trash` in the backing root, invisible through the mount). `fsyncdir`
//!   of a directory drops its entries from the log (emptying their trash). A crash
//!   undoes every entry left, newest first: a file created and fdatasync'd whose
//!   directory was never fsynced disappears, as on ext4 `data=ordered` without a
//!   directory fsync; an unlinked file comes back; a rename goes back.
//! * **Faults.** [`Controls::fail_next_fsync`] makes the next file fsync fail with
//!   `EIO` *and forget the overlay's pages* (the size stays), as Linux marks pages
//!   clean after a writeback error: a later fsync succeeds without writing them, so it
//!   must not be trusted to cover them. [`Controls::set_size_limit_bytes`] caps the sum
//!   of all file sizes: a write, truncate or fallocate that would pass it fails with
//!   `ENOSPC`, and `statfs` reports `free = limit - used`.
//!
//! # Simplifications (where this is kinder or harsher than a real disk)
//!
//! * A crash loses *all* unsynced data; a real disk may have written some of it
//!   (any prefix, in any order). Torn, partially persisted writes are not simulated.
//! * fsync of a file does not make its directory entry durable (ext4 usually does, as
//!   part of the journal commit; POSIX does not promise it).
//! * Only the file's size and data are held back; mode, owner and times are passed
//!   through at once. Undo after a mix of durable and undone changes in *different*
//!   directories (a rename between directories of which only one was fsynced) is best
//!   effort: entries whose paths no longer match are skipped.
//! * The size limit counts file sizes, not allocated blocks; unlinked files stop
//!   counting at once. Hard links and symlinks are not supported (`EPERM`).
//! * Inode numbers are the daemon's own, never reused within a mount, never forgotten.
//! * The mount uses the kernel's default write-through mode (no writeback cache), so
//!   every write reaches the daemon before `write` returns, and the page cache stays on
//!   (shared read-only `mmap` works).

#![forbid(unsafe_code)]

mod fs;
mod overlay;

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

pub use crate::fs::CrashReport;
use crate::fs::{LossyFuse, Shared, State};

/// Mount options of a [`LossyFs`].
#[derive(Debug, Clone, Default)]
pub struct MountOptions {
    /// Cap on the total size of the files (`ENOSPC` past it); `None`: no cap.
    pub size_limit_bytes: Option<u64>,
}

/// The file system (see the crate docs).
#[derive(Debug)]
pub struct LossyFs;

impl LossyFs {
    /// Mounts a lossy view of `backing` at `mountpoint` (both existing directories),
    /// served by a background thread of this process.
    ///
    /// Fails (with the OS error) if `/dev/fuse` is missing or mounting is not
    /// permitted; [`fuse_unavailable`] tells those cases apart for tests that skip.
    pub fn mount(backing: &Path, mountpoint: &Path, options: &MountOptions) -> io::Result<Mounted> {
        let backing = backing.canonicalize()?;
        let mountpoint = mountpoint.canonicalize()?;
        let shared = Arc::new(Shared::new(State::over(backing.clone())?));
        shared.set_size_limit(options.size_limit_bytes);
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("lossyfs".to_string()),
            fuser::MountOption::Subtype("lossyfs".to_string()),
            fuser::MountOption::NoAtime,
        ];
        let fs = LossyFuse {
            shared: shared.clone(),
        };
        let session = fuser::spawn_mount(fs, &mountpoint, &config)?;
        Ok(Mounted {
            session: Some(session),
            shared,
            mountpoint,
            backing,
        })
    }
}

/// For tests: mounts lossyfs over a fresh temporary backing directory on a fresh
/// temporary mount point (names start with `prefix`), returning `(backing, mount
/// point, mount)`. Drop the mount before the directories. `None`, after printing that
/// `test` is skipped and why, only where FUSE cannot be used; any other failure panics.
pub fn mount_in_temp_dirs(
    test: &str,
    prefix: &str,
    options: &MountOptions,
) -> Option<(tempfile::TempDir, tempfile::TempDir, Mounted)> {
    let temp_dir = |kind: &str| {
        tempfile::Builder::new()
            .prefix(&format!("{prefix}{kind}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("{kind} dir: {e}"))
    };
    let (backing, mountpoint) = (temp_dir("backing"), temp_dir("mnt"));
    match LossyFs::mount(backing.path(), mountpoint.path(), options) {
        Ok(mounted) => Some((backing, mountpoint, mounted)),
        Err(e) if fuse_unavailable(&e) => {
            println!("SKIPPED {test}: FUSE is not available here ({e})");
            None
        }
        Err(e) => panic!("mount lossyfs: {e}"),
    }
}

/// Whether `err` (from [`LossyFs::mount`]) means FUSE cannot be used on this machine
/// (no `/dev/fuse`, no permission to mount, no `fusermount3`), as opposed to a bug.
pub fn fuse_unavailable(err: &io::Error) -> bool {
    !Path::new("/dev/fuse").exists()
        || matches!(
            err.kind(),
            io::ErrorKind::PermissionDenied | io::ErrorKind::NotFound
        )
        || err.raw_os_error() == Some(libc::EPERM)
}

/// A mounted [`LossyFs`]. Dropping it crashes it (see [`Mounted::crash`]), so a
/// failing test leaves no mount behind.
#[derive(Debug)]
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    shared: Arc<Shared>,
    mountpoint: PathBuf,
    backing: PathBuf,
}

impl Mounted {
    /// Fault injection and counters of this mount.
    pub fn controls(&self) -> Controls {
        Controls {
            shared: self.shared.clone(),
        }
    }

    /// Where the file system is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The backing directory.
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Power loss: unmounts (lazily, so it works right after the process using the
    /// mount was SIGKILLed) and undoes everything not made durable, leaving the
    /// backing directory as the disk would be after the power came back. From the
    /// moment of the call every operation on the old mount fails with `EIO`.
    pub fn crash(mut self) -> io::Result<CrashReport> {
        self.teardown()
    }

    fn teardown(&mut self) -> io::Result<CrashReport> {
        let Some(session) = self.session.take() else {
            return Ok(CrashReport::default());
        };
        // The power goes first: nothing reaches the backing directory after this.
        let report = self.shared.lock().crash();
        self.shared
            .bytes_dropped
            .fetch_add(report.bytes_dropped, SeqCst);
        let unmounted = lazy_unmount(&self.mountpoint);
        // fuser's own unmount on drop finds the mount gone; its thread ends when the
        // kernel closes the connection (at once, unless something still holds a file
        // of the old mount open, in which case it answers EIO until then).
        drop(session);
        unmounted.map(|()| report)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

fn lazy_unmount(mountpoint: &Path) -> io::Result<()> {
    match rustix::mount::unmount(mountpoint, rustix::mount::UnmountFlags::DETACH) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::PERM => {
            // Not root: the setuid helper can unmount what we mounted.
            let status = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(mountpoint)
                .status()?;
            if status.success() {
                Ok(())
            } else {
                Err(io::Error::other(format!(
                    "fusermount3 -u -z {} failed: {status}",
                    mountpoint.display()
                )))
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Fault injection and counters of a [`Mounted`] file system; cheap to clone, usable
/// from any thread.
#[derive(Debug, Clone)]
pub struct Controls {
    shared: Arc<Shared>,
}

impl Controls {
    /// The next fsync/fdatasync of a file fails with `EIO` and forgets that file's
    /// unsynced pages (see the crate docs).
    pub fn fail_next_fsync(&self) {
        self.shared.fail_next_fsync.store(true, SeqCst);
    }

    /// Caps the total size of all files (`None`: no cap). Files already past it stay;
    /// only growth fails.
    pub fn set_size_limit_bytes(&self, limit: Option<u64>) {
        self.shared.set_size_limit(limit);
    }

    /// File fsyncs and fdatasyncs seen (failed ones included).
    pub fn fsyncs(&self) -> u64 {
        self.shared.fsyncs.load(SeqCst)
    }

    /// Directory fsyncs seen.
    pub fn dir_fsyncs(&self) -> u64 {
        self.shared.fsyncdirs.load(SeqCst)
    }

    /// File fsyncs failed on purpose ([`Controls::fail_next_fsync`]).
    pub fn failed_fsyncs(&self) -> u64 {
        self.shared.failed_fsyncs.load(SeqCst)
    }

    /// Unsynced bytes thrown away so far (by failed fsyncs and by the crash), counted
    /// in whole pages.
    pub fn bytes_dropped(&self) -> u64 {
        self.shared.bytes_dropped.load(SeqCst)
    }

    /// Whether the next fsync is still armed to fail.
    pub fn fsync_failure_armed(&self) -> bool {
        self.shared.fail_next_fsync.load(SeqCst)
    }
}
