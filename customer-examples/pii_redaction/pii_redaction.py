"""Masks e-mail addresses and payment card numbers in every string field.

E-mail addresses become "[email redacted]". Card numbers (13 to 19 digits,
optionally grouped with spaces or dashes, and passing the Luhn check, so that
order numbers and timestamps are left alone) keep their last 4 digits:
"4111 1111 1111 1111" becomes "**** **** **** 1111". Strings are searched
at any depth (nested objects and lists); keys and numbers are not changed.
A record with nothing to mask is passed through byte for byte. A tombstone
(null value; seen only with the pipeline's `tombstones = "function"`) holds no
PII and is passed on unchanged, so the redacted copy is deleted too.
"""

import re

from pipeline_sdk import Record, transform

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def mask_card(match: "re.Match[str]") -> str:
    text = match.group(0)
    digits = "".join(c for c in text if c.isdigit())
    if not luhn_valid(digits):
        return text
    to_mask = len(digits) - 4
    out = []
    for c in text:
        if c.isdigit():
            out.append("*" if to_mask > 0 else c)
            to_mask -= 1
        else:
            out.append(c)
    return "".join(out)


def redact(value):
    """Returns `value` with PII masked (the same object if nothing changed)."""
    if isinstance(value, str):
        return CARD.sub(mask_card, EMAIL.sub("[email redacted]", value))
    if isinstance(value, dict):
        for k, v in value.items():
            new = redact(v)
            if new is not v and new != v:
                value[k] = new
        return value
    if isinstance(value, list):
        for i, v in enumerate(value):
            new = redact(v)
            if new is not v and new != v:
                value[i] = new
        return value
    return value


@transform
def pii_redaction(record: Record) -> Record:
    if record.value is None:
        return record
    fields = record.fields
    for key in list(fields):
        new = redact(fields[key])
        if new is not fields[key] and new != fields[key]:
            fields[key] = new
    return record
