"""The .mach grammar, shipped as package data (``mach.lark``)."""

from pathlib import Path

GRAMMAR_PATH = Path(__file__).with_name("mach.lark")
