//! `brokerd-bench`: a load generator for MQTT 3.1.1 brokers.
//!
//! It answers three questions: how many messages per second a broker moves
//! on given cores, how much memory it needs per connected device, and how
//! late a message is at p99. It speaks MQTT itself over tokio TCP (module
//! [`codec`]), batches PUBLISHes into one write and parses whole read chunks,
//! so that it is not the bottleneck; and it checks every message it receives
//! (topic, payload bytes, flags, per-publisher sequence) so that a fast but
//! wrong broker cannot score.
//!
//! Every scenario prints exactly one JSON line on stdout; human logs go to
//! stderr. Exit status: 0 = all checks passed, 1 = a check failed (the JSON
//! has `"ok": false` and an `"errors"` list), 2 = the run could not be done
//! (e.g. connection refused; JSON has `"error"`).
//!
//! Modules: [`codec`] (MQTT packets), [`conn`] (TCP + handshakes + reader),
//! [`payload`] (message layout, shared clock), [`stats`] (histogram,
//! sequence tracker, pacer), [`monitor`] (broker RSS/CPU sampling, rlimit),
//! [`scenarios`] (fanin/fanout/pairs/latency in `flow`, `conns`, `retained`).

mod codec;
mod conn;
mod monitor;
mod payload;
mod scenarios;
mod stats;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use scenarios::{
    conns::ConnsSpec,
    flow::{FlowSpec, GroupCheck},
    retained::RetainedSpec,
    Common, Outcome,
};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "brokerd-bench",
    version,
    about = "MQTT 3.1.1 load generator: throughput, latency, memory per connection, retained delivery",
    long_about = "MQTT 3.1.1 load generator for brokerd (works with any 3.1.1 broker).\n\n\
Each scenario prints exactly one JSON line on stdout (logs go to stderr) and exits 0 if all \
checks passed, 1 if a check failed (out-of-order, wrong topic, corrupt payload, QoS 1 loss, \
QoS 0 duplicates...), 2 if the run could not be carried out.\n\n\
Tip: pin the generator and the broker to different cores, e.g.\n  \
taskset -c 0 mosquitto -c m.conf &  taskset -c 1 brokerd-bench fanin --port 18830 --broker-pid $!"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,

    /// Broker host name or IP address.
    #[arg(long, global = true, default_value = "127.0.0.1")]
    host: String,

    /// Broker TCP port.
    #[arg(long, global = true, default_value_t = 1883)]
    port: u16,

    /// QoS used for publishing and subscribing (0 or 1).
    #[arg(long, global = true, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,

    /// Measured duration in seconds (after warm-up).
    #[arg(long, global = true, default_value_t = 5.0)]
    duration_s: f64,

    /// Warm-up seconds: traffic flows and is checked, but is not counted in rates.
    #[arg(long, global = true, default_value_t = 1.0)]
    warmup_s: f64,

    /// Payload size in bytes (at least 20: publisher, sequence, timestamp).
    #[arg(long, global = true, default_value_t = 64)]
    payload: usize,

    /// Tokio worker threads of the generator (1 lets you pin it to one core).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,

    /// Broker process id: sample its VmRSS (every 100 ms) and CPU time.
    #[arg(long, global = true)]
    broker_pid: Option<u32>,

    /// Timeout for each TCP connect / CONNACK / SUBACK, in seconds.
    #[arg(long, global = true, default_value_t = 10.0)]
    connect_timeout_s: f64,
}

/// Knobs shared by the message-flow scenarios.
#[derive(Args, Debug, Clone)]
struct FlowArgs {
    /// QoS 1: maximum unacknowledged PUBLISHes per publisher connection.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=60000))]
    window: u32,

    /// End-to-end flow control: a publisher may be at most this many messages
    /// ahead of its slowest subscriber (closed loop: keeps broker queues short,
    /// measures the rate without overload). 0 = off (open loop).
    #[arg(long, default_value_t = 0)]
    e2e_window: usize,

    /// Maximum PUBLISH packets per write syscall.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65536))]
    batch: u32,

    /// After publishing stops: max seconds to wait for PUBACKs and deliveries.
    #[arg(long, default_value_t = 10.0)]
    drain_s: f64,

