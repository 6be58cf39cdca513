#!/usr/bin/env python3
"""Thin wrapper: the tool lives in the package as ``fp8gemm.dump`` (``fp8gemm-dump``)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fp8gemm.dump import console_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(console_main())
