"""Unit tests of pipeline_sdk on plain CPython (no component needed).

    python3 -m unittest discover -s sdk-wit/python/tests -v
    (or: python3 -m pytest sdk-wit/python/tests)

They drive pipeline_sdk._runtime._run, the same function the component's
exports call, with the stand-in WIT types of pipeline_sdk._native.
"""

import itertools
import os
import sys
import tempfile
import textwrap
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SDK_ROOT = os.path.dirname(HERE)
REPO = os.path.dirname(os.path.dirname(SDK_ROOT))
sys.path.insert(0, SDK_ROOT)

from pipeline_sdk import (  # noqa: E402
    Headers,
    InvalidInput,
    MissingField,
    Record,
    TransformDefinitionError,
    _registry,
    _runtime,
    log,
)
from pipeline_sdk._native import (  # noqa: E402
    Err,
    Header,
    InputRecord,
    Ok,
    TransformError_Failed,
    TransformError_InvalidInput,
)

_counter = itertools.count()
_tmp = tempfile.mkdtemp(prefix="pipeline-sdk-test-")
sys.path.insert(0, _tmp)


def load_source(source, name=None):
    """Writes `source` as a fresh module and loads it as the transform."""
    _registry._reset()
    name = name or "customer_%d" % next(_counter)
    with open(os.path.join(_tmp, name + ".py"), "w") as f:
        f.write(textwrap.dedent(source))
    _runtime.load(name)
    return name


def load_file(path):
    _registry._reset()
    sys.path.insert(0, os.path.dirname(path))
    try:
        name = os.path.basename(path)[:-3]
        sys.modules.pop(name, None)
        _runtime.load(name)
    finally:
        sys.path.pop(0)


def inp(value, key=b"k", headers=None, timestamp=1700000000123, topic="in"):
    if isinstance(value, str):
        value = value.encode()
    return InputRecord(
        key=key,
        value=value,
        headers=[Header(k, v) for k, v in (headers or [("trace", b"t-1")])],
        topic=topic,
        partition=3,
        offset=42,
        timestamp=timestamp,
    )


def run(value, **kw):
    return _runtime._run(inp(value, **kw))


def ok_values(result):
    assert isinstance(result, Ok), result
    return [o.value for o in result.value]


def err(result):
    assert isinstance(result, Err), result
    kind = "invalid-input" if isinstance(result.value, TransformError_InvalidInput) else "failed"
    return kind, result.value.value


ENRICH = os.path.join(REPO, "customer-examples", "enrich_event", "enrich_event.py")


