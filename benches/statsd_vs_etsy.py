#!/usr/bin/env python3
"""shoal-collector's StatsD port vs the Etsy StatsD daemon, same stream, one run.

The same pre-generated stream (DogStatsD lines, ~1,400-byte datagrams as a
buffering client sends them: counters, some at @0.1, timers, gauges,
distributions / histograms, sets; 1,000 series, tags) is sent over UDP
loopback to each daemon:

1. capacity: as fast as this sender can, for --seconds; capacity = lines the
   daemon processed / time, and lines per CPU-second of the daemon (utime +
   stime from /proc/PID/stat: "per core");
2. then paced at 10 %, 50 % and 100 % of that daemon's own capacity: lines
   processed per second and lines lost (sent - processed).

Processed lines: shoal `shoal_collector_statsd_lines_received_total` from
/metrics; Etsy `statsd.metrics_received` from its management port
(`counters`), with a flush interval of an hour so that it is never reset
during a run. Lost = sent - processed (the kernel's drops on a full receive
buffer, mostly); shoal also reports its kernel drop count.

Setup (nothing is committed):
    cargo build --release -p shoal-collector
    mkdir -p /tmp/etsy && (cd /tmp/etsy && npm install statsd)
    python3 benches/statsd_vs_etsy.py --collector $CARGO_TARGET_DIR/release/shoal-collector --etsy /tmp/etsy

End to end (--e2e BIN, BIN = `cargo build --release --example statsd_e2e`):
CPU seconds per million recorded events, the application's own (recording,
encoding, sending) plus the aggregator's, for (a) the shoal SDK -> the
collector's gRPC port, (b) cadence -> the collector's StatsD port, (c)
cadence -> Etsy StatsD; with the events each aggregator received.

Caveat: sender and daemon share the machine's cores; where the daemon is
faster than this Python sender, its "capacity" is the sender's (the report
says so when the daemon kept up with everything it was sent).
"""

import argparse
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")


def stream(seed=15, datagrams=4000, size=1400):
    rng = random.Random(seed)
    out, lines_per = [], []
    for _ in range(datagrams):
        buf, n = [], 0
        length = 0
        while True:
            name, tag = rng.randrange(100), rng.randrange(10)
            k = rng.randrange(100)
            if k < 48:
                line = f"app.requests.n{name}:1|c|#route:/r/{tag},env:prod"
            elif k < 60:
                line = f"app.sampled.n{name}:1|c|@0.1|#route:/r/{tag}"
            elif k < 80:
                line = f"app.latency.n{name}:{rng.randrange(1, 2000)}|ms|#route:/r/{tag}"
            elif k < 90:
                line = f"app.queue.n{name}:{rng.randrange(100)}|g|#shard:{tag}"
            elif k < 95:
                line = f"app.size.n{name}:{rng.uniform(0, 1e6):.3f}|h|#route:/r/{tag}"
            else:
                line = f"app.users.n{name}:u{rng.randrange(10000)}|s|#shard:{tag}"
            if length + len(line) + 1 > size:
                break
            buf.append(line)
            length += len(line) + 1
            n += 1
        out.append(("\n".join(buf)).encode())
        lines_per.append(n)
    return out, lines_per


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proto, deadline=20.0):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{proto} port {port} never opened")


class Shoal:
    name = "shoal-collector"

    def __init__(self, binary, recv_buffer=0):
        self.port, self.http, self.grpc = free_port(), free_port(), free_port()
        grpc = self.grpc
        self.dir = tempfile.mkdtemp()
        cfg = os.path.join(self.dir, "c.toml")
        with open(cfg, "w") as f:
            f.write(f'grpc_listen = "127.0.0.1:{grpc}"\nhttp_listen = "127.0.0.1:{self.http}"\n')
            f.write(f'statsd_listen = "127.0.0.1:{self.port}"\nstatsd_max_datagram_bytes = 65535\n')
            f.write(f"statsd_recv_buffer = {recv_buffer}\n")
        self.proc = subprocess.Popen([binary, "--config", cfg], stderr=subprocess.DEVNULL)
        wait_port(self.http, "HTTP")

    def metric(self, name):
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics").read().decode()
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    def processed(self):
        return self.metric("shoal_collector_statsd_lines_received_total")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


