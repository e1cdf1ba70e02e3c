#!/usr/bin/env bash
# Directory users measured (SPEC §14, issue 24): the cost of a directory login, cold (the search,
# a bind on a connection of its own over ldaps://, the group checks, the store write) and cached,
# next to a local login cold (argon2id) and cached, and the duration of one revalidation sweep of
# USERS directory users. One run, one machine: an OpenLDAP slapd the script starts (its own
# slapd.conf, a CA and certificate made with openssl, USERS people written by slapadd, two
# groups: every person in a groupOfNames, every tenth in a posixGroup), the echo upstream, and
# keyward with a SQLite store.
#
# Usage: scripts/directory-bench.sh [USERS]   (default 10000)
# The binaries: $KEYWARD_BENCH_BIN (default $CARGO_TARGET_DIR/release/keyward, target/ when
# CARGO_TARGET_DIR is unset) and $KEYWARD_BENCH_UPSTREAM (default examples/echo_upstream beside
# it); `make directory-bench` builds both in release first. KEYWARD_BENCH_LDAP=plain uses
# ldap:// on loopback instead of ldaps://; KEYWARD_BENCH_REVALIDATE sets revalidate_every
# (default 30s: the sweep measured is the first one that starts after every user logged in).
# Prints median request times (client, keyward, upstream and slapd on one machine).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/measure.sh
. scripts/measure.sh

users="${1:-10000}"
target="${CARGO_TARGET_DIR:-target}"
bin="${KEYWARD_BENCH_BIN:-$target/release/keyward}"
upstream_bin="${KEYWARD_BENCH_UPSTREAM:-$(dirname "$bin")/examples/echo_upstream}"
revalidate="${KEYWARD_BENCH_REVALIDATE:-30s}"
scheme=ldaps
[ "${KEYWARD_BENCH_LDAP:-tls}" = plain ] && scheme=ldap

install_missing slapadd=slapd ldapsearch=ldap-utils openssl=openssl curl=curl
[ -x /usr/sbin/slapd ] || { echo "directory-bench.sh needs OpenLDAP's slapd (scripts/prereqs.sh)" >&2; exit 1; }
for tool in ldapsearch openssl curl python3; do
  command -v "$tool" >/dev/null || { echo "directory-bench.sh needs $tool" >&2; exit 1; }
done
for file in "$bin" "$upstream_bin"; do
  [ -x "$file" ] || { echo "$file is missing: cargo build --release --bin keyward --example echo_upstream (or set KEYWARD_BENCH_BIN / KEYWARD_BENCH_UPSTREAM)" >&2; exit 1; }
done

work="$(mktemp -d)"
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ready() { for _ in $(seq 200); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done; echo "not ready: $1" >&2; exit 1; }

suffix="dc=example,dc=com"
service_dn="cn=keyward,ou=services,$suffix"
export KEYWARD_BENCH_LDAP_PASSWORD=bench-service-secret

# A CA and slapd's certificate for 127.0.0.1.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=directory-bench CA" -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
  -keyout "$work/slapd.key" -out "$work/slapd.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$work/ext.cnf"
openssl x509 -req -in "$work/slapd.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
  -CAcreateserial -days 2 -extfile "$work/ext.cnf" -out "$work/slapd.pem" 2>/dev/null
chmod 644 "$work/slapd.key"

mkdir "$work/data"
cat >"$work/slapd.conf" <<CONF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/nis.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile $work/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
TLSCertificateFile $work/slapd.pem
TLSCertificateKeyFile $work/slapd.key
database mdb
maxsize 1073741824
suffix "$suffix"
rootdn "cn=admin,$suffix"
rootpw bench-root-secret
directory $work/data
index uid eq
access to attrs=userPassword by anonymous auth by * none
access to * by users read by * none
CONF
python3 - "$users" "$suffix" "$service_dn" >"$work/data.ldif" <<'PY'
import sys
users, suffix, service_dn = int(sys.argv[1]), sys.argv[2], sys.argv[3]
out = sys.stdout
out.write(f"dn: {suffix}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n")
for ou in ("people", "groups", "services"):
    out.write(f"dn: ou={ou},{suffix}\nobjectClass: organizationalUnit\nou: {ou}\n\n")
out.write(f"dn: {service_dn}\nobjectClass: person\ncn: keyward\nsn: keyward\nuserPassword: bench-service-secret\n\n")
uids = [f"p{i:05}" for i in range(users)]
for uid in uids:
    out.write(f"dn: uid={uid},ou=people,{suffix}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\n"
              f"sn: {uid}\ndepartmentNumber: cust-m\nuserPassword: {uid}-directory-pw\n\n")
out.write(f"dn: cn=staff,ou=groups,{suffix}\nobjectClass: groupOfNames\ncn: staff\n")
out.write("".join(f"member: uid={uid},ou=people,{suffix}\n" for uid in uids) or f"member: {service_dn}\n")
out.write(f"\ndn: cn=admins,ou=groups,{suffix}\nobjectClass: posixGroup\ncn: admins\ngidNumber: 500\n")
out.write("".join(f"memberUid: {uid}\n" for uid in uids[::10]))
out.write("\n")
PY
/usr/sbin/slapadd -q -f "$work/slapd.conf" -l "$work/data.ldif"
ldap_port=$(port); ldaps_port=$(port)
/usr/sbin/slapd -f "$work/slapd.conf" -h "ldap://127.0.0.1:$ldap_port/ ldaps://127.0.0.1:$ldaps_port/" \
  -d 0 2>"$work/slapd.log" & pids+=($!)