class PassThroughTest(unittest.TestCase):
    def test_untouched_value_is_byte_identical(self):
        load_source(
            """
            from pipeline_sdk import transform
            @transform
            def f(record):
                record.headers.add("seen", b"1")
                return record
            """
        )
        raw = b'{ "a" : 1,   "b": "caf\\u00e9" }'
        r = run(raw)
        self.assertEqual(ok_values(r), [raw])
        out = r.value[0]
        self.assertEqual(out.key, b"k")
        self.assertEqual(out.timestamp, 1700000000123)
        self.assertEqual([(h.key, h.value) for h in out.headers], [("trace", b"t-1"), ("seen", b"1")])
        self.assertIsNone(out.topic)

    def test_non_json_value_passes_if_fields_not_read(self):
        load_source(
            """
            from pipeline_sdk import transform
            @transform
            def f(record):
                return record
            """
        )
        self.assertEqual(ok_values(run(b"\x00\xffnot json")), [b"\x00\xffnot json"])

    def test_read_only_access_keeps_original_bytes(self):
        load_source(
            """
            from pipeline_sdk import transform
            @transform
            def f(record):
                if record.fields["kind"] == "x" and record.fields["n"]["deep"] == [1]:
                    return record
            """
        )
        raw = b'{"kind": "x", "n": {"deep": [1]}, "f": 1.50}'
        self.assertEqual(ok_values(run(raw)), [raw])

    def test_change_is_reencoded_compactly(self):
        load_source(
            """
            from pipeline_sdk import transform
            @transform
            def f(record):
                record.fields["added"] = "é"
                return record
            """
        )
        self.assertEqual(
            ok_values(run(b'{"a": 1, "b": [1, 2]}')),
            ['{"a":1,"b":[1,2],"added":"é"}'.encode("utf-8")],
        )

    def test_nested_change_is_seen(self):
        load_source(
            """
            from pipeline_sdk import transform
            @transform
            def f(record):
                record.fields["user"]["tags"].append("x")
                return record
            """
        )
        self.assertEqual(
            ok_values(run(b'{"user": {"tags": []}}')), [b'{"user":{"tags":["x"]}}']
        )

    def test_change_through_shallow_copy_is_seen(self):
        load_source(
            """
            from pipeline_sdk import transform
            @transform
            def f(record):
                d = dict(record.fields)
                d["user"]["id"] = 2
                return record
            """
        )
        self.assertEqual(ok_values(run(b'{"user": {"id": 1}}')), [b'{"user":{"id":2}}'])

    def test_int_to_bool_change_is_seen(self):
        load_source(
            """
            from pipeline_sdk import transform
            @transform
            def f(record):
                record.fields["n"]["v"] = True
                return record
            """
        )
        self.assertEqual(ok_values(run(b'{"n": {"v": 1}}')), [b'{"n":{"v":true}}'])

    def test_raw_value_can_be_set(self):
        load_source(
            """
            from pipeline_sdk import transform
            @transform
            def f(record):
                record.value = record.value.upper()
                record.key = "new-key"
                record.timestamp = None
                return record
            """
        )
        r = run(b"plain text")
        self.assertEqual(ok_values(r), [b"PLAIN TEXT"])
        self.assertEqual(r.value[0].key, b"new-key")
        self.assertIsNone(r.value[0].timestamp)

    def test_null_key_and_no_timestamp_pass_through(self):
        load_source(
            """
            from pipeline_sdk import transform
            @transform
            def f(record):
                assert record.key is None and record.timestamp is None
                assert (record.topic, record.partition, record.offset) == ("in", 3, 42)
                return record
            """
        )
        r = run(b"{}", key=None, timestamp=None)
        self.assertIsNone(r.value[0].key)
        self.assertIsNone(r.value[0].timestamp)


class ReturnValueTest(unittest.TestCase):
    def test_none_filters(self):
        load_source(
            """
            from pipeline_sdk import transform
            @transform
            def f(record):
                return None
            """
        )
        self.assertEqual(run(b"{}"), Ok([]))

    def test_fan_out_and_routing(self):
        load_source(
            """
            from pipeline_sdk import transform, Record
            @transform
            def f(record):
                audit = record.copy().to("audit")
                audit.fields["audited"] = True
                extra = Record.from_fields({"n": 1}, key=b"x")
                return [record, audit, extra.to("side")]
            """
        )
        r = run(b'{"a":1}')
        self.assertEqual(ok_values(r), [b'{"a":1}', b'{"a":1,"audited":true}', b'{"n":1}'])
        self.assertEqual([o.topic for o in r.value], [None, "audit", "side"])
        self.assertEqual([o.key for o in r.value], [b"k", b"k", b"x"])

    def test_to_returns_the_record(self):
        load_source(
            """
            from pipeline_sdk import transform
            @transform
            def f(record):
                return record.to("alerts")
            """
        )
        self.assertEqual(run(b"{}").value[0].topic, "alerts")

    def test_generator_fans_out(self):
        load_source(
            """
            from pipeline_sdk import transform, Record
            @transform
            def f(record):
                for item in record.fields["items"]:
                    yield Record.from_fields(item)
            """
        )
        self.assertEqual(ok_values(run(b'{"items":[{"a":1},{"b":2}]}')), [b'{"a":1}', b'{"b":2}'])

    def test_same_record_twice_is_refused(self):
        load_source(
            """
            from pipeline_sdk import transform
            @transform
            def f(record):
                return [record.to("a"), record.to("b")]
            """
        )
        kind, msg = err(run(b"{}"))
        self.assertEqual(kind, "failed")
        self.assertIn("same Record object twice", msg)

    def test_wrong_type_names_the_type(self):
        load_file(os.path.join(REPO, "tests", "components", "python", "wrong_type.py"))
        kind, msg = err(run(b"{}"))
        self.assertEqual(kind, "failed")
        self.assertIn("returned int", msg)

    def test_dict_return_gets_a_hint(self):
        load_source(
            """
            from pipeline_sdk import transform
            @transform
            def f(record):
                return record.fields
            """
        )
        kind, msg = err(run(b"{}"))
        self.assertIn("returned pipeline_sdk.record.Fields", msg)
        self.assertIn("return the record", msg)

    def test_list_with_non_record(self):
        load_source(
            """
            from pipeline_sdk import transform
            @transform
            def f(record):
                return [record, "oops"]
            """
        )
        kind, msg = err(run(b"{}"))
        self.assertIn("item 1 is str", msg)


