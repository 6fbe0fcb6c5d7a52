"""Shared test fixtures: the real corpus beside the checkout, and the GPU marker's skip."""
from pathlib import Path

import pytest

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


@pytest.fixture(scope="session")
def shakespeare_path():
    if not SHAKESPEARE.is_file():
        pytest.skip(f"corpus not found at {SHAKESPEARE} (CI keeps shared/ beside the checkout)")
    return SHAKESPEARE


def _gpu_reason():
    from rnnfast.backend import gpu_unavailable_reason

    return gpu_unavailable_reason()


def pytest_collection_modifyitems(config, items):
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    reason = _gpu_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"needs a GPU: {reason}")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
