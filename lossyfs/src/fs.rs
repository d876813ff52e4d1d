//! The FUSE side: every operation applied to the backing directory, file data kept in
//! [`Overlay`]s until fsync, namespace changes recorded in an undo log until their
//! directory is fsynced. All state sits behind one mutex; every operation takes it for
//! its whole duration (the daemon is a test tool, and one lock keeps the model easy to
//! check: no operation ever sees another half done).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::overlay::{read_full_at, Overlay, PAGE_BYTES};

/// Name of the hidden directory (in the backing root) that holds unlinked files and
/// replaced rename targets until their directory is fsynced.
pub(crate) const TRASH_DIR: &str = ".lossyfs-trash";

/// How long the kernel may cache attributes and names. Everything goes through the
/// kernel while mounted, so its caches stay coherent; a crash unmounts, and a remount
/// starts with empty caches.
const TTL: Duration = Duration::from_secs(1);

/// `size_limit_bytes` value meaning "no limit".
const NO_LIMIT: u64 = u64::MAX;

/// State shared by the FUSE threads and the test's [`crate::Controls`].
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    pub(crate) fail_next_fsync: AtomicBool,
    pub(crate) size_limit_bytes: AtomicU64,
    pub(crate) fsyncs: AtomicU64,
    pub(crate) fsyncdirs: AtomicU64,
    pub(crate) failed_fsyncs: AtomicU64,
    pub(crate) bytes_dropped: AtomicU64,
}

impl Shared {
    pub(crate) fn new(state: State) -> Shared {
        Shared {
            state: Mutex::new(state),
            fail_next_fsync: AtomicBool::new(false),
            size_limit_bytes: AtomicU64::new(NO_LIMIT),
            fsyncs: AtomicU64::new(0),
            fsyncdirs: AtomicU64::new(0),
            failed_fsyncs: AtomicU64::new(0),
            bytes_dropped: AtomicU64::new(0),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in one operation must not wedge the mount for the test's clean-up.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn size_limit(&self) -> Option<u64> {
        match self.size_limit_bytes.load(SeqCst) {
            NO_LIMIT => None,
            limit => Some(limit),
        }
    }

    pub(crate) fn set_size_limit(&self, limit: Option<u64>) {
        self.size_limit_bytes
            .store(limit.unwrap_or(NO_LIMIT).min(NO_LIMIT - 1), SeqCst);
    }
}

/// One namespace change that no directory fsync has made durable yet.
#[derive(Debug)]
enum UndoOp {
    /// A file or directory was created at `rel`.
    Created { rel: PathBuf },
    /// `rel` was unlinked or rmdir'ed; it waits in the trash at `trash`.
    Removed { rel: PathBuf, trash: PathBuf },
    /// `from` was renamed to `to`; what `to` named before waits at `replaced`.
    Renamed {
        from: PathBuf,
        to: PathBuf,
        replaced: Option<PathBuf>,
    },
}

#[derive(Debug)]
struct Undo {
    /// The directory whose fsync makes the change durable (for a rename: the target's).
    dir_ino: u64,
    op: UndoOp,
}

/// What [`State::crash`] threw away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Bytes in dirty overlay pages (page granularity) that never reached the backing dir.
    pub bytes_dropped: u64,
    /// Files whose unsynced size or data were dropped.
    pub files_dropped: u64,
    /// Namespace changes (create, mkdir, rename, unlink, rmdir) undone.
    pub namespace_ops_undone: u64,
}

/// Everything the file system knows (see the module docs).
#[derive(Debug)]
pub(crate) struct State {
    backing: PathBuf,
    /// After a crash every operation fails with EIO: nothing may reach the backing
    /// directory after the moment of the power loss.
    crashed: bool,
    /// Inode number → path relative to the backing root ("" is the root).
    nodes: HashMap<u64, PathBuf>,
    paths: HashMap<PathBuf, u64>,
    next_ino: u64,
    /// Open file handles → the backing file.
    files: HashMap<u64, Arc<File>>,
    dirs: HashMap<u64, Vec<(u64, FileType, OsString)>>,
    next_fh: u64,
    overlays: HashMap<u64, Overlay>,
    undo: Vec<Undo>,
    next_trash: u64,
    /// Sum of the sizes of all files as the running process sees them.
    used_bytes: u64,
}