class ErrorTest(unittest.TestCase):
    def test_exception_becomes_failed_with_location(self):
        load_file(os.path.join(REPO, "tests", "components", "python", "raises.py"))
        kind, msg = err(run(b"{}"))
        self.assertEqual(kind, "failed")
        self.assertTrue(msg.startswith("ValueError: bad amount (at raises.py:"), msg)
        self.assertIn(", in raises)", msg)

    def test_exception_carries_its_traceback(self):
        load_source(
            """
            from pipeline_sdk import transform
            def ratio(fields):
                return fields["a"] / fields["b"]
            @transform
            def f(record):
                try:
                    record.fields["r"] = ratio(record.fields)
                except ZeroDivisionError as e:
                    raise RuntimeError("cannot compute r") from e
                return record
            """
        )
        kind, msg = err(run(b'{"a": 1, "b": 0}'))
        self.assertEqual(kind, "failed")
        lines = msg.split("\n")
        self.assertTrue(lines[0].startswith("RuntimeError: cannot compute r (at customer_"), msg)
        self.assertIn("ZeroDivisionError: division by zero", lines)
        self.assertIn("The above exception was the direct cause of the following exception:", lines)
        self.assertTrue(any(l.endswith(", in ratio") for l in lines), msg)
        self.assertEqual(lines[-1], "RuntimeError: cannot compute r", msg)
        self.assertFalse(any("_runtime.py" in l for l in lines), "SDK frames are left out: " + msg)

    def test_a_long_traceback_keeps_its_head_and_tail(self):
        load_source(
            """
            from pipeline_sdk import transform
            def down(n):
                if n == 0:
                    return 1 / 0
                return down(n - 1)
            @transform
            def f(record):
                return down(500)
            """
        )
        kind, msg = err(run(b"{}"))
        self.assertLessEqual(len(msg), _runtime.MAX_MESSAGE)
        self.assertTrue(msg.startswith("ZeroDivisionError: division by zero (at customer_"), msg)
        self.assertIn("characters cut]", msg)
        self.assertTrue(msg.endswith("\nZeroDivisionError: division by zero"), msg[-200:])

    def test_not_json_is_invalid_input(self):
        load_file(ENRICH)
        kind, msg = err(run(b"not json"))
        self.assertEqual(kind, "invalid-input")
        self.assertTrue(msg.startswith("record value is not valid JSON: "), msg)
        self.assertIn("enrich_event.py:7", msg)

    def test_empty_value_and_non_object(self):
        load_file(ENRICH)
        self.assertIn("empty", err(run(b""))[1])
        kind, msg = err(run(b"[1,2]"))
        self.assertEqual(kind, "invalid-input")
        self.assertIn("not an object (it is a JSON array)", msg)
        kind, msg = err(run(b'{"a": NaN}'))
        self.assertEqual(kind, "invalid-input")
        self.assertIn("NaN", msg)
        kind, msg = err(run(b'{"a": "\xff"}'))
        self.assertIn("not UTF-8", msg)

    def test_missing_field_names_the_field(self):
        load_file(ENRICH)
        kind, msg = err(run(b'{"session_start": 1}'))
        self.assertEqual(kind, "invalid-input")
        self.assertTrue(msg.startswith("missing field 'session_end'"), msg)
        self.assertIn("(at enrich_event.py:7, in enrich_event)", msg)

    def test_missing_field_is_a_key_error_for_customer_code(self):
        load_source(
            """
            from pipeline_sdk import transform
            @transform
            def f(record):
                try:
                    record.fields["nope"]
                except KeyError:
                    record.fields["had_nope"] = False
                return record
            """
        )
        self.assertEqual(ok_values(run(b"{}")), [b'{"had_nope":false}'])

    def test_plain_key_error_is_failed(self):
        load_source(
            """
            from pipeline_sdk import transform
            @transform
            def f(record):
                return {}["x"]
            """
        )
        kind, msg = err(run(b"{}"))
        self.assertEqual(kind, "failed")
        self.assertTrue(msg.startswith("KeyError: 'x' (at customer_"), msg)

    def test_customer_invalid_input(self):
        load_source(
            """
            from pipeline_sdk import transform, InvalidInput
            @transform
            def f(record):
                raise InvalidInput("amount must be positive")
            """
        )
        kind, msg = err(run(b"{}"))
        self.assertEqual(kind, "invalid-input")
        self.assertTrue(msg.startswith("amount must be positive (at "), msg)

    def test_unencodable_fields(self):
        load_source(
            """
            from pipeline_sdk import transform
            @transform
            def f(record):
                record.fields["x"] = float("nan")
                record.fields["y"] = object()
                return record
            """
        )
        kind, msg = err(run(b"{}"))
        self.assertEqual(kind, "failed")
        self.assertIn("cannot be encoded as JSON", msg)

    def test_system_exit_does_not_escape(self):
        load_source(
            """
            import sys
            from pipeline_sdk import transform
            @transform
            def f(record):
                sys.exit(3)
            """
        )
        self.assertEqual(err(run(b"{}")), ("failed", err(run(b"{}"))[1]))
        self.assertTrue(err(run(b"{}"))[1].startswith("SystemExit: 3"))

    def test_long_message_is_clipped(self):
        load_source(
            """
            from pipeline_sdk import transform
            @transform
            def f(record):
                raise RuntimeError("x" * 10000)
            """
        )
        self.assertLessEqual(len(err(run(b"{}"))[1]), _runtime.MAX_MESSAGE)