    /// After publishing stops: a subscriber gives up after this many seconds without data.
    #[arg(long, default_value_t = 1.0)]
    idle_s: f64,

    /// Subscribers connect with CleanSession=0 (persistent sessions), to measure a broker's
    /// durable path. Client ids are unique per run, so no earlier session is resumed.
    #[arg(long)]
    persistent_subscribers: bool,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// P publishers on bench/fanin/<i> -> 1 subscriber on bench/fanin/+ (or #).
    Fanin {
        /// Number of publishers.
        #[arg(long, default_value_t = 8)]
        publishers: usize,
        /// Subscribe with bench/fanin/# instead of bench/fanin/+.
        #[arg(long)]
        hash: bool,
        /// Total publish rate in msgs/s across publishers (default: as fast as allowed).
        #[arg(long)]
        rate: Option<f64>,
        #[command(flatten)]
        flow: FlowArgs,
    },
    /// 1 publisher on bench/fanout -> S subscribers; rate = total deliveries / time.
    Fanout {
        /// Number of subscribers.
        #[arg(long, default_value_t = 16)]
        subscribers: usize,
        /// Publish rate in msgs/s (default: as fast as allowed; QoS 0 may then drop).
        #[arg(long)]
        rate: Option<f64>,
        #[command(flatten)]
        flow: FlowArgs,
    },
    /// P publishers on bench/shared/<i> -> a share group of M members, each subscribed to
    /// $share/<group>/bench/shared/+: every message exactly once across the group (checked),
    /// rate = deliveries / time. With --keyed (a hash_topic group) each publisher's messages
    /// must all reach one member, in order.
    Shared {
        /// Number of publishers (one topic each).
        #[arg(long, default_value_t = 8)]
        publishers: usize,
        /// Number of group members.
        #[arg(long, default_value_t = 4)]
        members: usize,
        /// Share group name.
        #[arg(long, default_value = "bench")]
        group: String,
        /// Fail if a publisher's topic reaches more than one member (hash_topic groups).
        #[arg(long)]
        keyed: bool,
        /// Total publish rate in msgs/s across publishers (default: as fast as allowed).
        #[arg(long)]
        rate: Option<f64>,
        #[command(flatten)]
        flow: FlowArgs,
    },
    /// N pairs: publisher i -> subscriber i on bench/pairs/<i>.
    Pairs {
        /// Number of publisher/subscriber pairs.
        #[arg(long, default_value_t = 8)]
        pairs: usize,
        /// Total publish rate in msgs/s across publishers (default: as fast as allowed).
        #[arg(long)]
        rate: Option<f64>,
        #[command(flatten)]
        flow: FlowArgs,
    },
    /// Fixed-rate 1 -> 1 on bench/latency; reports p50/p99/p99.9/max end-to-end latency.
    Latency {
        /// Publish rate in msgs/s (paced by a timer with catch-up).
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        #[command(flatten)]
        flow: FlowArgs,
    },
    /// C idle connections: CONNACK rate and broker RSS per connection (needs --broker-pid).
    Conns {
        /// Number of connections.
        #[arg(long, default_value_t = 10000)]
        conns: usize,
        /// Seconds to hold all connections open before sampling RSS and closing.
        #[arg(long, default_value_t = 3.0)]
        hold_s: f64,
        /// Connection attempts in flight at once.
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
        /// Connections per source address 127.0.0.x (loopback targets only).
        #[arg(long, default_value_t = 20000)]
        per_ip: usize,
        /// MQTT keep-alive in seconds (must exceed the hold time; nothing else is sent).
        #[arg(long, default_value_t = 60)]
        keep_alive: u16,
    },
    /// Store R retained messages, time a new subscriber of bench/retained/# receiving all.
    Retained {
        /// Number of retained messages (topics bench/retained/<i>).
        #[arg(long, default_value_t = 10000)]
        count: usize,
        /// QoS 1 publishing window.
        #[arg(long, default_value_t = 100)]
        window: usize,
        /// Maximum PUBLISH packets per write syscall.
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// Time limit in seconds for each phase (store, receive, clean up).
        #[arg(long, default_value_t = 60.0)]
        timeout_s: f64,
        /// Stop waiting for retained messages after this many seconds without data.
        #[arg(long, default_value_t = 2.0)]
        idle_s: f64,
    },
    /// QoS 1 through a bridge: publish on --port, receive on --remote-port (see
    /// benches/bridge.sh): steady forwarding rate, or a backlog published then drained.
    Bridge {
        /// Port of the broker the bridge forwards to (on --host).
        #[arg(long)]
        remote_port: u16,
        /// steady (publish and receive), publish (only publish), collect (only receive).
        #[arg(long, value_enum, default_value = "steady")]
        phase: scenarios::bridge::Phase,
        /// Number of messages.
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        /// QoS 1 publishing window.
        #[arg(long, default_value_t = 1000)]
        window: usize,
        /// The receiver gives up after this many seconds without a message.
        #[arg(long, default_value_t = 30.0)]
        idle_s: f64,
    },
}