type OpResult<T> = Result<T, Errno>;

fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

fn kind_of(ft: fs::FileType) -> FileType {
    if ft.is_dir() {
        FileType::Directory
    } else if ft.is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs.clamp(0, 999_999_999) as u32)
    } else {
        UNIX_EPOCH
    }
}

/// Sum of the sizes of the regular files under `dir`, skipping the trash.
fn file_bytes_under(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() == TRASH_DIR {
            continue;
        }
        let meta = entry.metadata()?;
        if meta.is_dir() {
            total += file_bytes_under(&entry.path())?;
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

impl State {
    /// State over `backing` (canonical); clears a trash left by an earlier run that
    /// ended without a crash or unmount.
    pub(crate) fn over(backing: PathBuf) -> io::Result<State> {
        let trash = backing.join(TRASH_DIR);
        if trash.exists() {
            fs::remove_dir_all(&trash)?;
        }
        fs::create_dir(&trash)?;
        let used_bytes = file_bytes_under(&backing)?;
        let mut nodes = HashMap::new();
        let mut paths = HashMap::new();
        nodes.insert(INodeNo::ROOT.0, PathBuf::new());
        paths.insert(PathBuf::new(), INodeNo::ROOT.0);
        Ok(State {
            backing,
            crashed: false,
            nodes,
            paths,
            next_ino: INodeNo::ROOT.0 + 1,
            files: HashMap::new(),
            dirs: HashMap::new(),
            next_fh: 1,
            overlays: HashMap::new(),
            undo: Vec::new(),
            next_trash: 0,
            used_bytes,
        })
    }

    fn check_live(&self) -> OpResult<()> {
        if self.crashed {
            Err(Errno::EIO)
        } else {
            Ok(())
        }
    }

    fn rel(&self, ino: u64) -> OpResult<PathBuf> {
        self.nodes.get(&ino).cloned().ok_or(Errno::ENOENT)
    }

    fn abs(&self, rel: &Path) -> PathBuf {
        self.backing.join(rel)
    }

    /// Path of a child; the trash is invisible.
    fn child(&self, parent: u64, name: &OsStr) -> OpResult<PathBuf> {
        if parent == INodeNo::ROOT.0 && name == TRASH_DIR {
            return Err(Errno::EACCES);
        }
        Ok(self.rel(parent)?.join(name))
    }

    fn ino_for(&mut self, rel: &Path) -> u64 {
        if let Some(&ino) = self.paths.get(rel) {
            return ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, rel.to_path_buf());
        self.paths.insert(rel.to_path_buf(), ino);
        ino
    }

    fn new_trash_path(&mut self) -> PathBuf {
        self.next_trash += 1;
        Path::new(TRASH_DIR).join(self.next_trash.to_string())
    }

    fn attr(&self, ino: u64, meta: &fs::Metadata) -> FileAttr {
        let (size, blocks) = match self.overlays.get(&ino) {
            Some(o) => (o.size_bytes(), o.size_bytes().div_ceil(512)),
            None => (meta.len(), meta.blocks()),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks,
            atime: time(meta.atime(), meta.atime_nsec()),
            mtime: time(meta.mtime(), meta.mtime_nsec()),
            ctime: time(meta.ctime(), meta.ctime_nsec()),
            crtime: time(meta.ctime(), meta.ctime_nsec()),
            kind: kind_of(meta.file_type()),
            perm: (meta.mode() & 0o7777) as u16,
            nlink: meta.nlink() as u32,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: meta.rdev() as u32,
            blksize: PAGE_BYTES as u32,
            flags: 0,
        }
    }

    fn attr_of_path(&mut self, rel: &Path) -> OpResult<FileAttr> {
        let meta = fs::symlink_metadata(self.abs(rel)).map_err(errno)?;
        let ino = self.ino_for(rel);
        Ok(self.attr(ino, &meta))
    }

    fn attr_of_ino(&self, ino: u64, fh: Option<u64>) -> OpResult<FileAttr> {
        let meta = match fh.and_then(|fh| self.files.get(&fh)) {
            Some(file) => file.metadata().map_err(errno)?,
            None => fs::symlink_metadata(self.abs(&self.rel(ino)?)).map_err(errno)?,
        };
        Ok(self.attr(ino, &meta))
    }

    /// Size of the file at `rel` as the running process sees it (0 for non-files).
    fn visible_size(&self, rel: &Path) -> u64 {
        if let Some(o) = self.paths.get(rel).and_then(|ino| self.overlays.get(ino)) {
            return o.size_bytes();
        }
        fs::symlink_metadata(self.abs(rel))
            .ok()
            .filter(|m| m.is_file())
            .map_or(0, |m| m.len())
    }

    /// The backing file of `fh`, or (without one) the file opened by path.
    fn file_for(&self, ino: u64, fh: Option<u64>) -> OpResult<Arc<File>> {
        if let Some(file) = fh.and_then(|fh| self.files.get(&fh)) {
            return Ok(file.clone());
        }
        let path = self.abs(&self.rel(ino)?);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(errno)?;
        Ok(Arc::new(file))
    }

    fn overlay(&mut self, ino: u64, file: &File) -> OpResult<&mut Overlay> {
        match self.overlays.entry(ino) {
            std::collections::hash_map::Entry::Occupied(o) => Ok(o.into_mut()),
            std::collections::hash_map::Entry::Vacant(v) => {
                let len = file.metadata().map_err(errno)?.len();
                Ok(v.insert(Overlay::new(len)))
            }
        }
    }

    /// ENOSPC if growing a file from `old` to `new` bytes would pass the size limit.
    fn reserve(&mut self, limit: Option<u64>, old: u64, new: u64) -> OpResult<()> {
        if new > old {
            let grown = self.used_bytes + (new - old);
            if limit.is_some_and(|l| grown > l) {
                return Err(Errno::ENOSPC);
            }
        }
        self.used_bytes = (self.used_bytes + new).saturating_sub(old);
        Ok(())
    }

    fn lookup(&mut self, parent: u64, name: &OsStr) -> OpResult<FileAttr> {
        self.check_live()?;
        let rel = self.child(parent, name).map_err(|_| Errno::ENOENT)?;
        self.attr_of_path(&rel)
    }

    fn create(&mut self, parent: u64, name: &OsStr, mode: u32) -> OpResult<(FileAttr, u64)> {
        self.check_live()?;
        let rel = self.child(parent, name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(self.abs(&rel))
            .map_err(errno)?;
        self.undo.push(Undo {
            dir_ino: parent,
            op: UndoOp::Created { rel: rel.clone() },
        });
        let ino = self.ino_for(&rel);
        let meta = file.metadata().map_err(errno)?;
        let attr = self.attr(ino, &meta);
        let fh = self.add_open(file);
        Ok((attr, fh))
    }

    fn add_open(&mut self, file: File) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.files.insert(fh, Arc::new(file));
        fh
    }

    fn open_file(&mut self, ino: u64) -> OpResult<u64> {
        self.check_live()?;
        let path = self.abs(&self.rel(ino)?);
        // Always read-write: fsync writes the overlay through this descriptor. (Root
        // opens anything; the kernel checked the caller's access already.)
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .or_else(|_| File::open(&path))
            .map_err(errno)?;
        Ok(self.add_open(file))
    }

    fn mkdir(&mut self, parent: u64, name: &OsStr, mode: u32) -> OpResult<FileAttr> {
        self.check_live()?;
        let rel = self.child(parent, name)?;
        fs::DirBuilder::new()
            .mode(mode)
            .create(self.abs(&rel))
            .map_err(errno)?;
        self.undo.push(Undo {
            dir_ino: parent,
            op: UndoOp::Created { rel: rel.clone() },
        });
        self.attr_of_path(&rel)
    }

    /// Moves `rel` into the trash; its inode now names the trash path (open
    /// descriptors keep working). Returns the trash path.
    fn move_to_trash(&mut self, rel: &Path) -> OpResult<PathBuf> {
        let size = self.visible_size(rel);
        let trash = self.new_trash_path();
        fs::rename(self.abs(rel), self.abs(&trash)).map_err(errno)?;
        self.used_bytes = self.used_bytes.saturating_sub(size);
        self.move_paths(rel, &trash);
        Ok(trash)
    }

    /// Renames every known path at or under `from` to the same place under `to`.
    fn move_paths(&mut self, from: &Path, to: &Path) {
        let moved: Vec<(PathBuf, u64)> = self
            .paths
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, &ino)| (p.clone(), ino))
            .collect();
        for (old, ino) in moved {
            self.paths.remove(&old);
            let new = match old.strip_prefix(from) {
                Ok(rest) if rest.as_os_str().is_empty() => to.to_path_buf(),
                Ok(rest) => to.join(rest),
                Err(_) => continue,
            };
            self.paths.insert(new.clone(), ino);
            self.nodes.insert(ino, new);
        }
    }

    fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> OpResult<()> {
        self.check_live()?;
        let rel = self.child(parent, name)?;
        let meta = fs::symlink_metadata(self.abs(&rel)).map_err(errno)?;
        if dir {
            if !meta.is_dir() {
                return Err(Errno::ENOTDIR);
            }
            let mut entries = fs::read_dir(self.abs(&rel)).map_err(errno)?;
            if entries.next().is_some() {
                return Err(Errno::ENOTEMPTY);
            }
        } else if meta.is_dir() {
            return Err(Errno::EISDIR);
        }
        let trash = self.move_to_trash(&rel)?;
        self.undo.push(Undo {
            dir_ino: parent,
            op: UndoOp::Removed { rel, trash },
        });
        Ok(())
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> OpResult<()> {
        self.check_live()?;
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return Err(Errno::EINVAL);
        }
        let from = self.child(parent, name)?;
        let to = self.child(new_parent, new_name)?;
        let from_meta = fs::symlink_metadata(self.abs(&from)).map_err(errno)?;
        if to.starts_with(&from) && to != from {
            return Err(Errno::EINVAL);
        }
        if from == to {
            return Ok(());
        }
        let mut replaced = None;
        if let Ok(to_meta) = fs::symlink_metadata(self.abs(&to)) {
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            match (from_meta.is_dir(), to_meta.is_dir()) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) => {
                    let mut entries = fs::read_dir(self.abs(&to)).map_err(errno)?;
                    if entries.next().is_some() {
                        return Err(Errno::ENOTEMPTY);
                    }
                }
                (false, false) => {}
            }
            replaced = Some(self.move_to_trash(&to)?);
        }
        if let Err(e) = fs::rename(self.abs(&from), self.abs(&to)) {
            if let Some(trash) = &replaced {
                let _ = fs::rename(self.abs(trash), self.abs(&to));
                self.move_paths(trash, &to);
            }
            return Err(errno(e));
        }
        self.move_paths(&from, &to);
        self.undo.push(Undo {
            dir_ino: new_parent,
            op: UndoOp::Renamed { from, to, replaced },
        });
        Ok(())
    }

    fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> OpResult<Vec<u8>> {
        self.check_live()?;
        let file = self.file_for(ino, Some(fh))?;
        match self.overlays.get(&ino) {
            Some(o) => o.read(&file, offset, size as usize).map_err(errno),
            None => {
                let mut buf = vec![0u8; size as usize];
                let n = read_full_at(&file, &mut buf, offset).map_err(errno)?;
                buf.truncate(n);
                Ok(buf)
            }
        }
    }

    fn write(
        &mut self,
        limit: Option<u64>,
        ino: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
    ) -> OpResult<()> {
        self.check_live()?;
        let file = self.file_for(ino, Some(fh))?;
        let old = self.overlay(ino, &file)?.size_bytes();
        let new = old.max(offset + data.len() as u64);
        self.reserve(limit, old, new)?;
        let result = self.overlay(ino, &file)?.write(&file, offset, data);
        if let Err(e) = result {
            self.used_bytes = (self.used_bytes + old).saturating_sub(new);
            return Err(errno(e));
        }
        Ok(())
    }

    fn set_size(
        &mut self,
        limit: Option<u64>,
        ino: u64,
        fh: Option<u64>,
        size: u64,
    ) -> OpResult<()> {
        let file = self.file_for(ino, fh)?;
        let old = self.overlay(ino, &file)?.size_bytes();
        self.reserve(limit, old, size)?;
        self.overlay(ino, &file)?.set_size(size);
        Ok(())
    }

    fn fallocate(
        &mut self,
        limit: Option<u64>,
        ino: u64,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> OpResult<()> {
        self.check_live()?;
        let file = self.file_for(ino, Some(fh))?;
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let zero = mode & (libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_PUNCH_HOLE) != 0;
        let known =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_PUNCH_HOLE;
        if mode & !known != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
        let old = self.overlay(ino, &file)?.size_bytes();
        let new = if keep_size { old } else { old.max(end) };
        self.reserve(limit, old, new)?;
        let overlay = self.overlay(ino, &file)?;
        if zero {
            overlay
                .zero(&file, offset, end, !keep_size)
                .map_err(errno)?;
        }
        overlay.set_size(new);
        Ok(())
    }

    /// fsync/fdatasync: the overlay goes to the backing file, which is synced.
    fn fsync(&mut self, shared: &Shared, ino: u64, fh: u64, datasync: bool) -> OpResult<()> {
        self.check_live()?;
        shared.fsyncs.fetch_add(1, SeqCst);
        if shared.fail_next_fsync.swap(false, SeqCst) {
            // Like Linux after a writeback error: the data is gone, the pages count as
            // clean, so a later fsync succeeds without writing them.
            shared.failed_fsyncs.fetch_add(1, SeqCst);
            if let Some(o) = self.overlays.get_mut(&ino) {
                shared.bytes_dropped.fetch_add(o.forget_pages(), SeqCst);
            }
            return Err(Errno::EIO);
        }
        let file = self.file_for(ino, Some(fh))?;
        if let Some(overlay) = self.overlays.get(&ino) {
            overlay.write_back(&file).map_err(errno)?;
            self.overlays.remove(&ino);
        }
        let synced = if datasync {
            file.sync_data()
        } else {
            file.sync_all()
        };
        synced.map_err(errno)
    }

    /// fsync of a directory: its namespace changes become durable.
    fn fsyncdir(&mut self, shared: &Shared, ino: u64) -> OpResult<()> {
        self.check_live()?;
        shared.fsyncdirs.fetch_add(1, SeqCst);
        let (durable, pending): (Vec<Undo>, Vec<Undo>) = std::mem::take(&mut self.undo)
            .into_iter()
            .partition(|u| u.dir_ino == ino);
        self.undo = pending;
        for u in durable {
            let trash = match u.op {
                UndoOp::Removed { trash, .. } => Some(trash),
                UndoOp::Renamed { replaced, .. } => replaced,
                UndoOp::Created { .. } => None,
            };
            if let Some(trash) = trash {
                // An inode still open keeps its data; it only loses its (trash) name.
                let path = self.abs(&trash);
                let _ = fs::remove_file(&path).or_else(|_| fs::remove_dir_all(&path));
            }
        }
        let dir = self.abs(&self.rel(ino)?);
        File::open(dir).and_then(|d| d.sync_all()).map_err(errno)
    }

    fn opendir(&mut self, ino: u64) -> OpResult<u64> {
        self.check_live()?;
        let rel = self.rel(ino)?;
        let mut entries = vec![
            (ino, FileType::Directory, OsString::from(".")),
            (ino, FileType::Directory, OsString::from("..")),
        ];
        for entry in fs::read_dir(self.abs(&rel)).map_err(errno)? {
            let entry = entry.map_err(errno)?;
            let name = entry.file_name();
            if ino == INodeNo::ROOT.0 && name == TRASH_DIR {
                continue;
            }
            let kind = kind_of(entry.file_type().map_err(errno)?);
            let child = self.ino_for(&rel.join(&name));
            entries.push((child, kind, name));
        }
        let fh = self.next_fh;
        self.next_fh += 1;
        self.dirs.insert(fh, entries);
        Ok(fh)
    }

    fn setattr_rest(
        &mut self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> OpResult<()> {
        let path = self.abs(&self.rel(ino)?);
        if let Some(mode) = mode {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777)).map_err(errno)?;
        }
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::chown(&path, uid, gid).map_err(errno)?;
        }
        Ok(())
    }

    /// The power loss: unsynced data and namespace changes are undone in the backing
    /// directory, newest first, and the trash is emptied.
    pub(crate) fn crash(&mut self) -> CrashReport {
        let mut report = CrashReport::default();
        if self.crashed {
            return report;
        }
        self.crashed = true;
        for (_, o) in self.overlays.drain() {
            report.bytes_dropped += o.dirty_bytes();
            report.files_dropped += 1;
        }
        self.files.clear();
        while let Some(u) = self.undo.pop() {
            report.namespace_ops_undone += 1;
            match u.op {
                UndoOp::Created { rel } => {
                    let path = self.abs(&rel);
                    let _ = fs::remove_file(&path).or_else(|_| fs::remove_dir_all(&path));
                }
                UndoOp::Removed { rel, trash } => {
                    if fs::symlink_metadata(self.abs(&rel)).is_err() {
                        let _ = fs::rename(self.abs(&trash), self.abs(&rel));
                    }
                }
                UndoOp::Renamed { from, to, replaced } => {
                    if fs::symlink_metadata(self.abs(&from)).is_err() {
                        let _ = fs::rename(self.abs(&to), self.abs(&from));
                    }
                    if let Some(trash) = replaced {
                        if fs::symlink_metadata(self.abs(&to)).is_err() {
                            let _ = fs::rename(self.abs(&trash), self.abs(&to));
                        }
                    }
                }
            }
        }
        let _ = fs::remove_dir_all(self.backing.join(TRASH_DIR));
        report
    }
}