class TombstoneTest(unittest.TestCase):
    """WIT 0.2.0: a null value (tombstone) is `None`, distinct from `b""`."""

    def test_tombstone_passes_through_as_tombstone(self):
        load_source(
            """
            from pipeline_sdk import transform
            @transform
            def f(record):
                record.headers.add("null", b"1" if record.value is None else b"0")
                return record
            """
        )
        r = run(None)
        out = r.value[0]
        self.assertIsNone(out.value)
        self.assertEqual(out.key, b"k")
        self.assertEqual([(h.key, h.value) for h in out.headers][-1], ("null", b"1"))
        # An empty value stays an empty value, not a tombstone.
        r = run(b"")
        self.assertEqual(r.value[0].value, b"")
        self.assertEqual(r.value[0].headers[-1].value, b"0")

    def test_fields_of_a_tombstone_is_invalid_input_not_empty_dict(self):
        load_file(ENRICH)
        kind, msg = err(run(None))
        self.assertEqual(kind, "invalid-input")
        self.assertIn("null (a tombstone)", msg)
        self.assertIn("enrich_event.py:7", msg)

    def test_function_can_emit_tombstones(self):
        load_source(
            """
            from pipeline_sdk import transform, Record
            @transform
            def f(record):
                if record.fields.get("deleted"):
                    gone = record.copy()
                    gone.value = None
                    return [gone, Record.tombstone(key=b"other").to("audit")]
                return record
            """
        )
        outs = run(b'{"deleted": true}').value
        self.assertEqual([(o.key, o.value, o.topic) for o in outs],
                         [(b"k", None, None), (b"other", None, "audit")])
        self.assertEqual(ok_values(run(b'{"deleted": false}')), [b'{"deleted": false}'])

    def test_tombstone_can_become_a_value_again(self):
        load_source(
            """
            from pipeline_sdk import transform
            @transform
            def f(record):
                if record.is_tombstone:
                    record.fields = {"deleted": record.key.decode()}
                return record
            """
        )
        self.assertEqual(ok_values(run(None)), [b'{"deleted":"k"}'])

    def test_record_api(self):
        t = Record(None, key=b"k")
        self.assertTrue(t.is_tombstone)
        self.assertIsNone(t.value)
        self.assertIn("tombstone", repr(t))
        self.assertFalse(Record(b"").is_tombstone)
        c = t.copy()
        self.assertTrue(c.is_tombstone)
        with self.assertRaises(InvalidInput):
            t.fields
        r = Record(b"{}")
        r.value = None
        self.assertTrue(r.is_tombstone)
        self.assertTrue(Record.tombstone(key="k").is_tombstone)


