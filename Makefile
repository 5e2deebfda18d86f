.PHONY: run test test-tools lint fmt ci chaos bench bench-quick

run:
	cargo run --release

test:
	cargo test

# Chromium, ChromeDriver and promtool, from Debian's packages, for the browser and
# metrics-format tests (without them those tests say they skip). Needs root or sudo.
test-tools:
	bash .ci/install-test-tools

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

fmt:
	cargo fmt

ci:
	bash .ci/run

# The crash-loop test at length: 100 kill -9 cycles under concurrent submits (cargo test runs 10).
chaos:
	CHAOS_CYCLES=100 cargo test --test crash_loop -- --nocapture

# The benchmark (examples/loadgen): ceiling, submit, end to end, latency, memory, scale, then
# submit and end to end on PostgreSQL (1 and 3 nodes) if one answers at BENCH_POSTGRES_URL
# (default postgres://root@127.0.0.1/test). Prints a table against the performance targets and
# writes target/bench/latest.json. One build with the postgres feature serves every phase.
# The profiling profile is the release build with line tables (Cargo.toml), so a profiler can
# be pointed at the server the benchmark runs: target/profiling/mini-lambda-rust.
bench:
	cargo build --profile profiling --features postgres --bins --examples
	cargo run --profile profiling --features postgres --example loadgen -- --full

# The same phases, smaller: a minute or two once built.
bench-quick:
	cargo build --profile profiling --features postgres --bins --examples
	cargo run --profile profiling --features postgres --example loadgen -- --quick
