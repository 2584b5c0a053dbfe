//! Criterion micro-benchmarks of the per-message hot paths: trie matching with 100k
//! subscriptions, packet decode/encode, and routing one publish to 1 and 1,000 subscribers.
//! Run: `cargo bench --bench hot_paths` (add `-- --quick` for a short run).

use brokerd::bench_api::{decode_all, encode_publish, Acl, Counters, Router, Topic, Trie};
use bytes::{BufMut, Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};

/// 100k subscriptions shaped like a fleet: `site/<s>/dev/<d>/temp` exact filters, plus the
/// given wildcard mix.
fn fleet_trie(wildcards: &[&str]) -> Trie {
    let trie = Trie::new();
    let mut n = 0u32;
    for s in 0..100 {
        for d in 0..1000 {
            trie.subscribe(&format!("site/{s}/dev/{d}/temp"), &format!("c{n}"), n);
            n += 1;
        }
    }
    for (i, w) in wildcards.iter().enumerate() {
        trie.subscribe(w, &format!("w{i}"), 1_000_000 + i as u32);
    }
    trie
}

fn trie_match(c: &mut Criterion) {
    let mut g = c.benchmark_group("trie_match_100k_subs");
    g.throughput(Throughput::Elements(1));
    let topic = Topic::new("site/42/dev/512/temp");
    let mut scratch = Vec::new();

    let exact = fleet_trie(&[]);
    g.bench_function("exact", |b| {
        b.iter(|| exact.count_matches(black_box(&topic), &mut scratch))
    });

    let plus = fleet_trie(&["site/+/dev/+/temp", "site/42/+/512/+", "+/42/dev/512/temp"]);
    g.bench_function("plus_heavy", |b| {
        b.iter(|| plus.count_matches(black_box(&topic), &mut scratch))
    });

    let hash = fleet_trie(&[
        "#",
        "site/#",
        "site/42/#",
        "site/42/dev/#",
        "site/42/dev/512/#",
    ]);
    g.bench_function("hash_heavy", |b| {
        b.iter(|| hash.count_matches(black_box(&topic), &mut scratch))
    });
    g.finish();
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    // 1,000 QoS 1 PUBLISH packets with 64-byte payloads, decoded as one read buffer.
    let mut stream = BytesMut::new();
    for i in 0..1000u16 {
        encode_publish(&mut stream, "site/42/dev/512/temp", &[7u8; 64], 1, i + 1);
    }
    // encode_publish writes server->client packets; a client PUBLISH has the same layout.
    let stream = stream.freeze();
    g.throughput(Throughput::Elements(1000));
    g.bench_function("decode_1000_publish_64B", |b| {
        b.iter_batched(
            || BytesMut::from(&stream[..]),
            |mut buf| decode_all(&mut buf, 1 << 20),
            BatchSize::SmallInput,
        )
    });
    let payload = [7u8; 64];
    let mut out = BytesMut::with_capacity(1 << 20);
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_publish_64B", |b| {
        b.iter(|| {
            if out.len() > (1 << 19) {
                out.clear();
            }
            encode_publish(&mut out, black_box("site/42/dev/512/temp"), &payload, 1, 7);
        })
    });
    g.finish();
}

fn routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_one_publish");
    let topic = Topic::new("site/42/dev/512/temp");
    let mut p = BytesMut::new();
    p.put_bytes(7, 64);
    let payload: Bytes = p.freeze();
    // The defaults (with the global budget of queued bytes), and without that budget: the
    // difference is what its per-message accounting costs.
    let variants = [
        (1usize, ""),
        (1, "_budget_off"),
        (1000, ""),
        (1000, "_budget_off"),
    ];
    for (subs, variant) in variants {
        // Queues sized so a round of 100 publishes never hits the bound.
        let router = if variant.is_empty() {
            Router::new(subs, "site/+/dev/+/temp", 128)
        } else {
            Router::with_budget(subs, "site/+/dev/+/temp", 128, 0)
        };
        g.throughput(Throughput::Elements(subs as u64));
        g.bench_function(format!("to_{subs}_subscribers{variant}"), |b| {
            b.iter_custom(|iters| {
                let mut total = std::time::Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let round = left.min(100);
                    let start = std::time::Instant::now();
                    for _ in 0..round {
                        router.publish(&topic, &payload);
                    }
                    total += start.elapsed();
                    router.drain();
                    left -= round;
                }
                total
            })
        });
    }
    // Issue #12: the same publish to a share group ($share/g/site/+/dev/+/temp) of 1 and 16
    // members (round robin): one member receives it, so compare with to_1_subscribers.
    for members in [1usize, 16] {
        let router = Router::new(members, "$share/g/site/+/dev/+/temp", 128);
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("to_group_of_{members}"), |b| {
            b.iter_custom(|iters| {
                let mut total = std::time::Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let round = left.min(100);
                    let start = std::time::Instant::now();
                    for _ in 0..round {
                        router.publish(&topic, &payload);
                    }
                    total += start.elapsed();
                    router.drain();
                    left -= round;
                }
                total
            })
        });
    }
    g.finish();
}

/// The read check one delivery makes when an `acl_file` is set (issue #9 item 2).
fn acl_check(c: &mut Criterion) {
    let mut g = c.benchmark_group("acl_may_read");
    let topic = Topic::new("site/42/dev/512/temp");
    let typical = Acl::new(
        "user app\ntopic deny site/+/admin/#\ntopic read site/#\npattern readwrite dev/%c/#\n",
        "client-1",
        Some("app"),
    );
    g.bench_function("typical_3_rules", |b| {
        b.iter(|| assert!(typical.may_read(black_box(&topic))))
    });
    // 100 users with 10 rules each; the client's section is the last, its grant its last rule,
    // then 20 patterns: the whole walk for a topic granted by a pattern.
    let mut text = String::new();
    for u in 0..100 {
        text.push_str(&format!("user u{u}\n"));
        for r in 0..10 {
            text.push_str(&format!("topic read area{r}/+/x{u}/#\n"));
        }
    }
    for p in 0..19 {
        text.push_str(&format!("pattern read p{p}/%u/%c/#\n"));
    }
    text.push_str("pattern read site/+/dev/+/%c\n");
    let big = Acl::new(&text, "temp", Some("u99"));
    g.bench_function("section_10_rules_then_20_patterns", |b| {
        b.iter(|| assert!(big.may_read(black_box(&topic))))
    });
    g.finish();
}

/// What the admin counters add per message (issue #10 item 3): a received PUBLISH (striped
/// counters plus the top-topics sample), for one busy topic and for 10,000 distinct topics
/// (the sketch's worst case: every sample misses and evicts), and a sent PUBLISH.
fn counters(c: &mut Criterion) {
    let mut g = c.benchmark_group("metrics");
    let counters = Counters::new();
    let one: std::sync::Arc<str> = std::sync::Arc::from("site/42/dev/512/temp");
    g.bench_function("publish_received_one_topic", |b| {
        b.iter(|| counters.publish_received(black_box(&one), 64))
    });
    let many: Vec<std::sync::Arc<str>> = (0..10_000)
        .map(|i| std::sync::Arc::from(format!("site/{i}/dev/temp")))
        .collect();
    let mut i = 0;
    g.bench_function("publish_received_10000_topics", |b| {
        b.iter(|| {
            i = (i + 1) % many.len();
            counters.publish_received(black_box(&many[i]), 64)
        })
    });
    g.bench_function("publish_sent", |b| {
        b.iter(|| counters.publish_sent(black_box(64)))
    });
    g.finish();
}

criterion_group!(benches, trie_match, codec, routing, acl_check, counters);
criterion_main!(benches);
