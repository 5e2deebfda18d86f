.PHONY: run test lint fmt ci chaos bench bench-quick

run:
	cargo run --release

test:
	cargo test

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

# The benchmark (examples/loadgen): ceiling, submit, end to end, latency, memory, scale.
# Prints a table against the performance targets and writes target/bench/latest.json.
bench:
	cargo build --release --bins --examples
	cargo run --release --example loadgen -- --full

# The same phases, smaller: under a minute once built.
bench-quick:
	cargo build --release --bins --examples
	cargo run --release --example loadgen -- --quick
