#!/usr/bin/env python3
"""Thin wrapper: the tool lives in the package as ``fp8gemm.fuzz`` (``python -m fp8gemm.fuzz``)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fp8gemm.fuzz import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
