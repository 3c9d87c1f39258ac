"""The Quix Streams peer of the end-to-end benchmark (benches/e2e.rs).

Runs the customer's enrich function, customer-examples/enrich_event/enrich_event.py,
imported as is with the real pipeline_sdk (sdk-wit/python) on the host, unsandboxed,
in a Quix Streams application: JSON in (Quix's deserializer), the function called
with a pipeline_sdk Record over the parsed fields, JSON out. Key and headers pass
through; the producer is idempotent with acks=all and linger.ms=5 like the worker's.

    python enrich_quix.py BROKERS INPUT OUTPUT GROUP

Runs until SIGTERM (Quix stops, commits and exits) or SIGKILL.
"""

import logging
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(REPO, "sdk-wit", "python"))
sys.path.insert(0, os.path.join(REPO, "customer-examples", "enrich_event"))

from pipeline_sdk import Record  # noqa: E402
from enrich_event import enrich_event  # noqa: E402
from quixstreams import Application  # noqa: E402


def enrich(value):
    return enrich_event(Record.from_fields(value)).fields


def main():
    if len(sys.argv) != 5:
        print("usage: enrich_quix.py BROKERS INPUT OUTPUT GROUP", file=sys.stderr)
        sys.exit(2)
    brokers, input_topic, output_topic, group = sys.argv[1:]
    app = Application(
        broker_address=brokers,
        consumer_group=group,
        auto_offset_reset="earliest",
        auto_create_topics=False,
        use_changelog_topics=False,
        producer_extra_config={"enable.idempotence": True, "acks": "all", "linger.ms": 5},
        loglevel=logging.WARNING,
    )
    src = app.topic(input_topic, value_deserializer="json")
    dst = app.topic(output_topic, value_serializer="json")
    sdf = app.dataframe(src)
    sdf = sdf.apply(enrich)
    sdf.to_topic(dst)
    app.run()


if __name__ == "__main__":
    main()
