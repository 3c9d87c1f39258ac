#!/usr/bin/env python3
"""Kept for old command lines: `pipeline-sdk run CUSTOMER.py [INPUT.jsonl]`."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pipeline_sdk._local import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
