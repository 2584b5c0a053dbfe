//! A full disk under the data directory: acknowledgements stop, nothing acknowledged is lost,
//! nothing wedges, and acknowledgements resume within seconds of space returning, at any
//! message size (sled stores large records as separate blob files, whose failed write on a
//! full disk wedged sled 0.34 for good). Shutting down on a full disk exits non-zero.
//!
//! issue #8 item 5. Each test mounts a small tmpfs (needs root, as CI runs; skipped with a
//! message otherwise) and fills it with a filler file.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::persist::*;
use common::*;

/// How soon acknowledgements must resume once space is freed.
const RESUME: Duration = Duration::from_secs(5);

/// A tmpfs mounted on a temp dir, unmounted on drop (also when the test fails).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount tmpfs failed (this test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            path: path.to_owned(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A small tmpfs holding the data directory, and a filler file that can fill it. Drop the
/// broker first (declare it after this): the mount goes, then the temp dir.
struct SmallDisk {
    _tmpfs: Tmpfs,
    mnt: tempfile::TempDir,
    config: String,
}

impl SmallDisk {
    /// A `size` tmpfs and a broker config keeping `min_free_bytes` free on it. None (test
    /// skipped, with a message) when not root: mounting needs it.
    fn new(size: &str, min_free_bytes: u64) -> Option<SmallDisk> {
        if !is_root() {
            eprintln!("SKIPPED: mounting a tmpfs needs root");
            return None;
        }
        let mnt = tempfile::tempdir().unwrap();
        let tmpfs = Tmpfs::mount(mnt.path(), size);
        let config = format!(
            "[persistence]\nenabled = true\npath = \"{}\"\nmin_free_bytes = {min_free_bytes}\n\
             [limits]\nmax_packet_size = 2097152\n",
            mnt.path().join("data").display()
        );
        Some(SmallDisk {
            _tmpfs: tmpfs,
            mnt,
            config,
        })
    }

    fn filler(&self) -> PathBuf {
        self.mnt.path().join("filler")
    }

    /// Writes the filler until the file system is full (ENOSPC).
    fn fill(&self) {
        let mut f = std::fs::File::create(self.filler()).expect("filler");
        let mut written = 0usize;
        for chunk in [65_536usize, 4096, 512, 1] {
            let buf = vec![0x5au8; chunk];
            while f.write_all(&buf).is_ok() {
                written += chunk;
            }
        }
        let _ = f.sync_all();
        assert!(written > 0, "nothing written to the filler");
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }

    /// Starts the broker with a persistent subscriber `df-sub` on `df/#` (QoS 1), offline,
    /// and one acknowledged message "before" queued for it.
    fn start(&self) -> BrokerProc {
        let b = BrokerProc::start(&self.config);
        let (mut s, _) = Raw::connected_with(b.addr, "df-sub", false);
        s.subscribe(1, "df/#", 1);
        go_offline(&b, s, "df-sub", 1);
        publish_acked(b.addr, "df/before", 1, false, b"before");
        b
    }
}

/// The next packet within `limit` must be PUBACK `pkid`; the broker's log on failure.
fn expect_puback_within(b: &BrokerProc, p: &mut Raw, pkid: u16, limit: Duration, what: &str) {
    match p.read_within(limit) {
        RawRead::Packet(ack) => assert_eq!(ack, ack_packet(0x40, pkid), "{what}"),
        other => panic!(
            "{what}: no PUBACK {pkid} within {limit:?} ({other:?}); log:\n{}",
            b.log()
        ),
    }
}

/// A payload of `size` bytes starting with the message number.
fn payload(i: u16, size: usize) -> Vec<u8> {
    let mut v = format!("{i:05}").into_bytes();
    v.resize(size, b'.');
    v
}

