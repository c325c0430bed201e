"""Shared fixtures: seeded generators; `gpu` tests skipped without CUDA."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture(scope="module")
def torch_one_thread():
    """Torch on one CPU thread for a test module (the machine is shared; restored after)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing or broken
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _hypothesis_profiles() -> None:
    """CI runs a fixed (derandomized) set of examples; locally each run explores new ones."""
    import os

    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, print_blob=True)
    if os.environ.get("CI"):
        settings.load_profile("ci")


_hypothesis_profiles()


def pytest_configure(config):
    """Tests use small networks: one torch thread avoids oversubscribing shared CPUs."""
    import torch

    torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu",
                     help="torch device for the prior contract tests (cpu or cuda)")


@pytest.fixture
def device(request) -> str:
    return request.config.getoption("--device")
