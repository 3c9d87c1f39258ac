# The two commands of the README:
#   make dev    the main job on an in-process Kafka cluster (no Kafka to install)
#   make test   the whole test suite against a real Apache Kafka broker
# Everything they need is installed by the scripts they call.

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: dev test guests python-examples examples kafka-start kafka-stop lint bench

guests:
	scripts/build-rust-guests.sh

python-examples:
	scripts/build-python-examples.sh

examples: guests python-examples

dev: examples
	$(CARGO) run --release -p pipeline-worker -- dev

kafka-start:
	scripts/kafka.sh start

kafka-stop:
	scripts/kafka.sh stop

test: examples kafka-start
	$(CARGO) test --release -p pipeline-worker -- --test-threads=2

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release -p pipeline-worker --all-targets -- -D warnings

bench: examples kafka-start
	$(CARGO) bench -p pipeline-worker
