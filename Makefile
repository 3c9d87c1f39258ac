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

# The Rust guest crates' unit tests on the host, per-record and columnar (two
# invocations: the `columnar` feature must not leak into the per-record
# crates). The dev profile: arrow at opt-level 3 takes minutes of CI's two
# cores to compile, and these tests gain nothing from it.
SDK_TESTS := -p pipeline-sdk -p price-calculator -p router -p enrich-rs -p hostile
SDK_COLUMNAR_TESTS := -p pipeline-sdk --features columnar -p columnar-probe -p price-columnar
WORKER_TESTS := --release -p pipeline-worker

# SDK unit tests on the host: Python, JavaScript (Node) and the Rust guest crates.
sdk-test:
	python3 -m unittest discover -s sdk-wit/python/tests
	node --test sdk-wit/js/test/sdk.test.mjs sdk-wit/js/test/columnar.test.mjs
	$(CARGO) test $(SDK_TESTS)
	$(CARGO) test $(SDK_COLUMNAR_TESTS)

# Everything `test` compiles on the host, without running it (CI builds it
# beside the guests and components).
.PHONY: test-build
test-build:
	$(CARGO) test $(WORKER_TESTS) --no-run
	$(CARGO) test $(SDK_TESTS) --no-run
	$(CARGO) test $(SDK_COLUMNAR_TESTS) --no-run

dev: examples
	$(CARGO) run --release -p pipeline-worker -- dev

kafka-start:
	scripts/kafka.sh start

kafka-stop:
	scripts/kafka.sh stop

test: examples kafka-start sdk-test
	$(CARGO) test $(WORKER_TESTS) -- --test-threads=2

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

# The chaos harness (tests/all/chaos.rs) at full size: kill -9 at random
# moments in both delivery modes, a SIGSTOPped zombie, two workers moving
# partitions, a private broker restarted mid-stream. `make test` runs the
# same tests with their bounded defaults; CHAOS_SEED=<printed seed> replays a
# run's fault schedule.
CHAOS_RECORDS ?= 200000
CHAOS_KILLS ?= 100
CHAOS_ALO_RECORDS ?= 50000
CHAOS_ALO_KILLS ?= 20
CHAOS_GROUP_RECORDS ?= 100000
CHAOS_GROUP_FAULTS ?= 30
CHAOS_BROKER_RECORDS ?= 100000
CHAOS_BROKER_RESTARTS ?= 3
CHAOS_MAX_DELAY_MS ?= 1500
.PHONY: chaos
chaos: guests kafka-start
	CHAOS_RECORDS=$(CHAOS_RECORDS) CHAOS_KILLS=$(CHAOS_KILLS) \
	CHAOS_ALO_RECORDS=$(CHAOS_ALO_RECORDS) CHAOS_ALO_KILLS=$(CHAOS_ALO_KILLS) \
	CHAOS_GROUP_RECORDS=$(CHAOS_GROUP_RECORDS) CHAOS_GROUP_FAULTS=$(CHAOS_GROUP_FAULTS) \
	CHAOS_BROKER_RECORDS=$(CHAOS_BROKER_RECORDS) CHAOS_BROKER_RESTARTS=$(CHAOS_BROKER_RESTARTS) \
	CHAOS_MAX_DELAY_MS=$(CHAOS_MAX_DELAY_MS) \
	$(CARGO) test --release -p pipeline-worker --test all -- chaos:: --test-threads=1 --nocapture
