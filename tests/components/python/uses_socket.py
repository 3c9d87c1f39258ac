"""Imports socket and tries to connect to 127.0.0.1:9092 (a Kafka broker).

The worker must not grant network access: the connect must fail. The function
returns the outcome in the record instead of raising, so a test can tell
"blocked" from "trapped": {"connected": false, "error": "<Type>: <message>"}.
{"connected": true} means the sandbox let the guest reach the network.
"""

import socket

from pipeline_sdk import Record, transform


@transform
def uses_socket(record: Record) -> Record:
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.settimeout(2.0)
            s.connect(("127.0.0.1", 9092))
        finally:
            s.close()
    except BaseException as e:
        record.fields = {"connected": False, "error": "%s: %s" % (type(e).__name__, e)}
    else:
        record.fields = {"connected": True}
    return record
