#!/usr/bin/env python3
"""Helper of benches/compare.sh (python3 standard library only).

  compare.py freeport                      print a free TCP port on 127.0.0.1
  compare.py busy SECONDS                  % of all CPUs busy (from /proc/stat) over SECONDS
  compare.py record OUT.jsonl K=V... [--result FILE]
                                           append one record: the K=V metadata plus the
                                           generator's JSON line read from FILE (if valid)
  compare.py table RESULTS.jsonl MODE MD_OUT [NOTE...]
                                           print the table of MODE and append it (markdown,
                                           with the NOTE lines above it) to MD_OUT

A record is {"mode", "broker", "id", "rep", "rc", "config", "args", ..., "result": {...}|null,
"error": str|null}. "result" is the generator's own JSON line, unchanged.
"""

import json
import os
import socket
import statistics
import sys
import time

BROKERS = [("mosquitto", "Mosquitto"), ("rumqttd", "rumqttd"), ("brokerd", "brokerd")]

# Scenario id -> (label, [(field, figure, lower_is_better, kind)]). kind picks the format.
FLOW = [("msgs_per_s", "msgs/s", False, "rate")]
LAT = [
    ("p50_us", "p50 latency (lower is better)", True, "us"),
    ("p99_us", "p99 latency (lower is better)", True, "us"),
    ("p999_us", "p99.9 latency (lower is better)", True, "us"),
    ("max_us", "max latency (lower is better)", True, "us"),
]
SCENARIOS = {
    "fanin_q0": ("fanin QoS 0 (8 pub -> 1 sub)", FLOW),
    "fanin_q1": ("fanin QoS 1 (8 pub -> 1 sub)", FLOW),
    "fanout_q0": ("fanout QoS 0 (1 pub -> 16 sub)", FLOW),
    "fanout_q1": ("fanout QoS 1 (1 pub -> 16 sub)", FLOW),
    "pairs_q0": ("pairs QoS 0 (8 x 1 -> 1)", FLOW),
    "pairs_q1": ("pairs QoS 1 (8 x 1 -> 1)", FLOW),
    "shared1_q0": ("shared QoS 0 (8 pub -> group of 1)", FLOW),
    "shared4_q0": ("shared QoS 0 (8 pub -> group of 4)", FLOW),
    "shared16_q0": ("shared QoS 0 (8 pub -> group of 16)", FLOW),
    "shared1_q1": ("shared QoS 1 (8 pub -> group of 1)", FLOW),
    "shared4_q1": ("shared QoS 1 (8 pub -> group of 4)", FLOW),
    "shared16_q1": ("shared QoS 1 (8 pub -> group of 16)", FLOW),
    "shared4_keyed_q1": ("shared QoS 1 keyed (16 pub -> hash_topic group of 4)", FLOW),
    "latency_1k": ("latency QoS 0, 1k msg/s", LAT),
    "latency_10k": ("latency QoS 0, 10k msg/s", LAT),
    "conns": (
        "conns (idle connections)",
        [
            ("connacks_per_s", "CONNACKs/s", False, "rate"),
            ("rss_per_conn_bytes", "RSS per connection (lower is better)", True, "bytes"),
        ],
    ),
    "retained": (
        "retained (new '#' subscriber)",
        [("ms_to_receive_all", "ms to receive all (lower is better)", True, "ms")],
    ),
}
GEN_NOTE = ("(1) generator load: pinned = busy % of CPU 1 (incl. softirq and any other process on it), "
            "unpinned = the generator process's CPU % (100 = one core); near 100 the generator, not the broker, may be the limit")
THROUGHPUT = {"fanin_q0", "fanin_q1", "fanout_q0", "fanout_q1", "pairs_q0", "pairs_q1",
              "shared1_q0", "shared4_q0", "shared16_q0", "shared1_q1", "shared4_q1", "shared16_q1",
              "shared4_keyed_q1"}


def freeport():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
    s.close()


def cpu_times():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v[:8]), idle