/// Queues `preload` acknowledged `size`-byte messages for the offline subscriber (so the
/// storage engine holds big nodes), fills the disk, publishes more until one is not
/// acknowledged (and two more behind it), checks clean-session QoS 0 traffic still flows,
/// frees the space, and expects every withheld PUBACK within `RESUME`; then every message is
/// delivered in order, also after a kill -9. `log_needles`: one of them must be in an ERROR
/// line while the disk is full, and `resumed` in the log after.
fn full_disk_round_trip(
    disk: SmallDisk,
    size: usize,
    preload: u16,
    log_needles: &[&str],
    resumed: &str,
) {
    let mut b = disk.start();
    let mut q0 = Raw::connected(b.addr, "df-q0");
    q0.subscribe(1, "q0/#", 0);
    let mut p = Raw::connected(b.addr, "df-pub");
    for i in 1..=preload {
        p.send(&publish_packet(
            "df/a",
            1,
            false,
            false,
            i,
            &payload(i, size),
        ));
        expect_puback_within(
            &b,
            &mut p,
            i,
            WAIT,
            "a message stored before the disk filled",
        );
    }
    disk.fill();

    let mut sent = preload;
    loop {
        sent += 1;
        assert!(sent < 1000, "1000 messages acknowledged on a full disk");
        p.send(&publish_packet(
            "df/a",
            1,
            false,
            false,
            sent,
            &payload(sent, size),
        ));
        match p.read_within(Duration::from_secs(2)) {
            RawRead::Packet(ack) => assert_eq!(ack, ack_packet(0x40, sent)),
            RawRead::Timeout => break,
            RawRead::Closed => panic!("connection closed on a full disk; log:\n{}", b.log()),
        }
    }
    // Two more behind it are withheld too (acknowledgements keep their order).
    for id in [sent + 1, sent + 2] {
        p.send(&publish_packet(
            "df/a",
            1,
            false,
            false,
            id,
            &payload(id, size),
        ));
    }
    assert_eq!(
        p.read_within(Duration::from_secs(1)),
        RawRead::Timeout,
        "PUBACK for a message the broker could not store"
    );
    let log = b.log();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && log_needles.iter().any(|n| l.contains(n))),
        "no persistence error logged ({log_needles:?}):\n{log}"
    );
    assert!(b.is_alive(), "broker died on a full disk");

    // Clean-session QoS 0 traffic is unaffected.
    let mut q0p = Raw::connected(b.addr, "df-q0-pub");
    q0p.send(&publish_packet("q0/x", 0, false, false, 0, b"still here"));
    q0p.ping();
    let (_, _, _, topic, _, got) = expect_publish(&mut q0, "QoS 0 while the disk is full");
    assert_eq!((topic.as_str(), &got[..]), ("q0/x", &b"still here"[..]));

    disk.free();
    let freed = Instant::now();
    for id in sent..=sent + 2 {
        expect_puback_within(
            &b,
            &mut p,
            id,
            RESUME.saturating_sub(freed.elapsed()),
            "the withheld PUBACK after space was freed",
        );
    }
    b.wait_log(resumed);
    let last = sent + 2;

    // Everything is delivered, in order, and survives a crash afterwards.
    let dir = b.kill9();
    b = BrokerProc::start_in(dir, &disk.config);
    let (mut s, present) = Raw::connected_with(b.addr, "df-sub", false);
    assert!(present);
    let (_, _, _, topic, pkid, got) = expect_publish(&mut s, "before");
    assert_eq!((topic.as_str(), &got[..]), ("df/before", &b"before"[..]));
    s.send(&ack_packet(0x40, pkid));
    for i in 1..=last {
        let (_, _, _, topic, pkid, got) = expect_publish(&mut s, "stored message");
        assert_eq!(topic, "df/a");
        assert!(
            got == payload(i, size),
            "message {i}: got {:?}",
            String::from_utf8_lossy(&got[..5])
        );
        s.send(&ack_packet(0x40, pkid));
    }
    s.ping();
    s.expect_silence(SHORT);
    drop(b);
}

const PAUSED: &str = "persistence paused";
const RESUMED: &str = "persistence resumed";

