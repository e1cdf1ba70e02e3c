# The two commands of a fresh machine:
#   KEYWARD_ADMIN_PASSWORD=choose-one make run   # keyward with the embedded default config
#   make test                                    # the whole test suite
.PHONY: run test prereqs load load-postgres load-edge compare check-deploy

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

# The same comparison with a PostgreSQL store (a fresh database on KEYWARD_TEST_POSTGRES).
load-postgres: prereqs
	KEYWARD_LOAD_STORE=postgres scripts/load.sh 4 32 7

# keyward against nginx with the same certificate: HTTP/1.1, TLS, HTTP/2 (scripts/load-edge.sh).
load-edge: prereqs
	scripts/load-edge.sh 4 32 5

# nginx, a bare pingora passthrough and keyward, one thread each, in front of the same upstream:
# throughput, CPU per request and open-loop latency added per hop (scripts/compare.sh).
compare: prereqs
	scripts/compare.sh 4 32 3 5