class DefinitionTest(unittest.TestCase):
    def test_two_transforms(self):
        with self.assertRaises(TransformDefinitionError) as cm:
            load_file(os.path.join(REPO, "tests", "components", "python", "two_transforms.py"))
        self.assertIn("more than one @transform function: 'first'", str(cm.exception))
        self.assertIn("'second' (two_transforms.py:", str(cm.exception))

    def test_no_transform(self):
        with self.assertRaises(TransformDefinitionError) as cm:
            load_file(os.path.join(REPO, "tests", "components", "python", "no_transform.py"))
        self.assertIn("no_transform.py defines no @transform function", str(cm.exception))

    def test_wrong_arity(self):
        with self.assertRaises(TransformDefinitionError) as cm:
            load_source(
                """
                from pipeline_sdk import transform
                @transform
                def f():
                    pass
                """
            )
        self.assertIn("exactly one argument", str(cm.exception))

    def test_async_refused(self):
        with self.assertRaises(TransformDefinitionError):
            load_source(
                """
                from pipeline_sdk import transform
                @transform
                async def f(record):
                    return record
                """
            )

    def test_decorator_with_parentheses_returns_function(self):
        load_source(
            """
            import pipeline_sdk
            @pipeline_sdk.transform()
            def f(record):
                return None
            assert callable(f)
            """
        )
        self.assertEqual(run(b"{}"), Ok([]))


class BatchAndExportsTest(unittest.TestCase):
    def test_batch_one_result_per_input(self):
        load_file(ENRICH)
        results = _runtime.BatchTransformer().transform_batch(
            [inp(b'{"session_start":0,"session_end":3600}'), inp(b"x"), inp(b"{}")]
        )
        self.assertEqual(len(results), 3)
        self.assertIsInstance(results[0], Ok)
        self.assertEqual(err(results[1])[0], "invalid-input")
        self.assertEqual(err(results[2])[0], "invalid-input")

    def test_transformer_returns_ok_or_err(self):
        load_file(ENRICH)
        r = _runtime.Transformer().transform(inp(b"x"))
        self.assertIsInstance(r, Err)
        self.assertIsInstance(r.value, TransformError_InvalidInput)
        r = _runtime.Transformer().transform(inp(b'{"session_start":0,"session_end":60}'))
        self.assertIsInstance(r, Ok)
        self.assertEqual(
            r.value[0].value,
            b'{"session_start":0,"session_end":60,"session_duration_minutes":1.0,"engagement_tier":"standard"}',
        )


