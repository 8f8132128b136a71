"""Shared test configuration: the ``--update-golden`` flag and paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from machc import record

# Every IR record the compiler makes is validated too, in this process and in the machc
# processes the tests start, and must come out the same (compiler/record.py).
os.environ["MACHC_VERIFY_IR"] = "1"
record.VERIFY = True

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
GOLDEN = ROOT / "tests" / "golden"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite the golden files under tests/golden from the current compiler",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return request.config.getoption("--update-golden")
