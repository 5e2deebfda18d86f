.PHONY: run test lint fmt ci bench bench-quick

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

# The benchmark (examples/loadgen): ceiling, submit, end to end, latency, memory, scale.
# Prints a table against the performance targets and writes target/bench/latest.json.
bench:
	cargo build --release --bins --examples
	cargo run --release --example loadgen -- --full

# The same phases, smaller: under a minute once built.
bench-quick:
	cargo build --release --bins --examples
	cargo run --release --example loadgen -- --quick
