import functools
import os

import pytest


@functools.lru_cache(None)
def hopper_available() -> bool:
    from fp8gemm import launcher
    if launcher.device_count() == 0:
        return False
    return launcher.compute_capability(0)[0] == 9


def pytest_collection_modifyitems(config, items):
    if hopper_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA Hopper GPU (sm_90)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Tests never read or write the user's kernel cache."""
    if "FP8GEMM_CACHE_DIR" not in os.environ:
        os.environ["FP8GEMM_CACHE_DIR"] = str(tmp_path_factory.mktemp("fp8gemm-cache"))
    yield
