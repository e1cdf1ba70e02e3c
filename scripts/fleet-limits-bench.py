#!/usr/bin/env python3
"""Fleet-scoped rate limits, measured: Redis commands per 1 000 requests of an API key under
its quota, and keyward's CPU per request, with `rate_limits.scope: fleet` and `scope: replica`
in the same run (same binary, same Redis, same upstream, same pacing).

Usage: scripts/fleet-limits-bench.py [REQUESTS] [RATE_PER_S] [QUOTA_RPS] [QUOTA_BURST]
(defaults 1000 requests at 80/s against a quota of 100/s with a burst of 200: under the quota).
The binary is $KEYWARD_BIN, else $CARGO_TARGET_DIR/release/keyward (build it first:
`cargo build --release --bin keyward --example echo_upstream`); PROFILE=debug takes the debug
build instead. Redis commands are read from `INFO commandstats` of a redis-server the script
starts (INFO itself left out); CPU is the keyward process's user + system time from
/proc/PID/stat over the run. Prints one line per scope."""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import base64

REQUESTS = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
RATE = float(sys.argv[2]) if len(sys.argv) > 2 else 80.0
QUOTA_RPS = float(sys.argv[3]) if len(sys.argv) > 3 else 100.0
QUOTA_BURST = int(sys.argv[4]) if len(sys.argv) > 4 else 200
PASSWORD = "bench-admin-password"

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
profile = os.environ.get("PROFILE", "release")
binary = os.environ.get("KEYWARD_BIN", os.path.join(target, profile, "keyward"))
echo = os.path.join(target, profile, "examples", "echo_upstream")


def port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(p, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", p), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {p}")


def redis_commands(p):
    """Calls per command (`INFO commandstats`), INFO itself left out."""
    out = subprocess.run(
        ["redis-cli", "-p", str(p), "INFO", "commandstats"],
        capture_output=True, text=True, check=True,
    ).stdout
    calls = {}
    for line in out.splitlines():
        if line.startswith("cmdstat_") and not line.startswith("cmdstat_info:"):
            name, rest = line[len("cmdstat_"):].split(":", 1)
            calls[name] = int(rest.split("calls=", 1)[1].split(",", 1)[0])
    return calls


def difference(after, before):
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def metric(ops, name):
    status, body = request(f"http://127.0.0.1:{ops}/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of the whole line (11 and 12 after the name).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def request(url, headers=None, body=None, method="GET"):
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def run(scope, work, redis_port, upstream):
    proxy, ops = port(), port()
    config = os.path.join(work, f"{scope}.yaml")
    with open(config, "w") as f:
        f.write(f"""
listen: {{ proxy: 127.0.0.1:{proxy}, ops: 127.0.0.1:{ops} }}
upstream: {{ address: {upstream} }}
store: {{ url: sqlite://{work}/{scope}.db }}
bootstrap:
  admin: {{ name: admin, password_env: BENCH_ADMIN_PASSWORD, functions: [POWER-USER] }}
server: {{ threads: 2, pid_file: {work}/{scope}.pid }}
logging: {{ level: warn }}
replay: {{ redis_url: "redis://127.0.0.1:{redis_port}" }}
rate_limits:
  scope: {scope}
  per_credential: {{ requests_per_second: {QUOTA_RPS}, burst: {QUOTA_BURST} }}
routes:
  - path: /
    require: {{ min_security_level: EXTERNAL }}
""")
    env = dict(os.environ, BENCH_ADMIN_PASSWORD=PASSWORD)
    kw = subprocess.Popen(
        [binary, "serve", "--config", config], env=env,
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, f"{scope}.log"), "w"),
    )
    try:
        wait_port(proxy)
        wait_port(ops)
        auth = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
        status, body = request(
            f"http://127.0.0.1:{proxy}/authentication/v1/user/admin/apikey",
            {"Authorization": f"Basic {auth}", "Content-Type": "application/json"},
            json.dumps({"description": "bench"}).encode(), "POST",
        )
        assert status == 201, (status, body)
        key = json.loads(body)["data"]["apiKeyString"]
        url = f"http://127.0.0.1:{proxy}/bench"
        # Warm the key's cache entry (one store read) outside the measurement.
        request(url, {"Argus-API-Key": key})
        time.sleep(QUOTA_BURST / QUOTA_RPS)  # the bucket is whole again
        commands, cpu = redis_commands(redis_port), cpu_seconds(kw.pid)
        leases = metric(ops, "keyward_rate_limit_redis_calls_total")
        statuses = {}
        start = time.monotonic()
        for i in range(REQUESTS):
            delay = start + i / RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            status, _ = request(url, {"Argus-API-Key": key})
            statuses[status] = statuses.get(status, 0) + 1
        took = time.monotonic() - start
        commands = difference(redis_commands(redis_port), commands)
        cpu = cpu_seconds(kw.pid) - cpu
        leases = metric(ops, "keyward_rate_limit_redis_calls_total") - leases
        return {
            "scope": scope,
            "requests": REQUESTS,
            "statuses": statuses,
            "seconds": round(took, 2),
            "redis_commands_per_1000": round(sum(commands.values()) * 1000 / REQUESTS, 1),
            "redis_commands": commands,
            "lease_calls": leases,
            "cpu_us_per_request": round(cpu * 1e6 / REQUESTS, 1),
        }
    finally:
        kw.terminate()
        kw.wait()


def main():
    for path in (binary, echo):
        if not os.path.exists(path):
            raise SystemExit(f"{path} missing: cargo build --{profile} --bin keyward --example echo_upstream")
    with tempfile.TemporaryDirectory() as work:
        redis_port, upstream_port = port(), port()
        redis = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        upstream = subprocess.Popen([echo, f"127.0.0.1:{upstream_port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(redis_port)
            wait_port(upstream_port)
            print(f"# {REQUESTS} requests at {RATE}/s, quota {QUOTA_RPS}/s burst {QUOTA_BURST}, {profile} build")
            for scope in ("fleet", "replica"):
                print(json.dumps(run(scope, work, redis_port, f"127.0.0.1:{upstream_port}")))
        finally:
            upstream.terminate()
            redis.terminate()


if __name__ == "__main__":
    main()