class Etsy:
    name = "etsy statsd"

    def __init__(self, etsy_dir):
        self.port, self.mgmt = free_port(), free_port()
        self.dir = tempfile.mkdtemp()
        cfg = os.path.join(self.dir, "config.js")
        with open(cfg, "w") as f:
            f.write(
                "{ port: %d, mgmt_port: %d, address: '127.0.0.1', mgmt_address: '127.0.0.1', "
                "flushInterval: 3600000, backends: [], deleteIdleStats: false }\n" % (self.port, self.mgmt)
            )
        stats_js = os.path.join(etsy_dir, "node_modules", "statsd", "stats.js")
        self.proc = subprocess.Popen(["node", stats_js, cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.mgmt, "management")

    def processed(self):
        with socket.create_connection(("127.0.0.1", self.mgmt), timeout=30) as s:
            s.sendall(b"counters\n")
            data = b""
            while b"END" not in data:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
        m = re.search(rb"'statsd\.metrics_received': (\d+)", data)
        return float(m.group(1)) if m else 0.0

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def send(port, datagrams, lines_per, seconds, rate):
    """Sends the stream (cycled) for `seconds`; `rate` lines/s, None = flat out.
    Returns lines sent."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    addr = ("127.0.0.1", port)
    sent, i, n = 0, 0, len(datagrams)
    start = time.perf_counter()
    end = start + seconds
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        if rate is not None:
            due = (now - start) * rate
            if sent >= due:
                time.sleep(min(0.0005, end - now))
                continue
        for _ in range(16):
            try:
                s.sendto(datagrams[i], addr)
                sent += lines_per[i]
            except OSError:
                pass
            i = (i + 1) % n
    return sent


def settle(daemon, before, sent, timeout=10.0):
    """Waits until the daemon's count stops moving (or has everything)."""
    end = time.time() + timeout
    last = -1.0
    while time.time() < end:
        got = daemon.processed() - before
        if got >= sent or got == last:
            return got
        last = got
        time.sleep(0.3)
    return daemon.processed() - before


def run(daemon, datagrams, lines_per, seconds):
    rows = []
    before, cpu0 = daemon.processed(), cpu_seconds(daemon.proc.pid)
    t0 = time.perf_counter()
    sent = send(daemon.port, datagrams, lines_per, seconds, None)
    elapsed = time.perf_counter() - t0
    got = settle(daemon, before, sent)
    cpu = cpu_seconds(daemon.proc.pid) - cpu0
    capacity = got / elapsed
    per_cpu = got / cpu if cpu > 0 else float("nan")
    rows.append(("flat out", sent / elapsed, got / elapsed, sent - got, per_cpu, cpu))
    for pct in (10, 50, 100):
        rate = capacity * pct / 100
        before, cpu0 = daemon.processed(), cpu_seconds(daemon.proc.pid)
        t0 = time.perf_counter()
        sent = send(daemon.port, datagrams, lines_per, seconds, rate)
        elapsed = time.perf_counter() - t0
        got = settle(daemon, before, sent)
        cpu = cpu_seconds(daemon.proc.pid) - cpu0
        rows.append((f"{pct}% of capacity", sent / elapsed, got / elapsed, sent - got, got / cpu if cpu > 0 else float("nan"), cpu))
    return capacity, per_cpu, rows


def e2e(args):
    rows = []
    for label, make, mode in (
        ("(a) shoal SDK -> collector", lambda: Shoal(args.collector, args.recv_buffer), "sdk"),
        ("(b) cadence -> collector StatsD", lambda: Shoal(args.collector, args.recv_buffer), "cadence"),
        ("(c) cadence -> Etsy StatsD", lambda: Etsy(args.etsy), "cadence"),
    ):
        daemon = make()
        try:
            time.sleep(0.5)
            if mode == "sdk":
                target, count = f"http://127.0.0.1:{daemon.grpc}", lambda: daemon.metric("shoal_collector_values_merged_total")
            else:
                target, count = f"127.0.0.1:{daemon.port}", daemon.processed
            before, cpu0 = count(), cpu_seconds(daemon.proc.pid)
            out = subprocess.run([args.e2e, mode, target, str(args.events)], check=True, capture_output=True, text=True).stdout
            app_cpu = float(re.search(r"cpu_s=(\S+)", out).group(1))
            wall = float(re.search(r"wall_s=(\S+)", out).group(1))
            end, last = time.time() + 30, -1.0
            while time.time() < end:
                got = count() - before
                if got >= args.events or got == last:
                    break
                last = got
                time.sleep(1.5)
            time.sleep(1.5)  # the aggregator's flush of the last lines
            agg_cpu = cpu_seconds(daemon.proc.pid) - cpu0
            rows.append((label, app_cpu, agg_cpu, wall, count() - before))
        finally:
            daemon.stop()
    m = args.events / 1e6
    print(f"\nend to end, {args.events} events (CPU seconds per million events)")
    print(f"  {'path':<34} {'app':>7} {'aggregator':>11} {'total':>7} {'app wall s':>11} {'received':>10} {'total per M received':>21}")
    for label, app, agg, wall, got in rows:
        per_received = (app + agg) / (got / 1e6) if got else float("nan")
        print(f"  {label:<34} {app / m:>7.3f} {agg / m:>11.3f} {(app + agg) / m:>7.3f} {wall:>11.2f} {got:>10.0f} {per_received:>21.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--collector", required=True, help="the shoal-collector binary (release)")
    ap.add_argument("--etsy", required=True, help="directory where `npm install statsd` was run")
    ap.add_argument("--seconds", type=float, default=4.0, help="length of each step")
    ap.add_argument("--e2e", help="the statsd_e2e example binary: also run the end-to-end CPU comparison")
    ap.add_argument("--events", type=int, default=2_000_000, help="events per end-to-end run")
    ap.add_argument("--recv-buffer", type=int, default=0, help="shoal's statsd_recv_buffer (0: the system default, as Etsy gets)")
    ap.add_argument("--skip-capacity", action="store_true", help="only the end-to-end comparison")
    args = ap.parse_args()
    if args.skip_capacity:
        return e2e(args) or 0
    datagrams, lines_per = stream()
    print(f"stream: {len(datagrams)} datagrams, {sum(lines_per)} lines, {sum(map(len, datagrams)) / len(datagrams):.0f} bytes/datagram")
    results = {}
    for make in (lambda: Shoal(args.collector, args.recv_buffer), lambda: Etsy(args.etsy)):
        daemon = make()
        try:
            time.sleep(0.5)
            results[daemon.name] = run(daemon, datagrams, lines_per, args.seconds)
            if isinstance(daemon, Shoal):
                print(f"shoal kernel drops: {daemon.metric('shoal_collector_statsd_udp_kernel_drops_total'):.0f}")
        finally:
            daemon.stop()
    for name, (capacity, per_cpu, rows) in results.items():
        print(f"\n{name}: capacity {capacity / 1e3:.0f} k lines/s, {per_cpu / 1e3:.0f} k lines per CPU-second")
        print(f"  {'step':<18} {'offered/s':>12} {'processed/s':>12} {'lost':>10} {'lost %':>7} {'lines/CPU-s':>12}")
        for step, offered, processed, lost, pcpu, _ in rows:
            pct = 100.0 * lost / (offered * args.seconds) if offered else 0.0
            print(f"  {step:<18} {offered:>12.0f} {processed:>12.0f} {lost:>10.0f} {pct:>6.2f}% {pcpu:>12.0f}")
        flat = rows[0]
        if flat[3] <= 0.001 * flat[1] * args.seconds:
            print("  (kept up with everything sent flat out: capacity is the sender's, a lower bound)")
    if len(results) == 2:
        (a, (ca, pa, _)), (b, (cb, pb, _)) = results.items()
        print(f"\nratio {a} / {b}: capacity {ca / cb:.1f}x, lines per CPU-second {pa / pb:.1f}x")
    if args.e2e:
        e2e(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
