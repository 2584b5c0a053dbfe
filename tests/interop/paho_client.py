#!/usr/bin/env python3
"""Paho MQTT (paho-mqtt 2.x, protocol 3.1.1) client used by tests/interop/interop.sh.

Subcommands (every wait is bounded by --timeout; output lines are flushed at once):

  pub   publish --count messages PREFIX1..PREFIXn to --topic at --qos, then DISCONNECT.
  sub   connect (clean or not), print "CONNACK sp=<0|1> rc=<n>", subscribe unless
        --no-subscribe, print "READY" once subscribed (or once connected with --no-subscribe),
        print "MSG <qos> <retain> <topic> <payload>" per message, DISCONNECT after --count
        messages. Exit 0 if --count messages arrived in time, 1 otherwise.
  will  connect with a will (--will-topic/--will-payload/--qos), print "READY" after CONNACK,
        then either DISCONNECT cleanly (--mode disconnect) or wait to be killed (--mode hold)
        or drop the TCP connection without DISCONNECT (--mode drop).
  early the README's shape: connect() and then, before the network loop runs, subscribe()
        (--mode sub) or publish() at QoS 1 (--mode pub); only then loop_start(). sub prints
        "SUBACK <codes> after <s> s", "READY", then per message "MSG ..." and "LATENCY <s>" (now
        minus the publish time the payload carries, a time.time() value); pub prints
        "PUBACK after <s> s". Exit 1 if an acknowledgement or --count messages miss --timeout,
        or a wait exceeds --max-latency seconds.

With --cafile (and --certfile/--keyfile for a client certificate) every subcommand connects
over TLS (paho's tls_set), to the TLS listener given by --port. With --websocket PATH it
connects over WebSocket (paho's transport="websockets", ws_set_options(path=PATH)), to the
WebSocket listener given by --port.
"""

import argparse
import socket
import sys
import threading
import time

import paho.mqtt.client as mqtt


_OUT = threading.Lock()


def out(line):
    """Prints one whole line (the network thread prints too) and flushes it."""
    with _OUT:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def make_client(args, client_id, clean_session=True):
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
        transport="websockets" if args.websocket else "tcp",
    )
    if args.websocket:
        client.ws_set_options(path=args.websocket)
    if args.cafile:
        client.tls_set(ca_certs=args.cafile, certfile=args.certfile, keyfile=args.keyfile)
    if args.username is not None:
        client.username_pw_set(args.username, args.password)
    return client


def connect(client, args):
    connected = threading.Event()
    state = {}

    def on_connect(_client, _userdata, flags, reason_code, _properties):
        state["sp"] = 1 if flags.session_present else 0
        state["rc"] = reason_code.value if hasattr(reason_code, "value") else int(reason_code)
        connected.set()

    client.on_connect = on_connect
    client.connect(args.host, args.port, keepalive=30)
    client.loop_start()
    if not connected.wait(args.timeout):
        out("ERROR no CONNACK")
        client.loop_stop()
        sys.exit(2)
    out(f"CONNACK sp={state['sp']} rc={state['rc']}")
    if state["rc"] != 0:
        client.loop_stop()
        sys.exit(2)


def cmd_pub(args):
    client = make_client(args, args.client_id or "")
    connect(client, args)
    deadline = time.monotonic() + args.timeout
    for i in range(1, args.count + 1):
        info = client.publish(args.topic, f"{args.prefix}{i}", qos=args.qos, retain=args.retain)
        info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        if not info.is_published():
            out(f"ERROR message {i} not acknowledged in time")
            client.loop_stop()
            return 1
    client.disconnect()
    client.loop_stop()
    out("PUBLISHED")
    return 0


def cmd_sub(args):
    client = make_client(args, args.client_id or "", clean_session=not args.no_clean)
    done = threading.Event()
    subscribed = threading.Event()
    received = []
    lock = threading.Lock()

    def on_message(_client, _userdata, msg):
        with lock:
            received.append(msg)
            out(f"MSG {msg.qos} {int(msg.retain)} {msg.topic} {msg.payload.decode('utf-8', 'replace')}")
            if len(received) >= args.count:
                done.set()

    def on_subscribe(_client, _userdata, _mid, reason_codes, _properties):
        codes = " ".join(str(rc.value if hasattr(rc, "value") else rc) for rc in reason_codes)
        out(f"SUBACK {codes}")
        subscribed.set()

    client.on_message = on_message
    client.on_subscribe = on_subscribe
    connect(client, args)
    if not args.no_subscribe:
        client.subscribe(args.topic, qos=args.qos)
        if not subscribed.wait(args.timeout):
            out("ERROR no SUBACK")
            client.loop_stop()
            return 1
    out("READY")
    ok = True
    if args.count > 0:
        ok = done.wait(args.timeout)
        if not ok:
            out(f"ERROR got {len(received)} of {args.count} messages")
    # Let acknowledgements of the last message go out before DISCONNECT.
    time.sleep(0.1)
    client.disconnect()
    client.loop_stop()
    return 0 if ok else 1


