//! The power-loss model, through a real mount: what survives `crash()` is exactly
//! what was fsynced (data) and what a directory fsync covered (names).
//!
//! Each test skips, with a message, only when FUSE is unavailable (no `/dev/fuse`, no
//! permission to mount).

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rill_lossyfs::{LossyFs, MountOptions, Mounted};

/// A backing directory, a mount point and the mount over them. Fields drop in order:
/// the mount goes before the directories under it are removed.
struct Fixture {
    mounted: Option<Mounted>,
    mountpoint: tempfile::TempDir,
    backing: tempfile::TempDir,
}

impl Fixture {
    fn mnt(&self, name: &str) -> PathBuf {
        self.mountpoint.path().join(name)
    }

    fn backing(&self, name: &str) -> PathBuf {
        self.backing.path().join(name)
    }

    fn mounted(&self) -> &Mounted {
        self.mounted.as_ref().expect("mounted")
    }

    fn crash(&mut self) -> rill_lossyfs::CrashReport {
        self.mounted
            .take()
            .expect("mounted")
            .crash()
            .expect("crash unmounts")
    }

    fn remount(&mut self) {
        assert!(self.mounted.is_none());
        self.mounted = Some(
            LossyFs::mount(
                self.backing.path(),
                self.mountpoint.path(),
                &MountOptions::default(),
            )
            .expect("remount"),
        );
    }
}

fn mount_or_skip(test: &str) -> Option<Fixture> {
    mount_with(test, MountOptions::default())
}

fn mount_with(test: &str, options: MountOptions) -> Option<Fixture> {
    let (backing, mountpoint, mounted) =
        rill_lossyfs::mount_in_temp_dirs(test, "lossyfs-", &options)?;
    Some(Fixture {
        mounted: Some(mounted),
        mountpoint,
        backing,
    })
}

fn fsync_dir(dir: &Path) {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .expect("fsync directory");
}

/// Creates `name` with `content`, fdatasyncs it and fsyncs the root: durable.
fn durable_file(fx: &Fixture, name: &str, content: &[u8]) {
    let mut f = File::create(fx.mnt(name)).expect("create");
    f.write_all(content).expect("write");
    f.sync_data().expect("fdatasync");
    fsync_dir(fx.mountpoint.path());
}

#[test]
fn write_without_fsync_is_visible_while_running_and_gone_after_crash() {
    let Some(mut fx) = mount_or_skip("write_without_fsync") else {
        return;
    };
    durable_file(&fx, "f", b"durable");
    let f = OpenOptions::new()
        .write(true)
        .open(fx.mnt("f"))
        .expect("open");
    f.write_all_at(b"-lost-tail", 7).expect("write");
    f.write_all_at(b"D", 0).expect("overwrite");
    assert_eq!(fs::read(fx.mnt("f")).expect("read"), b"Durable-lost-tail");
    assert_eq!(fs::read(fx.backing("f")).expect("read"), b"durable");
    drop(f);
    let report = fx.crash();
    assert_eq!(report.files_dropped, 1);
    assert_eq!(fs::read(fx.backing("f")).expect("read"), b"durable");
    fx.remount();
    assert_eq!(fs::read(fx.mnt("f")).expect("read"), b"durable");
}

#[test]
fn write_with_fdatasync_survives_crash() {
    let Some(mut fx) = mount_or_skip("write_with_fdatasync") else {
        return;
    };
    durable_file(&fx, "f", b"one");
    let f = OpenOptions::new()
        .write(true)
        .open(fx.mnt("f"))
        .expect("open");
    f.write_all_at(b"-two", 3).expect("write");
    f.sync_data().expect("fdatasync");
    fx.crash();
    assert_eq!(fs::read(fx.backing("f")).expect("read"), b"one-two");
}

#[test]
fn new_file_fdatasynced_without_directory_fsync_disappears() {
    let Some(mut fx) = mount_or_skip("new_file_without_dir_fsync") else {
        return;
    };
    let mut f = File::create(fx.mnt("new")).expect("create");
    f.write_all(b"data").expect("write");
    f.sync_data().expect("fdatasync");
    fs::create_dir(fx.mnt("sub")).expect("mkdir");
    assert!(fx.backing("new").exists());
    let report = fx.crash();
    assert_eq!(report.namespace_ops_undone, 2);
    assert!(!fx.backing("new").exists());
    assert!(!fx.backing("sub").exists());
}

#[test]
fn new_file_with_directory_fsync_is_kept() {
    let Some(mut fx) = mount_or_skip("new_file_with_dir_fsync") else {
        return;
    };
    fs::create_dir(fx.mnt("sub")).expect("mkdir");
    fsync_dir(fx.mountpoint.path());
    let mut f = File::create(fx.mnt("sub/new")).expect("create");
    f.write_all(b"data").expect("write");
    f.sync_data().expect("fdatasync");
    fsync_dir(&fx.mnt("sub"));
    fx.crash();
    assert_eq!(fs::read(fx.backing("sub/new")).expect("read"), b"data");
}