impl Scenario {
    fn name(&self) -> &'static str {
        match self {
            Scenario::Fanin { .. } => "fanin",
            Scenario::Fanout { .. } => "fanout",
            Scenario::Pairs { .. } => "pairs",
            Scenario::Shared { .. } => "shared",
            Scenario::Latency { .. } => "latency",
            Scenario::Conns { .. } => "conns",
            Scenario::Retained { .. } => "retained",
            Scenario::Bridge { .. } => "bridge",
        }
    }
}

fn secs(v: f64, what: &str) -> Result<Duration> {
    if !(0.0..=86_400.0).contains(&v) {
        bail!("--{what} must be between 0 and 86400 seconds, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

fn flow_spec(
    scenario: &'static str,
    pub_topics: Vec<String>,
    subs: Vec<(String, Vec<usize>)>,
    rate: Option<f64>,
    f: &FlowArgs,
) -> Result<FlowSpec> {
    if let Some(r) = rate {
        if !(r.is_finite() && r > 0.0) {
            bail!("--rate must be a positive number, got {r}");
        }
    }
    if pub_topics.is_empty() || subs.is_empty() {
        bail!("need at least one publisher and one subscriber");
    }
    Ok(FlowSpec {
        scenario,
        pub_topics,
        subs,
        rate,
        window: f.window as usize,
        persistent_subscribers: f.persistent_subscribers,
        e2e_window: f.e2e_window,
        batch: f.batch as usize,
        drain: secs(f.drain_s, "drain-s")?,
        idle: secs(f.idle_s, "idle-s")?,
        group: None,
    })
}

async fn run(cli: &Cli, common: &Common) -> Result<Outcome> {
    match &cli.scenario {
        Scenario::Fanin {
            publishers,
            hash,
            rate,
            flow,
        } => {
            let topics = (0..*publishers)
                .map(|i| format!("bench/fanin/{i}"))
                .collect();
            let filter = if *hash {
                "bench/fanin/#"
            } else {
                "bench/fanin/+"
            };
            let spec = flow_spec(
                "fanin",
                topics,
                vec![(filter.into(), (0..*publishers).collect())],
                *rate,
                flow,
            )?;
            scenarios::flow::run(common, spec).await
        }
        Scenario::Fanout {
            subscribers,
            rate,
            flow,
        } => {
            let subs = (0..*subscribers)
                .map(|_| ("bench/fanout".to_string(), vec![0]))
                .collect();
            let spec = flow_spec("fanout", vec!["bench/fanout".into()], subs, *rate, flow)?;
            scenarios::flow::run(common, spec).await
        }
        Scenario::Shared {
            publishers,
            members,
            group,
            keyed,
            rate,
            flow,
        } => {
            if *members == 0 || group.is_empty() || group.contains(['/', '+', '#']) {
                bail!("--members must be positive and --group one level without wildcards");
            }
            let topics = (0..*publishers)
                .map(|i| format!("bench/shared/{i}"))
                .collect();
            let filter = format!("$share/{group}/bench/shared/+");
            let subs = (0..*members)
                .map(|_| (filter.clone(), (0..*publishers).collect()))
                .collect();
            let mut spec = flow_spec("shared", topics, subs, *rate, flow)?;
            spec.group = Some(GroupCheck { keyed: *keyed });
            scenarios::flow::run(common, spec).await
        }
        Scenario::Pairs { pairs, rate, flow } => {
            let topics: Vec<String> = (0..*pairs).map(|i| format!("bench/pairs/{i}")).collect();
            let subs = topics
                .iter()
                .enumerate()
                .map(|(i, t)| (t.clone(), vec![i]))
                .collect();
            let spec = flow_spec("pairs", topics, subs, *rate, flow)?;
            scenarios::flow::run(common, spec).await
        }
        Scenario::Latency { rate, flow } => {
            let t = "bench/latency".to_string();
            let spec = flow_spec(
                "latency",
                vec![t.clone()],
                vec![(t, vec![0])],
                Some(*rate),
                flow,
            )?;
            scenarios::flow::run(common, spec).await
        }
        Scenario::Conns {
            conns,
            hold_s,
            concurrency,
            per_ip,
            keep_alive,
        } => {
            if *conns == 0 || *concurrency == 0 || *per_ip == 0 {
                bail!("--conns, --concurrency and --per-ip must be positive");
            }
            let hold = secs(*hold_s, "hold-s")?;
            if Duration::from_secs(*keep_alive as u64) <= hold && *keep_alive != 0 {
                bail!("--keep-alive ({keep_alive} s) must exceed --hold-s, nothing is sent while holding");
            }
            let spec = ConnsSpec {
                conns: *conns,
                hold,
                concurrency: *concurrency,
                per_ip: *per_ip,
                keep_alive: *keep_alive,
            };
            scenarios::conns::run(common, spec).await
        }
        Scenario::Retained {
            count,
            window,
            batch,
            timeout_s,
            idle_s,
        } => {
            if *count == 0 || *window == 0 || *window > 60000 || *batch == 0 {
                bail!("--count, --batch must be positive and --window in 1..=60000");
            }
            let spec = RetainedSpec {
                count: *count,
                window: *window,
                batch: *batch,
                timeout: secs(*timeout_s, "timeout-s")?,
                idle: secs(*idle_s, "idle-s")?,
            };
            scenarios::retained::run(common, spec).await
        }
        Scenario::Bridge {
            remote_port,
            phase,
            messages,
            window,
            idle_s,
        } => {
            if *messages == 0 || *window == 0 || *window > 60000 {
                bail!("--messages must be positive and --window in 1..=60000");
            }
            let remote = resolve(&cli.host, *remote_port)?;
            let idle = secs(*idle_s, "idle-s")?;
            scenarios::bridge::run(common, remote, *phase, *messages, *window, idle).await
        }
    }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}:{port}"))?
        .next()
        .context("no address")
}

fn main() {
    payload::clock_start();
    let cli = Cli::parse();
    let name = cli.scenario.name();
    let result = (|| -> Result<Outcome> {
        if cli.payload < payload::HEADER || cli.payload > 1024 * 1024 {
            bail!(
                "--payload must be between {} and 1048576 bytes",
                payload::HEADER
            );
        }
        if cli.threads == 0 {
            bail!("--threads must be at least 1");
        }
        let common = Common {
            addr: resolve(&cli.host, cli.port)?,
            qos: cli.qos,
            duration: secs(cli.duration_s, "duration-s")?.max(Duration::from_millis(10)),
            warmup: secs(cli.warmup_s, "warmup-s")?,
            payload: cli.payload,
            broker_pid: cli.broker_pid,
            connect_timeout: secs(cli.connect_timeout_s, "connect-timeout-s")?
                .max(Duration::from_millis(100)),
        };
        if let Some(pid) = cli.broker_pid {
            monitor::rss_kib(pid).with_context(|| format!("--broker-pid {pid}"))?;
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()?;
        rt.block_on(run(&cli, &common))
    })();
    match result {
        Ok(o) => {
            let ok = o.ok;
            println!("{}", o.to_json_line());
            std::process::exit(if ok { 0 } else { 1 });
        }
        Err(e) => {
            eprintln!("[{name}] error: {e:#}");
            let mut o = Outcome::new(name);
            o.set("error", format!("{e:#}"));
            o.ok = false;
            println!("{}", o.finish().to_json_line());
            std::process::exit(2);
        }
    }
}
