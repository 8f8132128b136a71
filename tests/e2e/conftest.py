"""Configuration of the torch tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tensors here are tiny: intra-op threads only add overhead (a lot on a busy CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def benchmark_script():
    """Loads ``benchmarks/NAME.py`` as a module (benchmarks/ is not a package)."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(
            f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module

    return load