#[test]
fn rename_without_directory_fsync_is_undone_and_with_it_is_kept() {
    let Some(mut fx) = mount_or_skip("rename_undo") else {
        return;
    };
    durable_file(&fx, "meta", b"v1");
    // The atomic-replace idiom, missing its last step (the directory fsync).
    let mut tmp = File::create(fx.mnt("meta.tmp")).expect("create tmp");
    tmp.write_all(b"v2").expect("write");
    tmp.sync_all().expect("fsync tmp");
    fs::rename(fx.mnt("meta.tmp"), fx.mnt("meta")).expect("rename");
    assert_eq!(fs::read(fx.mnt("meta")).expect("read"), b"v2");
    fx.crash();
    assert_eq!(fs::read(fx.backing("meta")).expect("read"), b"v1");
    assert!(!fx.backing("meta.tmp").exists());

    fx.remount();
    let mut tmp = File::create(fx.mnt("meta.tmp")).expect("create tmp");
    tmp.write_all(b"v3").expect("write");
    tmp.sync_all().expect("fsync tmp");
    fs::rename(fx.mnt("meta.tmp"), fx.mnt("meta")).expect("rename");
    fsync_dir(fx.mountpoint.path());
    fx.crash();
    assert_eq!(fs::read(fx.backing("meta")).expect("read"), b"v3");
}

#[test]
fn unlink_and_rmdir_without_directory_fsync_are_undone() {
    let Some(mut fx) = mount_or_skip("unlink_undo") else {
        return;
    };
    durable_file(&fx, "keep", b"k");
    durable_file(&fx, "gone", b"g");
    fs::create_dir(fx.mnt("d")).expect("mkdir");
    fsync_dir(fx.mountpoint.path());
    fs::remove_file(fx.mnt("keep")).expect("unlink");
    fs::remove_dir(fx.mnt("d")).expect("rmdir");
    assert!(!fx.mnt("keep").exists());
    assert!(!fx.backing("keep").exists());
    fx.crash();
    assert_eq!(fs::read(fx.backing("keep")).expect("read"), b"k");
    assert!(fx.backing("d").is_dir());

    fx.remount();
    fs::remove_file(fx.mnt("gone")).expect("unlink");
    fsync_dir(fx.mountpoint.path());
    fx.crash();
    assert!(!fx.backing("gone").exists());
    assert!(fx.backing("keep").exists());
    // The trash never shows, and is gone after the crash.
    assert!(!fx.backing(".lossyfs-trash").exists());
}

#[test]
fn failed_fsync_reports_eio_and_a_later_fsync_does_not_bring_the_data_back() {
    let Some(mut fx) = mount_or_skip("fsync_eio") else {
        return;
    };
    durable_file(&fx, "f", b"");
    let controls = fx.mounted().controls();
    let f = OpenOptions::new()
        .write(true)
        .open(fx.mnt("f"))
        .expect("open");
    f.write_all_at(b"acked?", 0).expect("write");
    controls.fail_next_fsync();
    let err = f.sync_data().expect_err("armed fsync fails");
    assert_eq!(err.raw_os_error(), Some(libc_eio()), "{err}");
    assert_eq!(controls.failed_fsyncs(), 1);
    // The retry "succeeds", but the pages were forgotten: only the size is written.
    f.sync_data().expect("second fsync succeeds");
    drop(f);
    fx.crash();
    assert_eq!(fs::read(fx.backing("f")).expect("read"), vec![0u8; 6]);
    assert!(fx.mounted.is_none());
}

fn libc_eio() -> i32 {
    5
}

#[test]
fn writes_past_the_size_limit_fail_with_enospc_and_statfs_agrees() {
    let limit = 64 * 1024;
    let Some(fx) = mount_with(
        "size_limit",
        MountOptions {
            size_limit_bytes: Some(limit),
        },
    ) else {
        return;
    };
    let f = File::create(fx.mnt("f")).expect("create");
    f.write_all_at(&[1u8; 40 * 1024], 0)
        .expect("write below limit");
    let stat = rustix::fs::statvfs(fx.mountpoint.path()).expect("statvfs");
    assert_eq!(stat.f_blocks * stat.f_frsize, limit);
    assert_eq!(stat.f_bavail * stat.f_frsize, 24 * 1024);
    let err = f
        .write_all_at(&[2u8; 32 * 1024], 40 * 1024)
        .expect_err("write past the limit");
    assert_eq!(err.kind(), ErrorKind::StorageFull, "{err}");
    let err = f.set_len(limit + 1).expect_err("truncate past the limit");
    assert_eq!(err.kind(), ErrorKind::StorageFull, "{err}");
    // Lifting the limit lets it grow again.
    fx.mounted().controls().set_size_limit_bytes(None);
    f.write_all_at(&[2u8; 32 * 1024], 40 * 1024)
        .expect("write without a limit");
}

#[test]
fn fallocate_truncate_and_reads_merge_over_the_backing_file() {
    let Some(mut fx) = mount_or_skip("fallocate_truncate") else {
        return;
    };
    durable_file(&fx, "seg", &[7u8; 10_000]);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(fx.mnt("seg"))
        .expect("open");
    // Shrink, then grow again: the cut-off bytes must read as zeros, not as the
    // backing file's old content.
    f.set_len(5_000).expect("truncate");
    rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, 1 << 20).expect("fallocate");
    let mut buf = vec![0u8; 10_000];
    f.read_exact_at(&mut buf, 0).expect("read");
    assert!(buf[..5_000].iter().all(|&b| b == 7));
    assert!(buf[5_000..].iter().all(|&b| b == 0));
    assert_eq!(f.metadata().expect("stat").len(), 1 << 20);
    f.write_all_at(b"tail", (1 << 20) - 4).expect("write");
    f.sync_data().expect("fdatasync");
    drop(f);
    fx.crash();
    let after = fs::read(fx.backing("seg")).expect("read");
    assert_eq!(after.len(), 1 << 20);
    assert!(after[..5_000].iter().all(|&b| b == 7));
    assert!(after[5_000..(1 << 20) - 4].iter().all(|&b| b == 0));
    assert_eq!(&after[(1 << 20) - 4..], b"tail");
}
