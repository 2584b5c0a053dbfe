//! The process boundary: SIGTERM/SIGINT shut down cleanly and quickly; the command line
//! (`--check-config`, `--config`, `--print-default-config`); `bind` with port 0.

mod common;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Runs brokerd with `args`, killing it if it runs longer than `limit`; returns
/// (status or None if it had to be killed, stdout, stderr).
fn run_brokerd(args: &[&str], cwd: &Path, limit: Duration) -> (Option<ExitStatus>, String, String) {
    run_brokerd_as(None, args, cwd, limit)
}

/// `run_brokerd` as user and group `uid` when given (the caller must be root).
fn run_brokerd_as(
    uid: Option<u32>,
    args: &[&str],
    cwd: &Path,
    limit: Duration,
) -> (Option<ExitStatus>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_brokerd"));
    if let Some(uid) = uid {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(uid);
    }
    let mut child = cmd
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn brokerd");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status, out_t.join().unwrap(), err_t.join().unwrap())
}

/// Signals the broker with connected clients and checks the clean, quick exit.
fn shutdown_on(sig: &str) {
    let mut b = BrokerProc::start("");
    let mut sub = Raw::connected(b.addr, "sub");
    sub.subscribe(1, "t", 1);
    let mut idle = Raw::connected(b.addr, "idle");
    let (mut persistent, _) = Raw::connected_with(b.addr, "persistent", false);
    let addr = b.addr;

    let t0 = Instant::now();
    b.signal(sig);
    let status = b.wait_exit(Duration::from_secs(5)).unwrap_or_else(|| {
        panic!(
            "brokerd still running 5 s after SIG{sig}; log:\n{}",
            b.log()
        )
    });
    let took = t0.elapsed();
    assert!(
        status.success(),
        "exit status {status} after SIG{sig}; log:\n{}",
        b.log()
    );
    eprintln!("SIG{sig}: exited 0 in {took:?}");

    // Every client sees its connection closed (EOF), with nothing sent before.
    sub.expect_closed();
    idle.expect_closed();
    persistent.expect_closed();
    // The listener is gone with the process: a new connection is refused.
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
        "something still accepts on {addr} after shutdown"
    );
    let log = b.log();
    assert!(log.contains("shutdown requested"), "log:\n{log}");
}

/// (our choice) SIGTERM with connected clients: exit code 0 within the grace period, every
/// client's connection closed, nothing accepts any more.
#[test]
fn sigterm_closes_clients_and_exits_zero() {
    shutdown_on("TERM");
}

/// (our choice) SIGINT behaves like SIGTERM.
#[test]
fn sigint_closes_clients_and_exits_zero() {
    shutdown_on("INT");
}

/// (our choice) a client that stopped reading (its socket buffers full) does not hold up
/// shutdown: exit 0 well within the grace period.
#[test]
fn sigterm_with_a_stuck_client_exits_within_grace() {
    let mut b = BrokerProc::start("[listener]\nshutdown_grace_ms = 2000\n");
    let mut stuck = Raw::connected(b.addr, "stuck");
    stuck.subscribe(1, "fill", 0);
    let mut p = Raw::connected(b.addr, "filler");
    let payload = vec![0u8; 60 * 1024];
    for i in 1..=150u16 {
        p.send(&publish_packet("fill", 1, false, false, i, &payload));
        assert_eq!(p.expect_packet("PUBACK"), ack_packet(0x40, i));
    }
    let t0 = Instant::now();
    b.signal("TERM");
    let status = b
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("still running 5 s after SIGTERM; log:\n{}", b.log()));
    let took = t0.elapsed();
    eprintln!("SIGTERM with a stuck client: exited in {took:?}");
    assert!(status.success(), "exit status {status}");
    assert!(
        took < Duration::from_millis(3000),
        "took {took:?} with a 2 s grace"
    );
    drop(stuck);
}

/// (our choice) `--check-config` on a valid file exits 0 and does not bind: the address it
/// names is held by the test, so binding it would fail.
#[test]
fn check_config_accepts_a_valid_file_without_binding() {
    let dir = tempfile::tempdir().unwrap();
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let path = dir.path().join("ok.toml");
    std::fs::write(
        &path,
        format!(
            "[listener]\nbind = \"{}\"\n[limits]\nmax_inflight = 5\n",
            held.local_addr().unwrap()
        ),
    )
    .unwrap();
    let (status, out, err) = run_brokerd(
        &["--check-config", path.to_str().unwrap()],
        dir.path(),
        WAIT,
    );
    let status = status.expect("--check-config did not exit");
    assert!(status.success(), "status {status}; stderr:\n{err}");
    assert!(!out.contains("listening on"), "stdout: {out}");
    drop(held);
}