/// The `fuser` file system: a handle on [`Shared`].
pub(crate) struct LossyFuse {
    pub(crate) shared: Arc<Shared>,
}

impl LossyFuse {
    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }
}

impl Filesystem for LossyFuse {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.state().lookup(parent.0, name) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let state = self.state();
        let result = state
            .check_live()
            .and_then(|()| state.attr_of_ino(ino.0, fh.map(|f| f.0)));
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let limit = self.shared.size_limit();
        let mut state = self.state();
        let fh = fh.map(|f| f.0);
        let result = state
            .check_live()
            .and_then(|()| match size {
                Some(size) => state.set_size(limit, ino.0, fh, size),
                None => Ok(()),
            })
            .and_then(|()| state.setattr_rest(ino.0, mode, uid, gid))
            .and_then(|()| state.attr_of_ino(ino.0, fh));
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match self.state().mkdir(parent.0, name, mode & !umask) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.state().remove(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.state().remove(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self
            .state()
            .rename(parent.0, name, newparent.0, newname, flags)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state().open_file(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        match self.state().read(ino.0, fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let limit = self.shared.size_limit();
        match self.state().write(limit, ino.0, fh.0, offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // The overlay stays: unsynced data outlives the descriptor, as in the page cache.
        self.state().files.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.state().fsync(&self.shared, ino.0, fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state().opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let state = self.state();
        let Some(entries) = state.dirs.get(&fh.0) else {
            reply.error(Errno::EBADF);
            return;
        };
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.state().dirs.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.state().fsyncdir(&self.shared, ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let state = self.state();
        let backing = match rustix::fs::statvfs(&state.backing) {
            Ok(s) => s,
            Err(e) => {
                reply.error(Errno::from_i32(e.raw_os_error()));
                return;
            }
        };
        let block = PAGE_BYTES;
        let (blocks, free) = match self.shared.size_limit() {
            // Consistent with the limit, so a free-space check sees what ENOSPC will do.
            Some(limit) => (
                limit / block,
                limit.saturating_sub(state.used_bytes) / block,
            ),
            None => {
                let frsize = backing.f_frsize.max(1);
                (
                    backing.f_blocks * frsize / block,
                    backing.f_bavail * frsize / block,
                )
            }
        };
        reply.statfs(
            blocks,
            free,
            free,
            backing.f_files,
            backing.f_ffree,
            block as u32,
            255,
            block as u32,
        );
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.state().create(parent.0, name, mode & !umask & 0o7777) {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let limit = self.shared.size_limit();
        match self
            .state()
            .fallocate(limit, ino.0, fh.0, offset, length, mode)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
