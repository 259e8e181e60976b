# The two entry points a newcomer needs: `make lab` and `make test`.
CARGO ?= cargo
BIN := target/release/margay

.PHONY: setup build lab test lint fmt clean bench

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build --release --locked -p margay

# The main job: a three-node cluster in network namespaces, probed pod to pod.
lab: build
	scripts/lab.sh $(BIN)

test: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) test --workspace --locked

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
