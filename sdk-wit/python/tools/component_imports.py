#!/usr/bin/env python3
"""Kept for old command lines (scripts/build-js.sh): `pipeline-sdk imports`."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pipeline_sdk._imports import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