def busy(seconds):
    t0, i0 = cpu_times()
    time.sleep(seconds)
    t1, i1 = cpu_times()
    dt = t1 - t0
    print(f"{100.0 * (dt - (i1 - i0)) / dt:.0f}" if dt > 0 else "0")


def record(out, items):
    rec = {}
    result_file = None
    it = iter(items)
    for a in it:
        if a == "--result":
            result_file = next(it)
            continue
        k, _, v = a.partition("=")
        if k in ("rep", "rc", "threads"):
            try:
                v = int(v)
            except ValueError:
                pass
        rec[k] = v
    rec.setdefault("error", None)
    if rec["error"] == "":
        rec["error"] = None
    result = None
    if result_file and os.path.exists(result_file):
        with open(result_file) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        result = json.loads(line)
                    except ValueError:
                        pass
    rec["result"] = result
    if rec["error"] is None:
        if result is None:
            rc = rec.get("rc")
            rec["error"] = "timed out" if rc == 124 else f"no JSON from the generator (exit {rc})"
        elif result.get("error"):
            rec["error"] = str(result["error"])
    with open(out, "a") as f:
        f.write(json.dumps(rec, separators=(",", ":")) + "\n")
    # One line for the progress log.
    status = "err: " + rec["error"] if rec["error"] else ("ok" if result.get("ok") else "FAILED")
    print(status)


# ---------------------------------------------------------------- formatting


def fmt(v, kind):
    if v is None:
        return "err"
    if kind == "rate":
        if v >= 1e6:
            return f"{v / 1e6:.2f}M"
        if v >= 1e3:
            return f"{v / 1e3:.1f}k"
        return f"{v:.0f}"
    if kind == "us":
        if v >= 1e4:
            return f"{v / 1e3:.1f} ms"
        if v >= 1e3:
            return f"{v / 1e3:.2f} ms"
        return f"{v:.0f} us"
    if kind == "ms":
        return f"{v:.1f} ms" if v < 100 else f"{v:.0f} ms"
    if kind == "bytes":
        return f"{v / 1024:.1f} KiB" if v >= 1024 else f"{v:.0f} B"
    if kind == "mib":
        return f"{v / 1024:.1f} MiB"
    return str(v)


def ratio(b, o):
    if b is None or o is None or o == 0:
        return "-"
    r = b / o
    return f"{r:.2f}x" if r < 10 else f"{r:.1f}x"


