#!/usr/bin/env python3
"""keyward at scale (make scale; scripts/scale.sh builds the binaries, then runs this).

One run, one machine, the release binary, real stores filled directly (examples/fill_store):

1. memory: keyward's resident set right after start and after every stored key has been used
   once (the key cache holding them all), for each store size; bytes per cached key and per
   cached token; then a flood of more distinct keys than the cache holds (the resident set must
   stay at the capacity's size) and of unknown keys (the negative cache's capacity);
2. start-up: time from exec to /readyz with 1 M keys in the store;
3. cache misses: first requests of distinct uncached keys at a fixed rate (open loop), p50/p99
   latency and keyward CPU per request, next to the same keys again (cache hits), on SQLite and
   on PostgreSQL;
4. revocation: latency between two replicas on PostgreSQL, idle and while each serves API-key
   load;
5. connections: resident memory per idle kept-alive connection, for 10 000 of them, next to a
   bare pingora and nginx;
6. HTTP/2: keyward CPU per request with 100 streams on one TLS connection against as many
   connections (h2load).

Prints a Markdown table per part and, with --plot PATH, the plot (matplotlib).
Usage: scripts/scale.py BIN_DIR [--sizes 10000,100000,1000000] [--plot PATH]
"""

import argparse
import json
import math
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HZ = os.sysconf("SC_CLK_TCK")
PG_ADMIN = os.environ.get("KEYWARD_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/test")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def metric(ops, name, labels=""):
    text = urllib.request.urlopen(f"http://{ops}/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


class Keyward:
    """keyward serve on loopback ports in front of the echo upstream."""

    def __init__(self, bins, work, store_url, extra=""):
        self.bins, self.work = bins, work
        self.proxy = f"127.0.0.1:{free_port()}"
        self.ops = f"127.0.0.1:{free_port()}"
        self.config = os.path.join(work, "keyward.yaml")
        with open(self.config, "w") as f:
            f.write(
                f"""listen: {{ proxy: "{self.proxy}", ops: "{self.ops}" }}
upstream: {{ address: "{UPSTREAM}" }}
store: {{ url: "{store_url}" }}
bootstrap:
  admin: {{ name: admin, password_env: SCALE_ADMIN_PASSWORD, functions: [POWER-USER] }}
server: {{ threads: 2 }}
logging: {{ level: warn }}
api_keys: {{ last_used_flush: 1h }}
routes:
  - path: /public
    public: true
  - path: /
    require: {{ min_security_level: EXTERNAL }}
{extra}
"""
            )
        self.proc = None

    def start(self):
        env = dict(os.environ, SCALE_ADMIN_PASSWORD="scale-password")
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [os.path.join(self.bins, "keyward"), "serve", "--config", self.config],
            env=env,
            cwd=self.work,
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.work, "stderr.log"), "a"),
        )
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"keyward exited: {open(os.path.join(self.work, 'stderr.log')).read()[-2000:]}")
            try:
                urllib.request.urlopen(f"http://{self.ops}/readyz", timeout=1).read()
                return time.monotonic() - started
            except OSError:
                time.sleep(0.01)

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait()
            self.proc = None

    @property
    def pid(self):
        return self.proc.pid


def open_loop(bins, kw, rate, seconds, header_file=None, header_name="Argus-API-Key", path="/x/fixed", connections=32):
    """(parsed open_loop result, keyward CPU seconds per request)."""
    args = [os.path.join(bins, "examples", "open_loop"), kw.proxy, path, str(rate), str(seconds), str(connections)]
    if header_file:
        args += ["-F", f"{header_name}: {header_file}"]
    before = cpu_seconds(kw.pid)
    run = subprocess.run(args, capture_output=True, text=True, check=True)
    used = cpu_seconds(kw.pid) - before
    result = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", run.stdout)}
    result["first_failure"] = run.stderr.strip().splitlines()[0] if run.stderr.strip() else ""
    # open_loop also sends a warm-up second, not counted in `sent`.
    requests = result["sent"] + rate
    return result, used / requests


def fill(bins, store_url, keys, tokens, out):
    subprocess.run(
        [os.path.join(bins, "examples", "fill_store"), store_url, "admin", str(keys), str(tokens), out],
        check=True,
    )


