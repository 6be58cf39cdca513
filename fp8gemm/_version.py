"""The package's version. pyproject.toml is the one place it is written: an installed package
reads it from its distribution's metadata; a checkout run without installing (PYTHONPATH=.)
reads it from the pyproject.toml beside the package."""
from __future__ import annotations

import re
from pathlib import Path

UNKNOWN = "0+unknown"


def package_version() -> str:
    from importlib import metadata
    try:
        return metadata.version("fp8gemm")
    except metadata.PackageNotFoundError:
        return version_in_pyproject(Path(__file__).resolve().parents[1] / "pyproject.toml") or UNKNOWN


def version_in_pyproject(path: Path) -> str | None:
    """``version`` of the ``[project]`` table when that project is fp8gemm, else None. A regular
    expression, not tomllib: Python 3.10 has no TOML reader and this file's form is ours."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    table = re.search(r"^\[project\][ \t]*\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
    if table is None or not re.search(r'^name\s*=\s*"fp8gemm"', table.group(1), re.M):
        return None
    version = re.search(r'^version\s*=\s*"([^"]+)"', table.group(1), re.M)
    return version.group(1) if version else None
