# The two commands of a fresh machine:
#   KEYWARD_ADMIN_PASSWORD=choose-one make run   # keyward with the embedded default config
#   make test                                    # the whole test suite
.PHONY: run test prereqs cpu-fallback load load-postgres load-edge compare compare-authz compare-builds check-deploy directory-bench scale

prereqs:
	@scripts/prereqs.sh

run: prereqs
	cargo build --release --bin keyward --example echo_upstream
	scripts/run.sh

test: prereqs
	cargo test --workspace --all-targets

# deploy/ as an operator uses it: Prometheus rules and config, the manifests, the dashboard,
# the Dockerfile, and a live keyward's /metrics (scripts/check-deploy.sh).
check-deploy: prereqs
	scripts/check-deploy.sh

# The credential routes against keyward's public route, then keyward against nginx over
# plaintext HTTP/1.1, TLS and HTTP/2 with the same certificate (load-edge).
load: prereqs
	scripts/load.sh 4 32 7
	scripts/load-edge.sh 4 32 5

# The same comparison as a fleet replica runs it: a PostgreSQL store (a fresh database on
# KEYWARD_TEST_POSTGRES), the replay window in Redis and fleet-scoped rate limits.
load-postgres: prereqs
	KEYWARD_LOAD_STORE=postgres KEYWARD_LOAD_REDIS=$${KEYWARD_LOAD_REDIS:-redis://127.0.0.1:6379} KEYWARD_LOAD_LIMITS=fleet scripts/load.sh 4 32 7

# keyward against nginx with the same certificate: HTTP/1.1, TLS, HTTP/2 (scripts/load-edge.sh).
load-edge: prereqs
	scripts/load-edge.sh 4 32 5

# nginx, a bare pingora passthrough and keyward, one thread each, in front of the same upstream:
# throughput, CPU per request and open-loop latency added per hop (scripts/compare.sh).
compare: prereqs
	scripts/compare.sh 4 32 3 5

# External authorization (scripts/compare-authz.sh): nginx alone, nginx → keyward
# (auth_request) → upstream, keyward inline, and the /auth/nginx check alone.
compare-authz: prereqs
	scripts/compare-authz.sh 4 32 3

# Directory users (scripts/directory-bench.sh): a directory login cold and cached next to a local
# one, and one revalidation sweep of 10 000 directory users, against a slapd the script starts.
directory-bench: prereqs
	cargo build --release --bin keyward --example echo_upstream
	scripts/directory-bench.sh 10000

# The release build on emulated older CPUs (QEMU user mode: Westmere without AVX2, Haswell
# without AVX-512): signatures still verify with the backend curve25519-dalek picks at run time.
cpu-fallback: prereqs
	scripts/cpu-fallback.sh

# keyward at scale (scripts/scale.sh): memory per cached key and token with 10 k, 100 k and 1 M
# keys, start-up with 1 M, memory under floods, cache misses on SQLite and PostgreSQL, memory
# per kept-alive connection; the plot goes to docs/src/images/scale.png.
scale: prereqs
	scripts/scale.sh

# Two builds of keyward side by side (scripts/compare-builds.sh): CPU per request on the public
# route, Basic, API key, token and signed requests, one thread each, the other paused while one
# is measured; fails when the candidate is more than KEYWARD_COMPARE_MAX_WORSE % (default 3)
# worse on a route. Both binaries are built beforehand, each in its own checkout and target
# directory, the candidate with its examples:
#   git worktree add /tmp/base BASE_COMMIT
#   (cd /tmp/base && CARGO_TARGET_DIR=/tmp/base-target cargo build --release --bin keyward)
#   cargo build --release --bin keyward --example echo_upstream --example signed_load
#   make compare-builds BASELINE=/tmp/base-target/release/keyward CANDIDATE=target/release/keyward
# DURATION, CONNECTIONS and ROUNDS (5 32 5) set each measurement's length, wrk's connections and
# the interleaved rounds.
DURATION ?= 5
CONNECTIONS ?= 32
ROUNDS ?= 5
compare-builds:
	@test -n "$(BASELINE)" -a -n "$(CANDIDATE)" || { echo "usage: make compare-builds BASELINE=path/to/keyward CANDIDATE=path/to/keyward [DURATION=5 CONNECTIONS=32 ROUNDS=5]" >&2; exit 2; }
	scripts/compare-builds.sh "$(BASELINE)" "$(CANDIDATE)" $(DURATION) $(CONNECTIONS) $(ROUNDS)