/// (our choice) `--check-config` on an invalid file (unknown key, bad value, wrong type) exits
/// non-zero, names the key and the file, and never listens.
#[test]
fn check_config_rejects_invalid_files_naming_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("unknown.toml", "[limits]\nmax_inflite = 3\n", "max_inflite"),
        (
            "badvalue.toml",
            "[limits]\nmax_inflight = 0\n",
            "max_inflight",
        ),
        (
            "badtype.toml",
            "[limits]\nmax_inflight = \"x\"\n",
            "max_inflight",
        ),
        ("badbind.toml", "[listener]\nbind = \"nowhere\"\n", "bind"),
        ("unknownsection.toml", "[nope]\nx = 1\n", "nope"),
    ];
    for (file, text, key) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        let (status, out, err) = run_brokerd(
            &["--check-config", path.to_str().unwrap()],
            dir.path(),
            WAIT,
        );
        let status = status.unwrap_or_else(|| panic!("{file}: --check-config did not exit"));
        assert!(!status.success(), "{file}: accepted; stdout {out}");
        assert!(
            err.contains(key),
            "{file}: stderr does not name {key:?}:\n{err}"
        );
        assert!(
            err.contains(file),
            "{file}: stderr does not name the file:\n{err}"
        );
        assert!(!out.contains("listening on"), "{file}: stdout {out}");
    }
}

/// (our choice) `--config` with an invalid file exits non-zero before binding: no
/// `listening on` line, the key and the file named, and the port it names stays free.
#[test]
fn config_with_invalid_file_exits_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let free = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        format!("[listener]\nbind = \"{free}\"\n[limits]\nmax_packet_size = 300000000\n"),
    )
    .unwrap();
    let (status, out, err) = run_brokerd(&["--config", path.to_str().unwrap()], dir.path(), WAIT);
    let status = status.expect("brokerd with a bad config did not exit (did it start?)");
    assert!(
        !status.success(),
        "started with an invalid config; stdout {out}"
    );
    assert!(out.is_empty(), "stdout must stay empty, got {out:?}");
    assert!(
        err.contains("max_packet_size") && err.contains("bad.toml"),
        "stderr:\n{err}"
    );
}

/// `--print-default-config` prints config/broker.toml byte for byte.
#[test]
fn print_default_config_equals_sample_file() {
    let dir = tempfile::tempdir().unwrap();
    let (status, out, err) = run_brokerd(&["--print-default-config"], dir.path(), WAIT);
    assert!(status.expect("did not exit").success(), "stderr:\n{err}");
    let sample =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/broker.toml"))
            .unwrap();
    assert!(
        out == sample,
        "--print-default-config differs from config/broker.toml"
    );
}

/// `bind = "127.0.0.1:0"` picks a free port, prints it as `listening on 127.0.0.1:<port>`,
/// and that port speaks MQTT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_port_zero_prints_the_real_port_and_serves_mqtt() {
    let b = BrokerProc::start("");
    assert_eq!(b.addr.ip().to_string(), "127.0.0.1");
    assert_ne!(b.port(), 0, "printed port 0");
    let mut c = connect(b.addr, "bind-test").await;
    c.subscribe("port/zero", rumqttc::QoS::AtLeastOnce).await;
    c.publish("port/zero", rumqttc::QoS::AtLeastOnce, false, "hi")
        .await;
    let p = c.next_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("port/zero", &b"hi"[..])
    );
}

/// issue #8 item 1: SIGHUP does not stop the broker: it reloads the configuration (issue #10
/// item 6; before that existed it logged that reload was not supported), keeps serving its
/// connected clients and accepting new ones, and a later SIGTERM still exits 0.
#[test]
fn sighup_is_logged_and_the_broker_keeps_running() {
    let mut b = BrokerProc::start("");
    let mut sub = Raw::connected(b.addr, "hup-sub");
    sub.subscribe(1, "hup/t", 1);

    b.signal("HUP");
    let log = b.wait_log("SIGHUP received");
    assert!(
        log.lines().any(|l| l.contains("SIGHUP received")
            && l.contains("INFO")
            && l.contains("reloading the configuration file")),
        "log:\n{log}"
    );
    let log = b.wait_log("config reloaded");
    assert!(b.is_alive(), "brokerd exited on SIGHUP; log:\n{log}");

    // The connection made before the signal still works, and a new one is accepted.
    sub.ping();
    let mut publisher = Raw::connected(b.addr, "hup-pub");
    publisher.send(&publish_packet("hup/t", 1, false, false, 7, b"after-hup"));
    assert_eq!(publisher.expect_packet("PUBACK"), ack_packet(0x40, 7));
    let (_, qos, _, topic, id, payload) = parse_publish(&sub.expect_packet("PUBLISH"));
    assert_eq!(
        (qos, topic.as_str(), &payload[..]),
        (1, "hup/t", &b"after-hup"[..])
    );
    sub.send(&ack_packet(0x40, id));
    sub.ping();

    b.stop();
}