def median(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def table(results, mode, md_out, notes):
    recs = []
    with open(results) as f:
        for line in f:
            line = line.strip()
            if line:
                r = json.loads(line)
                if r.get("mode") == mode:
                    recs.append(r)
    if not recs:
        print(f"(no results for mode {mode})")
        return
    order = []
    by = {}
    for r in recs:
        sid = r["id"]
        if sid not in order:
            order.append(sid)
        by.setdefault((sid, r["broker"]), []).append(r)

    header = ["scenario", "figure", "Mosquitto", "rumqttd", "brokerd", "brokerd/Mosquitto",
              "brokerd/rumqttd", "checks M / R / B", "gen CPU % M / R / B (1)"]
    rows = []
    footnotes = []

    def runs(sid, b):
        return by.get((sid, b), [])

    def checks(sid, b):
        rs = runs(sid, b)
        if not rs:
            return "-"
        bad = [r for r in rs if r.get("error") is None and not r["result"].get("ok")]
        errs = [r for r in rs if r.get("error") is not None]
        for r in bad:
            reasons = "; ".join(r["result"].get("errors") or []) or "check failed"
            footnotes.append(f"{sid} / {b} rep {r.get('rep')}: FAILED: {reasons}")
        for r in errs:
            footnotes.append(f"{sid} / {b} rep {r.get('rep')}: err: {r['error']}")
        if errs and len(errs) == len(rs):
            return "err"
        if bad:
            return f"FAILED {len(bad)}/{len(rs)}"
        if errs:
            return f"ok ({len(errs)} err)"
        return "ok"

    def value(sid, b, field):
        vals = [r["result"].get(field) for r in runs(sid, b) if r.get("error") is None]
        return median(vals)

    def failed_any(sid, b):
        return any(r.get("error") is None and not r["result"].get("ok") for r in runs(sid, b))

    def gen_cpu(sid, b):
        vals = []
        for r in runs(sid, b):
            if r.get("error") is None:
                res = r["result"]
                vals.append(res.get("gen_cores_busy_pct", res.get("gen_cpu_pct")))
        m = median(vals)
        return "-" if m is None else f"{m:.0f}"

    for sid in order:
        label, figs = SCENARIOS.get(sid, (sid, []))
        reps = max((len(runs(sid, b)) for b, _ in BROKERS), default=0)
        label = f"{label}" + (f" [{reps} runs]" if reps > 1 else "")
        chk = " / ".join(checks(sid, b) for b, _ in BROKERS)
        gen = " / ".join(gen_cpu(sid, b) for b, _ in BROKERS) if sid in THROUGHPUT or sid.startswith("latency") else ""
        for i, (field, fig, _lower, kind) in enumerate(figs):
            vals = {b: value(sid, b, field) for b, _ in BROKERS}
            cells = []
            for b, _ in BROKERS:
                c = fmt(vals[b], kind)
                if vals[b] is not None and failed_any(sid, b):
                    c += " *"
                cells.append(c)
            rows.append([label if i == 0 else "", fig] + cells + [
                ratio(vals["brokerd"], vals["mosquitto"]),
                ratio(vals["brokerd"], vals["rumqttd"]),
                chk if i == 0 else "",
                gen if i == 0 else "",
            ])

    # Peak RSS during the throughput runs: per scenario the median over repetitions, then the
    # largest scenario.
    tp = [sid for sid in order if sid in THROUGHPUT]
    if tp:
        vals = {}
        which = {}
        for b, _ in BROKERS:
            best = None
            for sid in tp:
                v = value(sid, b, "peak_rss_kib")
                if v is not None and (best is None or v > best):
                    best, which[b] = v, sid
            vals[b] = best
        rows.append(["throughput runs", "peak broker RSS (lower is better)"]
                    + [fmt(vals[b], "mib") + (f" ({which[b]})" if b in which else "") for b, _ in BROKERS]
                    + [ratio(vals["brokerd"], vals["mosquitto"]), ratio(vals["brokerd"], vals["rumqttd"]), "", ""])

    threads = {}
    for r in recs:
        if isinstance(r.get("threads"), int):
            threads.setdefault(r["broker"], set()).add(r["threads"])
    thr = ", ".join(f"{name} {'/'.join(str(t) for t in sorted(threads.get(b, [])))}"
                    for b, name in BROKERS if b in threads)

    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    lines = []
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    print()
    print(f"== mode: {mode}")
    for n in notes:
        print(n)
    if thr:
        print(f"broker threads right after start: {thr}")
    print()
    print("\n".join(lines))
    print("* = checks failed in at least one run (figure still shown); err = broker or run failed")
    print(GEN_NOTE)
    for fn in footnotes:
        print("  " + fn)

    with open(md_out, "a") as f:
        f.write(f"### Mode: {mode}\n\n")
        for n in notes:
            f.write(f"- {n}\n")
        if thr:
            f.write(f"- broker threads right after start: {thr}\n")
        f.write("\n")
        f.write("| " + " | ".join(header) + " |\n")
        f.write("|" + "|".join(" --- " for _ in header) + "|\n")
        for row in rows:
            f.write("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |\n")
        f.write("\n`*` = checks failed in at least one run (figure still shown); "
                "`err` = broker or run failed.\n")
        f.write(f"\n{GEN_NOTE}\n")
        if footnotes:
            f.write("\n")
            for fn in footnotes:
                f.write(f"- {fn}\n")
        f.write("\n")


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    cmd = argv[1]
    if cmd == "freeport":
        freeport()
    elif cmd == "busy":
        busy(float(argv[2]))
    elif cmd == "record":
        record(argv[2], argv[3:])
    elif cmd == "table":
        table(argv[2], argv[3], argv[4], argv[5:])
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
