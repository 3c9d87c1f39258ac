# The two commands of the README:
#   make dev    the main job on an in-process Kafka cluster (no Kafka to install)
#   make test   the whole test suite against a real Apache Kafka broker
# Everything they need is installed by the scripts they call.

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: dev test guests python-examples js-examples examples sdk-test kafka-start kafka-stop lint bench

guests:
	scripts/build-rust-guests.sh

python-examples:
	scripts/build-python-examples.sh

js-examples:
	scripts/build-js.sh customer-examples/js_enrich/enrich.js target/components/js_enrich.wasm

examples: guests python-examples js-examples

# SDK unit tests on the host: Python, JavaScript (Node) and the Rust guest crates.
sdk-test:
	python3 -m unittest discover -s sdk-wit/python/tests
	node --test sdk-wit/js/test/sdk.test.mjs
	$(CARGO) test --release -p pipeline-sdk -p price-calculator -p router -p enrich-rs -p hostile

dev: examples
	$(CARGO) run --release -p pipeline-worker -- dev

kafka-start:
	scripts/kafka.sh start

kafka-stop:
	scripts/kafka.sh stop

test: examples kafka-start sdk-test
	$(CARGO) test --release -p pipeline-worker -- --test-threads=2

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release -p pipeline-worker --all-targets -- -D warnings

# The e2e benchmark's peer candidates, outside `make test` and CI: a Java
# KafkaConsumer -> KafkaProducer passthrough and a Kafka Streams enrich (Maven
# Central), and a Quix Streams venv (PyPI), into target/bench-peers.
.PHONY: bench-peers
bench-peers:
	benches/peers/setup.sh

# A peer that cannot be built here is reported by the bench as skipped.
bench: examples kafka-start
	-benches/peers/setup.sh
	$(CARGO) bench -p pipeline-worker

# Fuzz both directions (nightly + cargo-fuzz), each target bounded in time:
# Kafka message -> WIT input record (decode_record) and WIT outputs ->
# producer records (encode_outputs). LDFLAGS: the sanitizer-instrumented
# zstd-sys needs the ASan runtime in librdkafka's configure link checks.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= decode_record encode_outputs
.PHONY: fuzz
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  LDFLAGS=-fsanitize=address $(CARGO) +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done