def cmd_will(args):
    client = make_client(args, args.client_id or "")
    client.will_set(args.will_topic, args.will_payload, qos=args.qos, retain=False)
    connect(client, args)
    out("READY")
    if args.mode == "disconnect":
        client.disconnect()
        client.loop_stop()
        return 0
    if args.mode == "drop":
        # Close the TCP connection without sending DISCONNECT.
        client.loop_stop()
        sock = client.socket()
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        return 0
    # hold: wait to be killed (bounded).
    time.sleep(args.timeout)
    return 1


def cmd_early(args):
    client = make_client(args, args.client_id or "", clean_session=not args.no_clean)
    client.will_set("interop/early/will", "offline", qos=1, retain=False)
    acked = threading.Event()
    done = threading.Event()
    latencies = []
    lock = threading.Lock()

    def on_subscribe(_client, _userdata, _mid, reason_codes, _properties):
        codes = " ".join(str(rc.value if hasattr(rc, "value") else rc) for rc in reason_codes)
        state["codes"] = codes
        acked.set()

    def on_message(_client, _userdata, msg):
        latency = time.time() - float(msg.payload.decode())
        with lock:
            latencies.append(latency)
            out(f"MSG {msg.qos} {int(msg.retain)} {msg.topic}")
            out(f"LATENCY {latency:.3f}")
            if len(latencies) >= args.count:
                done.set()

    state = {}
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(args.host, args.port, keepalive=30)
    start = time.monotonic()
    # Before the network loop runs: CONNECT and this packet leave before the CONNACK arrives.
    if args.mode == "sub":
        client.subscribe(args.topic, qos=1)
    else:
        info = client.publish(args.topic, "early", qos=1)
    client.loop_start()
    try:
        if args.mode == "pub":
            info.wait_for_publish(args.timeout)
            if not info.is_published():
                out("ERROR no PUBACK")
                return 1
            waited = time.monotonic() - start
            out(f"PUBACK after {waited:.3f} s")
            return 0 if waited <= args.max_latency else 1
        if not acked.wait(args.timeout):
            out("ERROR no SUBACK")
            return 1
        waited = time.monotonic() - start
        out(f"SUBACK {state['codes']} after {waited:.3f} s")
        if waited > args.max_latency:
            return 1
        out("READY")
        if not done.wait(args.timeout):
            out(f"ERROR got {len(latencies)} of {args.count} messages")
            return 1
        return 0 if max(latencies) <= args.max_latency else 1
    finally:
        client.disconnect()
        client.loop_stop()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--client-id", default="")
    p.add_argument("--cafile", help="connect over TLS, trusting this CA (PEM)")
    p.add_argument("--certfile", help="TLS client certificate (PEM), with --cafile")
    p.add_argument("--keyfile", help="TLS client key (PEM), with --cafile")
    p.add_argument("--websocket", metavar="PATH", help="connect over WebSocket to this path")
    p.add_argument("--username", default=None)
    p.add_argument("--password", default=None)
    sub = p.add_subparsers(dest="cmd", required=True)

    sp = sub.add_parser("pub")
    sp.add_argument("--topic", required=True)
    sp.add_argument("--qos", type=int, default=0)
    sp.add_argument("--count", type=int, default=1)
    sp.add_argument("--prefix", default="m")
    sp.add_argument("--retain", action="store_true")

    ss = sub.add_parser("sub")
    ss.add_argument("--topic", default="#")
    ss.add_argument("--qos", type=int, default=0)
    ss.add_argument("--count", type=int, default=1)
    ss.add_argument("--no-clean", action="store_true")
    ss.add_argument("--no-subscribe", action="store_true")

    sw = sub.add_parser("will")
    sw.add_argument("--will-topic", required=True)
    sw.add_argument("--will-payload", required=True)
    sw.add_argument("--qos", type=int, default=1)
    sw.add_argument("--mode", choices=["hold", "drop", "disconnect"], default="hold")

    se = sub.add_parser("early")
    se.add_argument("--mode", choices=["sub", "pub"], required=True)
    se.add_argument("--topic", required=True)
    se.add_argument("--count", type=int, default=1)
    se.add_argument("--no-clean", action="store_true")
    se.add_argument("--max-latency", type=float, default=1.0)

    args = p.parse_args()
    return {"pub": cmd_pub, "sub": cmd_sub, "will": cmd_will, "early": cmd_early}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