def lines_from(path, start, count, target, prefix=""):
    with open(path) as src, open(target, "w") as dst:
        for i, line in enumerate(src):
            if i >= start + count:
                break
            if i >= start:
                dst.write(prefix + line)
    return target


def drive_all(bins, kw, path, header_name="Argus-API-Key", rate=8000):
    """Every line of `path` once, at `rate` per second (the first second is open_loop's warm-up)."""
    n = sum(1 for _ in open(path))
    seconds = max(1, (n - rate) // rate + 1)
    result, _ = open_loop(bins, kw, rate, seconds, path, header_name)
    return result


def mib(b):
    return f"{b / 1048576:.0f} MiB"


def memory_part(bins, sizes, results):
    print("\n## Memory and start-up (SQLite)\n")
    print("| API keys in the store | start to ready | RSS after start | RSS, every key used once | bytes per cached key | first uses not answered 2xx in time |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        work = tempfile.mkdtemp(prefix="keyward-scale-")
        try:
            store = f"sqlite://{work}/keyward.db"
            extra = f"cache: {{ api_key_capacity: {n + 1000}, api_key_ttl: 1h, negative_capacity: 100000 }}"
            kw = Keyward(bins, work, store, extra)
            kw.start()
            kw.stop()
            fill(bins, store, n, 0, work)
            ready = kw.start()
            time.sleep(1)
            idle = rss_bytes(kw.pid)
            driven = drive_all(bins, kw, os.path.join(work, "api_keys.txt"))
            time.sleep(1)
            entries = metric(kw.ops, "keyward_cache_entries", 'cache="apikey"')
            full = rss_bytes(kw.pid)
            per_key = (full - idle) / max(entries, 1)
            failed = driven["errors"] + driven["late"]
            why = f" ({driven['first_failure'].removeprefix('open_loop: ')}; {driven['late']} late)" if failed else ""
            print(f"| {n:,} | {ready:.2f} s | {mib(idle)} | {mib(full)} | {per_key:,.0f} | {failed:,} of {driven['sent']:,}{why} |")
            results["memory"].append({"keys": n, "ready_s": ready, "rss_idle": idle, "rss_full": full, "entries": entries, "per_key": per_key})
            kw.stop()
        finally:
            shutil.rmtree(work, ignore_errors=True)


def bounds_part(bins, capacity, results):
    """More distinct keys than the cache holds, then unknown keys: memory stays bounded."""
    print("\n## Bounded under a flood of distinct keys (SQLite)\n")
    work = tempfile.mkdtemp(prefix="keyward-scale-")
    try:
        store = f"sqlite://{work}/keyward.db"
        extra = f"cache: {{ api_key_capacity: {capacity}, api_key_ttl: 1h, negative_capacity: {capacity}, negative_ttl: 1h }}"
        kw = Keyward(bins, work, store, extra)
        kw.start()
        kw.stop()
        fill(bins, store, 4 * capacity, capacity, work)
        kw.start()
        time.sleep(1)
        idle = rss_bytes(kw.pid)
        keys = os.path.join(work, "api_keys.txt")
        first = lines_from(keys, 0, capacity, os.path.join(work, "first.txt"))
        drive_all(bins, kw, first)
        time.sleep(1)
        at_capacity = rss_bytes(kw.pid)
        drive_all(bins, kw, keys)
        time.sleep(1)
        flooded = rss_bytes(kw.pid)
        entries = metric(kw.ops, "keyward_cache_entries", 'cache="apikey"')
        # Unknown keys: right prefix shape and checksum, secrets keyward never issued.
        unknown = os.path.join(work, "unknown.txt")
        with open(keys) as src, open(unknown, "w") as dst:
            for i, line in enumerate(src):
                if i >= 2 * capacity:
                    break
                user, _, secret = line.strip().split("/")
                dst.write(f"{user}/{9_000_000 + i}/{secret}\n")
        drive_all(bins, kw, unknown)
        time.sleep(1)
        after_unknown = rss_bytes(kw.pid)
        negative = metric(kw.ops, "keyward_cache_entries", 'cache="apikey_negative"')
        # Tokens, for bytes per cached token.
        tokens = lines_from(os.path.join(work, "tokens.txt"), 0, capacity, os.path.join(work, "cookies.txt"), "token=")
        before_tokens = rss_bytes(kw.pid)
        drive_all(bins, kw, tokens, "Cookie")
        time.sleep(1)
        token_entries = metric(kw.ops, "keyward_cache_entries", 'cache="token"')
        per_token = (rss_bytes(kw.pid) - before_tokens) / max(token_entries, 1)
        print(f"api_key_capacity {capacity:,}: RSS {mib(idle)} at start, {mib(at_capacity)} with {capacity:,} keys used, "
              f"{mib(flooded)} after {4 * capacity:,} distinct keys ({entries:,.0f} cached); "
              f"{mib(after_unknown)} after {2 * capacity:,} unknown keys ({negative:,.0f} in the negative cache, capacity {capacity:,}); "
              f"{per_token:,.0f} bytes per cached token ({token_entries:,.0f} tokens)")
        results["bounds"] = {"capacity": capacity, "idle": idle, "at_capacity": at_capacity, "flooded": flooded,
                             "entries": entries, "after_unknown": after_unknown, "negative": negative, "per_token": per_token}
        kw.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def misses_part(bins, backends, n, rate, seconds, results):
    print(f"\n## Cache misses: distinct uncached keys at {rate}/s ({n:,} keys in the store)\n")
    print("| store | requests | miss p50 | miss p99 | miss CPU/req | hit p50 | hit p99 | hit CPU/req | store queries |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for backend in backends:
        work = tempfile.mkdtemp(prefix="keyward-scale-")
        db = None
        try:
            if backend == "sqlite":
                store = f"sqlite://{work}/keyward.db"
            else:
                db = f"keyward_scale_{os.getpid()}"
                subprocess.run(["psql", PG_ADMIN, "-qc", f"CREATE DATABASE {db}"], check=True, capture_output=True)
                store = PG_ADMIN.rsplit("/", 1)[0] + "/" + db
            extra = f"cache: {{ api_key_capacity: {n + 1000}, api_key_ttl: 1h }}"
            kw = Keyward(bins, work, store, extra)
            kw.start()
            kw.stop()
            fill(bins, store, n, 0, work)
            kw.start()
            count = rate * (seconds + 1)
            # Keys spread over the whole store, not its first rows.
            keys = os.path.join(work, "api_keys.txt")
            step = max(1, n // count)
            sample = os.path.join(work, "sample.txt")
            with open(keys) as src, open(sample, "w") as dst:
                for i, line in enumerate(src):
                    if i % step == 0:
                        dst.write(line)
            # Warm the path (connections, the public route), not the keys.
            open_loop(bins, kw, 500, 1, path="/public/fixed")
            loads_before = metric(kw.ops, "keyward_cache_misses_total", 'cache="apikey"')
            miss, miss_cpu = open_loop(bins, kw, rate, seconds, sample)
            loads = metric(kw.ops, "keyward_cache_misses_total", 'cache="apikey"') - loads_before
            hit, hit_cpu = open_loop(bins, kw, rate, seconds, sample)
            us = lambda v: f"{v / 1000:.2f} ms" if v >= 1000 else f"{v} µs"
            print(f"| {backend} | {miss['sent']:,} | {us(miss['p50_us'])} | {us(miss['p99_us'])} | {miss_cpu * 1e6:.0f} µs | "
                  f"{us(hit['p50_us'])} | {us(hit['p99_us'])} | {hit_cpu * 1e6:.0f} µs | {loads:,.0f} |")
            if miss["errors"] or miss["late"]:
                print(f"  ({backend}: {miss['errors']} errors, {miss['late']} late among the misses)")
            results["misses"].append({"store": backend, "miss": miss, "miss_cpu": miss_cpu, "hit": hit, "hit_cpu": hit_cpu, "loads": loads})
            kw.stop()
        finally:
            if db:
                subprocess.run(["psql", PG_ADMIN, "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"], capture_output=True)
            shutil.rmtree(work, ignore_errors=True)


def limits_part(bins, n, results):
    """Bytes per tracked rate-limit key: the same store and the same keys used once each, by a
    keyward without rate limits and by one with a per-credential limit (every key tracked);
    the difference in growth divided by the keys."""
    print(f"\n## Rate-limit keys ({n:,} distinct API keys, each used once, SQLite)\n")
    work = tempfile.mkdtemp(prefix="keyward-scale-")
    try:
        store = f"sqlite://{work}/keyward.db"
        cache = f"cache: {{ api_key_capacity: {n + 1000}, api_key_ttl: 1h }}"
        limited = cache + f"\nrate_limits: {{ per_credential: {{ requests_per_second: 100, burst: 100 }}, max_tracked: {2 * n} }}"
        growth = {}
        for name, extra in (("without", cache), ("with", limited)):
            kw = Keyward(bins, work, store, extra)
            kw.start()
            if name == "without":
                kw.stop()
                fill(bins, store, n, 0, work)
                kw.start()
            time.sleep(1)
            idle = rss_bytes(kw.pid)
            drive_all(bins, kw, os.path.join(work, "api_keys.txt"))
            time.sleep(1)
            growth[name] = rss_bytes(kw.pid) - idle
            kw.stop()
        per_key = (growth["with"] - growth["without"]) / n
        print(f"RSS growth with every key used once: {mib(growth['without'])} without rate limits, "
              f"{mib(growth['with'])} with rate_limits.per_credential: {per_key:,.0f} bytes per tracked key "
              f"(rate_limits.max_tracked bounds them; 100 000 by default: ~{per_key * 100_000 / 1048576:.0f} MiB)")
        results["limits"] = {"keys": n, "growth": growth, "per_key": per_key}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def revocation_part(bins, revocations, rates, results):
    """Two replicas on one PostgreSQL database, each serving API-key load from its own open-loop
    client at each of `rates` (0: no load); keys are revoked through A's admin API and, from the
    moment A answered, requested through B every millisecond until B refuses them."""
    print(f"\n## Revocation between two replicas (PostgreSQL), {revocations} revocations at each load\n")
    work = tempfile.mkdtemp(prefix="keyward-scale-")
    db = f"keyward_scale_revoke_{os.getpid()}"
    replicas = []
    try:
        subprocess.run(["psql", PG_ADMIN, "-qc", f"CREATE DATABASE {db}"], check=True, capture_output=True)
        store = PG_ADMIN.rsplit("/", 1)[0] + "/" + db
        load_keys = 10_000
        for name in ("a", "b"):
            os.makedirs(os.path.join(work, name))
            replicas.append(Keyward(bins, os.path.join(work, name), store, "cache: { api_key_ttl: 1h }"))
        a, b = replicas
        a.start()
        fill(bins, store, load_keys + len(rates) * revocations, 0, work)
        b.start()
        keys = [line.strip() for line in open(os.path.join(work, "api_keys.txt"))]
        load_file = lines_from(os.path.join(work, "api_keys.txt"), 0, load_keys, os.path.join(work, "load.txt"))
        import base64
        import http.client

        basic = "Basic " + base64.b64encode(b"admin:scale-password").decode()

        def connect(kw):
            host, port = kw.proxy.split(":")
            return http.client.HTTPConnection(host, int(port), timeout=10)

        def status(conn, method, path, headers):
            conn.request(method, path, headers=headers)
            response = conn.getresponse()
            response.read()
            return response.status

        def measure(to_revoke):
            admin_a, probe_b = connect(a), connect(b)
            # Each key cached on B (and the admin's login on A) before the clock starts.
            for key in to_revoke:
                assert status(probe_b, "GET", "/x/fixed", {"Argus-API-Key": key}) == 200
            status(admin_a, "GET", "/authentication/v1/user/admin/apikey", {"Authorization": basic})
            latencies = []
            for key in to_revoke:
                user, prefix, _ = key.split("/")
                answer = status(admin_a, "DELETE", f"/authentication/v1/user/{user}/apikey/{user}/{prefix}",
                                {"Authorization": basic})
                if answer != 200:
                    sys.exit(f"revoking through A answered {answer}")
                revoked = time.monotonic()
                while status(probe_b, "GET", "/x/fixed", {"Argus-API-Key": key}) != 401:
                    if time.monotonic() - revoked > 10:
                        sys.exit("B still accepted a key 10 s after A revoked it")
                    time.sleep(0.001)
                latencies.append(time.monotonic() - revoked)
            latencies.sort()
            at = lambda q: latencies[max(0, math.ceil(len(latencies) * q) - 1)]
            return {"p50": at(0.5), "p99": at(0.99), "max": latencies[-1]}

        # Every load key cached on both replicas first.
        for kw in replicas:
            drive_all(bins, kw, load_file)
        ms = lambda v: f"{v * 1000:.1f} ms"
        print("| API-key load on each replica | p50 | p99 | max | load answered late or not 2xx |")
        print("|---|---:|---:|---:|---:|")
        rows = []
        for i, rate in enumerate(rates):
            batch = keys[load_keys + i * revocations:load_keys + (i + 1) * revocations]
            loads = []
            if rate:
                seconds = 4 + revocations // 40
                loads = [subprocess.Popen([os.path.join(bins, "examples", "open_loop"), kw.proxy, "/x/fixed", str(rate), str(seconds),
                                           "32", "-F", f"Argus-API-Key: {load_file}"], stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True) for kw in replicas]
                time.sleep(2)
            measured = measure(batch)
            driven = []
            for proc in loads:
                out, _ = proc.communicate()
                driven.append({k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", out)})
            bad = sum(d.get("errors", 0) + d.get("late", 0) for d in driven)
            sent = sum(d.get("sent", 0) for d in driven)
            label = f"{rate:,} requests/s ({load_keys:,} keys)" if rate else "none"
            print(f"| {label} | {ms(measured['p50'])} | {ms(measured['p99'])} | {ms(measured['max'])} | "
                  f"{f'{bad:,} of {sent:,}' if rate else '—'} |")
            rows.append({"rate": rate, **measured, "load": driven})
        print("\nAnchors (defaults, not measured here): Kong in database mode polls for changes every "
              "db_update_frequency (5 s); Tyk keeps a key's session in each gateway's local cache for "
              "cached_session_timeout (10 s).")
        results["revocation"] = rows
    finally:
        for kw in replicas:
            kw.stop()
        subprocess.run(["psql", PG_ADMIN, "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def hold(addr, count):
    """`count` kept-alive connections to `addr`, each having had one answered request."""
    host, port = addr.split(":")
    socks = []
    request = f"GET /public/fixed HTTP/1.1\r\nHost: {addr}\r\n\r\n".encode()
    for _ in range(count):
        s = socket.create_connection((host, int(port)))
        s.sendall(request)
        socks.append(s)
    answered = 0
    for s in socks:
        s.settimeout(10)
        if s.recv(4096).startswith(b"HTTP/1.1 200"):
            answered += 1
    return socks, answered


def measured_connections(name, pid, addr, count):
    time.sleep(1)
    idle = rss_bytes(pid)
    socks, answered = hold(addr, count)
    time.sleep(1)
    held = rss_bytes(pid)
    for s in socks:
        s.close()
    per_connection = (held - idle) / count
    print(f"| {name} | {answered:,} of {count:,} | {mib(idle)} | {mib(held)} | {per_connection:,.0f} |")
    return {"answered": answered, "idle": idle, "held": held, "per_connection": per_connection}


def connections_part(bins, count, results):
    """Idle kept-alive connections: keyward next to a bare pingora and nginx, same upstream."""
    print(f"\n## Idle kept-alive connections ({count:,}, one request answered on each)\n")
    print("| server | answered and held | RSS before | RSS holding them | bytes per connection |")
    print("|---|---:|---:|---:|---:|")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * count + 1024), hard))
    results["connections"] = {}
    work = tempfile.mkdtemp(prefix="keyward-scale-")
    try:
        extra = f"limits: {{ max_connections: {2 * count}, max_connections_per_client: 0 }}"
        kw = Keyward(bins, work, f"sqlite://{work}/keyward.db", extra)
        kw.start()
        results["connections"]["keyward"] = measured_connections("keyward", kw.pid, kw.proxy, count)
        kw.stop()
        bare_bin = os.path.join(bins, "examples", "bare_pingora")
        if os.path.exists(bare_bin):
            addr = f"127.0.0.1:{free_port()}"
            bare = subprocess.Popen([bare_bin, addr, UPSTREAM, "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for_port(addr)
            results["connections"]["bare pingora"] = measured_connections("bare pingora (same pingora, no keyward)", bare.pid, addr, count)
            bare.terminate()
            bare.wait()
        if shutil.which("nginx"):
            addr = f"127.0.0.1:{free_port()}"
            conf = os.path.join(work, "nginx.conf")
            with open(conf, "w") as f:
                f.write(f"""worker_processes 1;
worker_rlimit_nofile {4 * count + 1024};
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections {2 * count + 64}; }}
http {{
  access_log off;
  keepalive_requests 100000;
  keepalive_timeout 120s;
  upstream app {{ server {UPSTREAM}; keepalive 32; }}
  server {{
    listen {addr};
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
            master = subprocess.Popen(["nginx", "-c", conf, "-p", work], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for_port(addr)
            time.sleep(0.5)
            workers = subprocess.run(["pgrep", "-P", str(master.pid)], capture_output=True, text=True).stdout.split()
            if workers:
                results["connections"]["nginx"] = measured_connections("nginx (one worker)", int(workers[0]), addr, count)
            master.terminate()
            master.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def wait_for_port(addr):
    host, port = addr.split(":")
    for _ in range(200):
        try:
            socket.create_connection((host, int(port)), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {addr}")


def streams_part(bins, streams, results):
    """Many h2 streams on one TLS connection against as many HTTP/2 connections of one stream:
    keyward's CPU per request and throughput (h2load), and its memory with the streams open."""
    if not shutil.which("h2load") or not shutil.which("openssl"):
        print("\n(h2 streams: h2load or openssl missing, skipped)")
        return
    print(f"\n## HTTP/2: {streams} concurrent streams on one TLS connection\n")
    work = tempfile.mkdtemp(prefix="keyward-scale-")
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", f"{work}/tls.key", "-out", f"{work}/tls.crt"],
            check=True, capture_output=True)
        extra = f"limits: {{ max_h2_streams: {streams}, max_connections_per_client: 0 }}"
        kw = Keyward(bins, work, f"sqlite://{work}/keyward.db", extra)
        # listen.tls belongs to the listen section.
        text = open(kw.config).read().replace(
            f'listen: {{ proxy: "{kw.proxy}", ops: "{kw.ops}" }}',
            f'listen: {{ proxy: "{kw.proxy}", ops: "{kw.ops}", tls: {{ cert: "{work}/tls.crt", key: "{work}/tls.key" }} }}')
        open(kw.config, "w").write(text)
        kw.start()
        url = f"https://{kw.proxy}/public/fixed"
        print("| shape | requests/s | keyward CPU/request |")
        print("|---|---:|---:|")
        rows = {}
        for name, args in ((f"1 connection × {streams} streams", ["-c1", f"-m{streams}"]),
                           (f"{streams} connections × 1 stream", [f"-c{streams}", "-m1"]),
                           ("32 connections × 1 stream", ["-c32", "-m1"])):
            subprocess.run(["h2load", "-D", "1", "-t1", *args, url], capture_output=True)
            before = cpu_seconds(kw.pid)
            out = subprocess.run(["h2load", "-D", "5", "-t1", *args, url], capture_output=True, text=True).stdout
            used = cpu_seconds(kw.pid) - before
            done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", out).group(1))
            rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
            ok = int(re.search(r"status codes: (\d+) 2xx", out).group(1))
            if ok != done:
                print(f"  ({name}: {done - ok} of {done} answers were not 2xx)")
            rows[name] = {"rps": rps, "cpu_us": used / max(done, 1) * 1e6}
            print(f"| {name} | {rps:,.0f} | {used / max(done, 1) * 1e6:.0f} µs |")
        results["streams"] = rows
        kw.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def plot(results, path):
    if not results["memory"] or not results["misses"] or not results.get("revocation"):
        print("\n(not every part of the plot ran: the plot is left as it is)")
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right, third) = plt.subplots(1, 3, figsize=(15, 4))
    mem = results["memory"]
    if mem:
        keys = [m["keys"] for m in mem]
        left.plot(keys, [m["rss_full"] / 1048576 for m in mem], "o-", label="RSS, every key cached")
        left.plot(keys, [m["rss_idle"] / 1048576 for m in mem], "s--", label="RSS after start")
        left.set_xscale("log")
        left.set_yscale("log")
        left.set_xlabel("API keys in the store (and in the cache)")
        left.set_ylabel("MiB")
        left.set_title("keyward memory against keys held")
        for m in mem:
            left.annotate(f"{m['per_key']:,.0f} B/key", (m["keys"], m["rss_full"] / 1048576), textcoords="offset points", xytext=(-30, 8), fontsize=8)
        left.legend(fontsize=8)
    miss = results["misses"]
    if miss:
        labels = []
        values = []
        for m in miss:
            labels += [f"{m['store']}\nmiss", f"{m['store']}\nhit"]
            values += [(m["miss"]["p50_us"], m["miss"]["p99_us"]), (m["hit"]["p50_us"], m["hit"]["p99_us"])]
        xs = range(len(labels))
        right.bar([x - 0.2 for x in xs], [v[0] / 1000 for v in values], 0.4, label="p50")
        right.bar([x + 0.2 for x in xs], [v[1] / 1000 for v in values], 0.4, label="p99")
        right.set_xticks(list(xs))
        right.set_xticklabels(labels, fontsize=8)
        right.set_ylabel("ms (open loop, from the intended send time)")
        right.set_title("first requests of uncached keys vs the same keys cached")
        right.legend(fontsize=8)
    rows = results["revocation"]
    rates = [r["rate"] for r in rows]
    third.plot(rates, [r["p50"] * 1000 for r in rows], "o-", label="p50")
    third.plot(rates, [r["p99"] * 1000 for r in rows], "s--", label="p99")
    third.set_xlabel("API-key requests/s on each replica (2 replicas, 2 cores shared with the clients)")
    third.set_ylabel("ms from A's answer to B's first 401")
    third.set_title("revocation between two replicas (PostgreSQL)")
    third.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\nplot: {path}")


UPSTREAM = None


def main():
    global UPSTREAM
    parser = argparse.ArgumentParser()
    parser.add_argument("bins")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--miss-keys", type=int, default=100_000)
    parser.add_argument("--miss-rate", type=int, default=2000)
    parser.add_argument("--miss-seconds", type=int, default=4)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--streams", type=int, default=100, help="h2 streams on one connection (0: skip)")
    parser.add_argument("--capacity", type=int, default=50_000, help="the cache capacity of the flood part (0: skip it)")
    parser.add_argument("--limit-keys", type=int, default=100_000, help="keys of the rate-limit part (0: skip it)")
    parser.add_argument("--revocations", type=int, default=200, help="revocations between two replicas (0: skip)")
    parser.add_argument("--revocation-rates", default="0,500,1000,2000", help="API-key requests/s on each replica meanwhile")
    parser.add_argument("--plot")
    parser.add_argument("--json")
    args = parser.parse_args()
    bins = os.path.abspath(args.bins)
    UPSTREAM = f"127.0.0.1:{free_port()}"
    upstream = subprocess.Popen([os.path.join(bins, "examples", "echo_upstream"), UPSTREAM], stderr=subprocess.DEVNULL)
    results = {"memory": [], "misses": []}
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s]
        memory_part(bins, sizes, results)
        if args.capacity:
            bounds_part(bins, args.capacity, results)
        if args.miss_keys:
            misses_part(bins, [b for b in args.backends.split(",") if b], args.miss_keys, args.miss_rate, args.miss_seconds, results)
        if args.limit_keys:
            limits_part(bins, args.limit_keys, results)
        if args.revocations:
            revocation_part(bins, args.revocations, [int(r) for r in args.revocation_rates.split(",") if r], results)
        if args.connections:
            connections_part(bins, args.connections, results)
        if args.streams:
            streams_part(bins, args.streams, results)
    finally:
        upstream.terminate()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