/// issue #8 item 5 (and durable sessions). 1 KiB messages: below the free-space reserve the
/// broker pauses persisted traffic (PUBACKs withheld, QoS 0 unaffected) and resumes within
/// seconds of space being freed; nothing acknowledged is lost, also across kill -9.
#[test]
fn full_disk_small_messages_pause_and_resume() {
    let Some(disk) = SmallDisk::new("8m", 1 << 20) else {
        return;
    };
    full_disk_round_trip(disk, 1024, 0, &[PAUSED], RESUMED);
}

/// issue #8 item 5. 16 KiB messages with 16 of them queued (256 KiB in the storage engine's
/// nodes, which sled writes as blob files past about 128 KiB) on a 4 MiB disk: without the
/// reserve (0.1.0) the first ENOSPC wedged the store for good here. With it sled never meets
/// the full disk, and acknowledgements resume once space is freed.
#[test]
fn full_disk_16k_messages_pause_and_resume() {
    let Some(disk) = SmallDisk::new("4m", 1 << 20) else {
        return;
    };
    full_disk_round_trip(disk, 16 * 1024, 16, &[PAUSED], RESUMED);
}

/// issue #8 item 5. 256 KiB messages (stored as sled blobs, written outside its log): the
/// same, at the size the durable-sessions issue had to leave ignored.
#[test]
fn full_disk_256k_messages_pause_and_resume() {
    let Some(disk) = SmallDisk::new("16m", 2 << 20) else {
        return;
    };
    full_disk_round_trip(disk, 256 * 1024, 2, &[PAUSED], RESUMED);
}

/// issue: durable sessions. With the reserve turned off (min_free_bytes = 0), sled meets
/// ENOSPC itself on small records: the write fails, the writer reopens the engine and
/// re-applies what was not flushed, and acknowledgements resume once space is freed.
#[test]
fn full_disk_without_reserve_recovers_from_enospc() {
    let Some(disk) = SmallDisk::new("2m", 0) else {
        return;
    };
    full_disk_round_trip(
        disk,
        1024,
        0,
        &["persistence write failed", "persistence flush failed"],
        "persistence recovered",
    );
}

/// issue #8 item 5. SIGTERM while the disk is full and state waits to be written: the broker
/// still exits within its grace period, logs how much was not written, and exits non-zero (a
/// supervisor must not take it for a clean stop); what was acknowledged before is intact.
#[test]
fn shutdown_on_a_full_disk_exits_nonzero_and_keeps_acknowledged_state() {
    let Some(disk) = SmallDisk::new("8m", 1 << 20) else {
        return;
    };
    let mut b = disk.start();
    disk.fill();
    let mut p = Raw::connected(b.addr, "df-pub");
    p.send(&publish_packet(
        "df/x",
        1,
        false,
        false,
        1,
        &payload(1, 16 * 1024),
    ));
    assert_eq!(
        p.read_within(Duration::from_secs(1)),
        RawRead::Timeout,
        "PUBACK for a message the broker could not store"
    );
    b.wait_log(PAUSED);
    b.signal("TERM");
    let status = b
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("SIGTERM did not end the broker; log:\n{}", b.log()));
    assert!(
        !status.success(),
        "exit 0 with unwritten state; log:\n{}",
        b.log()
    );
    let log = b.log();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("unwritten_ops=")),
        "the log does not say what was not written:\n{log}"
    );
    disk.free();
    let dir = b.into_dir();
    let b = BrokerProc::start_in(dir, &disk.config);
    let (mut s, present) = Raw::connected_with(b.addr, "df-sub", false);
    assert!(present, "session lost; log:\n{}", b.log());
    let (_, _, _, topic, pkid, got) = expect_publish(&mut s, "before");
    assert_eq!((topic.as_str(), &got[..]), ("df/before", &b"before"[..]));
    s.send(&ack_packet(0x40, pkid));
    drop(b);
}