/// issue #8 item 4: an OS error at startup is printed once: binding an address that is already
/// in use exits non-zero before `listening on`, and stderr names the address and says
/// "Address already in use" exactly once (not once per level of the error chain).
#[test]
fn address_in_use_is_reported_once_with_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let path = dir.path().join("busy.toml");
    std::fs::write(
        &path,
        format!("[listener]\nbind = \"{addr}\"\n[http]\nbind = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    let (status, out, err) = run_brokerd(&["--config", path.to_str().unwrap()], dir.path(), WAIT);
    let status = status.expect("brokerd on a busy address did not exit");
    assert!(!status.success(), "started on a busy address; stdout {out}");
    assert!(!out.contains("listening on"), "stdout: {out}");
    assert_eq!(
        err.matches("Address already in use").count(),
        1,
        "stderr:\n{err}"
    );
    assert!(err.contains(&addr.to_string()), "stderr:\n{err}");
    drop(held);
}

/// issue #8 item 4: the same for a configuration file that cannot be read: the OS error
/// appears once and the file is named.
#[test]
fn unreadable_config_file_is_reported_once_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.toml");
    let (status, _, err) = run_brokerd(&["--config", path.to_str().unwrap()], dir.path(), WAIT);
    assert!(!status.expect("did not exit").success(), "stderr:\n{err}");
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "stderr:\n{err}"
    );
    assert!(err.contains("missing.toml"), "stderr:\n{err}");
}

/// `--check-config FILE` for a config of `toml` written to `dir/name`: (success, stdout, stderr).
fn check_config(dir: &Path, name: &str, toml: &str) -> (bool, String, String) {
    let path = dir.join(name);
    std::fs::write(&path, toml).unwrap();
    let (status, out, err) = run_brokerd(&["--check-config", path.to_str().unwrap()], dir, WAIT);
    (
        status.expect("--check-config did not exit").success(),
        out,
        err,
    )
}

/// issue #8 item 5: `--check-config` loads the password file as the real start does: a missing
/// file and a line without ':' are errors naming the file (and the OS error or the line), and
/// the same config with a well-formed file is "ok". (Since issue #9 the file must be mode 0600
/// and hold hashes: the line before the bad one is a `mosquitto_passwd` entry.)
#[test]
fn check_config_refuses_a_missing_or_malformed_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    let toml = format!("[auth]\npassword_file = \"{}\"\n", passwd.display());

    let (ok, out, err) = check_config(dir.path(), "auth.toml", &toml);
    assert!(!ok, "missing password file accepted; stdout {out}");
    assert!(
        err.contains(&passwd.display().to_string()),
        "stderr:\n{err}"
    );
    assert!(err.contains("No such file or directory"), "stderr:\n{err}");

    write_private(
        &passwd,
        &format!("alice:{ALICE_SECRET}\nbob-without-colon\n"),
    );
    let (ok, out, err) = check_config(dir.path(), "auth.toml", &toml);
    assert!(!ok, "malformed password file accepted; stdout {out}");
    assert!(
        err.contains(&passwd.display().to_string()),
        "stderr:\n{err}"
    );
    assert!(err.contains("line 2"), "stderr:\n{err}");

    write_private(&passwd, &format!("alice:{ALICE_SECRET}\n"));
    let (ok, out, err) = check_config(dir.path(), "auth.toml", &toml);
    assert!(ok, "stderr:\n{err}");
    assert!(out.contains("auth.toml: ok"), "stdout {out}");
}

/// `alice:secret` as `mosquitto_passwd -c -b FILE alice secret` (Debian 2.0.11) wrote it.
const ALICE_SECRET: &str = "$7$101$mCaslsJP8VKS6dfw$8Yz8aeAaC8X5jgJG3Xa7qwyHPXAgGRUxiVTVNQigjw2W8G7zNPTIpgMCMqr23wb30De826ZEyu7EcuyqOu2qyw==";

