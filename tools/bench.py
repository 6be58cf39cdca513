#!/usr/bin/env python3
"""Thin wrapper: the benchmark lives in the package as ``fp8gemm.bench`` (``fp8gemm-bench``)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fp8gemm.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