class RecordApiTest(unittest.TestCase):
    def test_headers(self):
        h = Headers([("a", b"1"), ("b", "two"), ("a", None)])
        self.assertEqual(h["a"], b"")
        self.assertEqual(h.get_all("a"), [b"1", b""])
        self.assertEqual(h.get("zz", b"d"), b"d")
        self.assertIn("b", h)
        self.assertEqual(h[1], ("b", b"two"))
        h["a"] = b"x"
        self.assertEqual(list(h), [("b", b"two"), ("a", b"x")])
        del h["b"]
        self.assertEqual(len(h), 1)
        self.assertEqual(Headers({"k": "v"}), [("k", b"v")])
        with self.assertRaises(TypeError):
            h.add("k", 5)

    def test_record_constructor(self):
        r = Record(b'{"a":1}', key="k", headers=[("h", b"v")], timestamp=5)
        self.assertEqual(r.fields, {"a": 1})
        self.assertEqual(r.key, b"k")
        with self.assertRaises(TypeError):
            r.timestamp = 1.5
        with self.assertRaises(MissingField):
            r.fields["b"]
        with self.assertRaises(InvalidInput):
            Record(b"nope").fields
        r.fields = {"z": [1]}
        self.assertEqual(r.value, b'{"z":[1]}')

    def test_log_goes_to_sink(self):
        lines = []
        log.set_sink(lambda level, msg: lines.append((level, msg)))
        try:
            log.info("n=%d", 3)
            log.warning("w")
            log.error("literal %s")
        finally:
            log.set_sink(None)
        self.assertEqual(lines, [("INFO", "n=3"), ("WARN", "w"), ("ERROR", "literal %s")])


class ExamplesTest(unittest.TestCase):
    """Each customer example's sample.jsonl gives its expected.jsonl."""

    def check(self, directory, module):
        base = os.path.join(REPO, "customer-examples", directory)
        load_file(os.path.join(base, module + ".py"))
        got = []
        with open(os.path.join(base, "sample.jsonl"), "rb") as f:
            for line in f.read().splitlines():
                if line.strip():
                    got.extend(ok_values(run(line)))
        with open(os.path.join(base, "expected.jsonl"), "rb") as f:
            want = [l for l in f.read().splitlines() if l.strip()]
        self.assertEqual(got, want)

    def test_enrich_event(self):
        self.check("enrich_event", "enrich_event")

    def test_pii_redaction(self):
        self.check("pii_redaction", "pii_redaction")

    def test_filter(self):
        self.check("filter", "filter")


if __name__ == "__main__":
    unittest.main()


class PackageTest(unittest.TestCase):
    """The wheel's metadata and bundled WIT agree with the SDK."""

    def test_version_targets_the_bundled_wit(self):
        import re

        import pipeline_sdk

        with open(os.path.join(SDK_ROOT, "pyproject.toml"), encoding="utf-8") as f:
            version = re.search(r'^version = "([^"]+)"', f.read(), re.M).group(1)
        with open(os.path.join(SDK_ROOT, "pipeline_sdk", "wit", "transform.wit"), encoding="utf-8") as f:
            wit = re.search(r"^package (pipeline:transform@[\d.]+);", f.read(), re.M).group(1)
        self.assertEqual(pipeline_sdk.__version__, version)
        self.assertEqual(pipeline_sdk.WIT_PACKAGE, wit)
        # The scheme: the SDK's major.minor is the WIT's.
        self.assertEqual(version.rsplit(".", 1)[0], wit.split("@")[1].rsplit(".", 1)[0])

    def test_componentize_py_pin_matches_the_dependency(self):
        from pipeline_sdk import _build

        with open(os.path.join(SDK_ROOT, "pyproject.toml"), encoding="utf-8") as f:
            self.assertIn('"componentize-py==%s"' % _build.COMPONENTIZE_PY_VERSION, f.read())
        with open(os.path.join(REPO, "scripts", "python-env.sh"), encoding="utf-8") as f:
            self.assertIn('COMPONENTIZE_PY_VERSION="%s"' % _build.COMPONENTIZE_PY_VERSION, f.read())

    def test_cli_check_names_the_file_and_line(self):
        import contextlib
        import io

        from pipeline_sdk import cli

        with tempfile.TemporaryDirectory() as d:
            src = os.path.join(d, "two.py")
            with open(src, "w") as f:
                f.write("from pipeline_sdk import transform\n\n@transform\ndef a(r):\n    return r\n\n@transform\ndef b(r):\n    return r\n")
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                rc = cli.main(["check", src])
            self.assertEqual(rc, 1)
            self.assertIn("%s:7: more than one @transform" % src, err.getvalue())
