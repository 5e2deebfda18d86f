.PHONY: run test lint fmt ci

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