for _ in $(seq 100); do
  ldapsearch -x -H "ldap://127.0.0.1:$ldap_port" -D "$service_dn" -w bench-service-secret \
    -b "$suffix" -s base dn >/dev/null 2>&1 && break
  sleep 0.1
done
if [ "$scheme" = ldaps ]; then url="ldaps://127.0.0.1:$ldaps_port"; else url="ldap://127.0.0.1:$ldap_port"; fi

up="127.0.0.1:$(port)"; kw="127.0.0.1:$(port)"; kw_ops="127.0.0.1:$(port)"
"$upstream_bin" "$up" 2>/dev/null & pids+=($!)
ready "http://$up/public/fixed"
cat >"$work/keyward.yaml" <<YAML
listen: { proxy: $kw, ops: $kw_ops }
upstream: { address: $up }
store: { url: sqlite://$work/keyward.db }
server: { pid_file: $work/keyward.pid }
logging: { level: warn }
cache:
  # Every login stays live for the sweep however long logging everyone in takes.
  basic_ttl: 1h
routes:
  - path: /public
    public: true
  - path: /
    require: { min_security_level: EXTERNAL }
identity:
  ldap:
    url: $url
    ca: $work/ca.pem
    bind_dn: $service_dn
    bind_password_env: KEYWARD_BENCH_LDAP_PASSWORD
    user_base: ou=people,$suffix
    user_filter: "(&(objectClass=inetOrgPerson)(uid={user})(!(description=locked)))"
    groups:
      "cn=staff,ou=groups,$suffix": [STAFF]
      "cn=admins,ou=groups,$suffix": [POWER-USER]
    customer_attribute: departmentNumber
    revalidate_every: $revalidate
YAML
local_users=20
for i in $(seq 0 $((local_users - 1))); do
  echo local-password | "$bin" user add "local$i" --password-stdin --config "$work/keyward.yaml" \
    >/dev/null 2>"$work/cli.err" || { cat "$work/cli.err" >&2; exit 1; }
done
"$bin" serve --config "$work/keyward.yaml" 2>"$work/keyward.err" & pids+=($!)
ready "http://$kw_ops/readyz"

echo "directory-bench: $bin, $users directory users over $scheme://, revalidate_every $revalidate"
python3 - "$kw" "$kw_ops" "$users" "$local_users" <<'PY'
import base64
import http.client
import statistics
import sys
import threading
import time

kw, ops, users, local_users = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
host, port = kw.split(":")


class Client:
    """One kept-alive connection, like a real client's."""

    def __init__(self):
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def get(self, path, user=None, password=None):
        headers = {}
        if user is not None:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        self.conn.request("GET", path, headers=headers)
        resp = self.conn.getresponse()
        resp.read()
        return resp.status


def median_ms(samples, request):
    times = []
    for i in range(samples):
        started = time.perf_counter()
        status = request(i)
        times.append((time.perf_counter() - started) * 1000)
        if status != 200:
            sys.exit(f"expected 200, got {status} (sample {i})")
    return statistics.median(times)


def metrics():
    conn = http.client.HTTPConnection(*ops.split(":"), timeout=10)
    conn.request("GET", "/metrics")
    return conn.getresponse().read().decode()


def sweeps():
    """(sum, count) of keyward_directory_sweep_seconds."""
    values = {}
    for line in metrics().splitlines():
        for part in ("sum", "count"):
            prefix = f"keyward_directory_sweep_seconds_{part} "
            if line.startswith(prefix):
                values[part] = float(line[len(prefix):])
    return values.get("sum", 0.0), int(values.get("count", 0))


client = Client()
uid = lambda i: f"p{i:05}"
cold = min(200, users)
public = median_ms(200, lambda i: client.get("/public"))
local_cold = median_ms(local_users, lambda i: client.get("/x", f"local{i}", "local-password"))
local_cached = median_ms(200, lambda i: client.get("/x", "local0", "local-password"))
directory_cold = median_ms(cold, lambda i: client.get("/x", uid(i), f"{uid(i)}-directory-pw"))
directory_cached = median_ms(200, lambda i: client.get("/x", uid(0), f"{uid(0)}-directory-pw"))
print("median request time (ms), client, keyward, upstream and slapd on one machine:")
print(f"  public route (no credential)       {public:8.2f}")
print(f"  local Basic login, cold (argon2id) {local_cold:8.2f}   cached {local_cached:6.2f}")
print(f"  directory login, cold              {directory_cold:8.2f}   cached {directory_cached:6.2f}"
      "   (cold: search, bind on its own connection, 2 group checks, store write)")

# Everyone else logs in, 8 clients at once.
failures = []


def log_in(first):
    c = Client()
    for i in range(first, users, 8):
        status = c.get("/x", uid(i), f"{uid(i)}-directory-pw")
        if status != 200:
            failures.append((uid(i), status))


started = time.perf_counter()
threads = [threading.Thread(target=log_in, args=(cold + t,)) for t in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if failures:
    sys.exit(f"logins refused: {failures[:5]}")
print(f"  {users - cold} more cold directory logins, 8 clients: {time.perf_counter() - started:.1f} s")


# A sweep under way while users were still logging in counted fewer of them: the one that
# starts after it is whole.
def next_sweep(after, deadline_s=1800):
    deadline = time.time() + deadline_s
    while True:
        total, count = sweeps()
        if count > after:
            return total, count
        if time.time() > deadline:
            sys.exit("no sweep finished")
        time.sleep(0.2)


_, count = sweeps()
total, count = next_sweep(count)
whole, _ = next_sweep(count)
print(f"  one revalidation sweep of {users} directory users: {whole - total:.2f} s")
PY