/// Writes `text` to `path` with mode 0600.
fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// issue #8 item 5: with `[persistence] enabled = true`, `--check-config` checks the data
/// directory without opening it: a path that is a regular file, or whose parent does not
/// exist, is an error naming the path and the OS error. An existing directory (even one a
/// running broker is using) and a missing one whose parent exists are "ok", and the check
/// creates nothing.
#[test]
fn check_config_refuses_an_unusable_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let persist = |path: &Path| {
        format!(
            "[persistence]\nenabled = true\npath = \"{}\"\n",
            path.display()
        )
    };

    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let (ok, out, err) = check_config(dir.path(), "p.toml", &persist(&file));
    assert!(
        !ok,
        "a regular file accepted as data directory; stdout {out}"
    );
    assert!(err.contains(&file.display().to_string()), "stderr:\n{err}");
    assert!(err.contains("Not a directory"), "stderr:\n{err}");

    let orphan = dir.path().join("no-such-parent").join("data");
    let (ok, out, err) = check_config(dir.path(), "p.toml", &persist(&orphan));
    assert!(
        !ok,
        "a data directory without parent accepted; stdout {out}"
    );
    assert!(
        err.contains(&orphan.display().to_string()),
        "stderr:\n{err}"
    );
    assert!(err.contains("No such file or directory"), "stderr:\n{err}");
    assert!(
        !orphan.parent().unwrap().exists(),
        "the check created the parent"
    );

    // Usable: a directory a broker is running on right now, and a missing last component.
    let running = BrokerProc::start("[persistence]\nenabled = true\npath = \"data\"\n");
    let in_use = running.data_dir().join("data");
    assert!(in_use.is_dir());
    let (ok, out, err) = check_config(dir.path(), "p.toml", &persist(&in_use));
    assert!(ok, "stderr:\n{err}");
    assert!(out.contains("p.toml: ok"), "stdout {out}");
    let fresh = dir.path().join("fresh");
    let (ok, _, err) = check_config(dir.path(), "p.toml", &persist(&fresh));
    assert!(ok, "stderr:\n{err}");
    assert!(!fresh.exists(), "--check-config created the data directory");
    running.stop();
}

/// issue #8 item 5: a data directory, or the parent of a missing one, that the broker's user
/// cannot write to is an error naming the path and "Permission denied". Root bypasses file
/// modes, so as root the broker runs as uid/gid 65534 (nobody).
#[test]
fn check_config_refuses_a_data_directory_it_cannot_write() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    let uid = root.then_some(65_534);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let locked = dir.path().join("read-only");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    let config = dir.path().join("ro.toml");
    for data in [locked.clone(), locked.join("data")] {
        std::fs::write(
            &config,
            format!(
                "[persistence]\nenabled = true\npath = \"{}\"\n",
                data.display()
            ),
        )
        .unwrap();
        let (status, out, err) = run_brokerd_as(
            uid,
            &["--check-config", config.to_str().unwrap()],
            dir.path(),
            WAIT,
        );
        let status = status.expect("--check-config did not exit");
        assert!(
            !status.success(),
            "{}: accepted; stdout {out}",
            data.display()
        );
        assert!(err.contains(&data.display().to_string()), "stderr:\n{err}");
        assert!(err.contains("Permission denied"), "stderr:\n{err}");
    }
    // The same directory made writable is accepted.
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (status, out, err) = run_brokerd_as(
        uid,
        &["--check-config", config.to_str().unwrap()],
        dir.path(),
        WAIT,
    );
    assert!(status.expect("did not exit").success(), "stderr:\n{err}");
    assert!(out.contains("ro.toml: ok"), "stdout {out}");
}

/// issue #8 item 6: the start-up log says which brokerd runs and how: one line with the
/// version and the config file, and, once bound, one with the listener address and the
/// persistence mode (off, or the path with the sync mode, plus the flush interval for
/// "periodic").
#[test]
fn startup_log_names_version_config_listener_and_persistence() {
    let version = env!("CARGO_PKG_VERSION");
    let line_with = |log: &str, parts: &[&str]| {
        log.lines()
            .any(|l| l.contains(" INFO ") && parts.iter().all(|p| l.contains(p)))
    };

    let b = BrokerProc::start("");
    let log = b.wait_log("listening");
    let config = b.config_path.display().to_string();
    assert!(
        line_with(
            &log,
            &[&format!("version={version}"), &format!("config={config}")]
        ),
        "no start line with version and config path; log:\n{log}"
    );
    assert!(
        line_with(&log, &[&format!("addr={}", b.addr), "persistence=off"]),
        "no listening line with address and persistence; log:\n{log}"
    );
    b.stop();

    for (sync, expected) in [
        ("always", "sync=always"),
        ("periodic", "sync=periodic flush_interval_ms=250"),
    ] {
        let b = BrokerProc::start(&format!(
            "[persistence]\nenabled = true\npath = \"data\"\nsync = \"{sync}\"\nflush_interval_ms = 250\n"
        ));
        let log = b.wait_log("listening");
        let path = b.data_dir().join("data").display().to_string();
        assert!(
            line_with(
                &log,
                &[
                    &format!("addr={}", b.addr),
                    &format!("persistence=on path={path} {expected}")
                ]
            ),
            "no listening line with persistence {expected}; log:\n{log}"
        );
        if sync == "always" {
            assert!(!log.contains("flush_interval_ms=250"), "log:\n{log}");
        }
        b.stop();
    }
}
