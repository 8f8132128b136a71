"""Start-up: the parser comes from the cache, and a check loads nothing it does not need.

No test here times anything (timings are in docs/benchmarks.md); they check what is
built and what is imported, which decides the start-up time and does not flake.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from lark import Lark, UnexpectedInput
from machc import parser_cache
from machc.grammar import GRAMMAR_PATH

ROOT = Path(__file__).resolve().parents[2]
DENSE = ROOT / "examples" / "dense.mach"
OPTIONS = {"parser": "lalr", "propagate_positions": True, "maybe_placeholders": True}
BROKEN = "machine M {\n    input x[4]\n    output y[3] = \n}\n"


def cached_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def no_building(monkeypatch: pytest.MonkeyPatch) -> None:
    def build(*args, **kwargs):
        raise AssertionError("the parser was built, not loaded from the cache")

    monkeypatch.setattr(Lark, "__init__", build)


def terminals(parser: Lark) -> list[tuple]:
    return [
        (t.name, type(t.pattern), t.pattern.value, frozenset(t.pattern.flags))
        for t in parser.terminals
    ]


def syntax_error(parser: Lark) -> tuple[str, object]:
    with pytest.raises(UnexpectedInput) as info:
        parser.parse(BROKEN)
    return str(info.value), sorted(info.value.accepts)


def test_the_parser_is_built_once_then_loaded(tmp_path, monkeypatch) -> None:
    built = parser_cache.load_parser(GRAMMAR_PATH, tmp_path, **OPTIONS)
    (name,) = cached_files(tmp_path)  # one file, no temporary file left behind
    assert name.startswith("mach-") and name.endswith(".lark.pickle")
    no_building(monkeypatch)
    loaded = parser_cache.load_parser(GRAMMAR_PATH, tmp_path, **OPTIONS)
    text = DENSE.read_text()
    assert loaded.parse(text) == built.parse(text)
    assert syntax_error(loaded) == syntax_error(built)
    assert [t.type for t in loaded.lex(text, dont_ignore=True)] == [
        t.type for t in built.lex(text, dont_ignore=True)
    ]
    assert terminals(loaded) == terminals(built)


def test_another_grammar_or_other_options_get_a_file_of_their_own(tmp_path) -> None:
    changed = tmp_path / "grammar" / "mach.lark"
    changed.parent.mkdir()
    changed.write_text(GRAMMAR_PATH.read_text() + "\n// changed\n")
    cache = tmp_path / "cache"
    parser_cache.load_parser(GRAMMAR_PATH, cache, **OPTIONS)
    parser_cache.load_parser(changed, cache, **OPTIONS)
    parser_cache.load_parser(GRAMMAR_PATH, cache, **{**OPTIONS, "maybe_placeholders": False})
    assert len(cached_files(cache)) == 3


def test_a_damaged_cache_file_is_built_again(tmp_path) -> None:
    parser_cache.load_parser(GRAMMAR_PATH, tmp_path, **OPTIONS)
    (name,) = cached_files(tmp_path)
    (tmp_path / name).write_bytes(b"not a parser")
    parser = parser_cache.load_parser(GRAMMAR_PATH, tmp_path, **OPTIONS)
    assert parser.parse(DENSE.read_text())
    assert (tmp_path / name).read_bytes() != b"not a parser"  # and written again


def test_a_cache_that_cannot_be_written_is_passed_over(tmp_path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache directory would go")
    parser = parser_cache.load_parser(GRAMMAR_PATH, blocked / "machc", **OPTIONS)
    assert parser.parse(DENSE.read_text())
    assert cached_files(tmp_path) == ["file"]


def test_the_cache_directory_follows_xdg_cache_home(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert parser_cache.cache_dir() == tmp_path / "machc"


def run(code: str, cache: Path) -> set[str]:
    """Run ``code`` in a fresh interpreter; the modules of interest it left loaded."""
    watched = ("torch", "jinja2", "networkx", "lark", "matplotlib", "numpy")
    watched += ("machc.rewrite", "machc.cells", "machc.regroup", "machc.loops", "machc.matrix")
    code += f"\nimport sys\nprint(*sorted(m for m in {watched!r} if m in sys.modules))\n"
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_the_command_line_module_imports_no_stage(tmp_path) -> None:
    # `machc --help`, `--version` and argument errors need none of the compiler's stages
    assert run("import machc.cli", tmp_path) == set()


def test_check_loads_the_cached_parser_and_no_code_generation(tmp_path) -> None:
    check = f"import machc.cli\nassert machc.cli.main(['check', '-q', {str(DENSE)!r}]) == 0"
    # (the rewrites for speed run only when code is generated: --no-NAME needs their names)
    unneeded = {"torch", "jinja2", "matplotlib", "numpy", "machc.cells", "machc.regroup"}
    unneeded |= {"machc.loops", "machc.matrix"}  # (the drawing's, for graph --help)
    assert not run(check, tmp_path) & unneeded
    assert len(cached_files(tmp_path / "machc")) == 1
    # the second run loads that file: building a parser would fail it
    no_build = "import lark\nlark.Lark.__init__ = None\n"
    assert not run(no_build + check, tmp_path) & unneeded


def test_the_arguments_of_the_command_given_are_all_that_is_built() -> None:
    from machc import arguments

    assert set(arguments.parser(["check", "f.mach"]).subcommands) == {"check"}
    for argv in (["--help"], ["chek"], [], ["--version"]):
        assert set(arguments.parser(argv).subcommands) == set(arguments.COMMANDS)


def test_networkx_is_loaded_only_to_spell_out_a_cycle(tmp_path) -> None:
    # machines are checked with plain lists and compiler/digraph.py (about 70 ms of
    # start-up saved); networkx finds the path an error message about a cycle shows
    check = "import machc.cli\nassert machc.cli.main(['check', '-q', {!r}]) == {}"
    for example in ("dense.mach", "deq.mach", "lstm.mach", "gpt.mach"):  # solved, over time
        assert "networkx" not in run(check.format(str(ROOT / "examples" / example), 0), tmp_path)
    cycle = tmp_path / "cycle.mach"
    cycle.write_text(
        "machine C over t {\n input x : 4\n space h : 4\n output y : 4\n"
        " f : x × y -> h = linear\n g : h -> y = linear\n}\n"
    )
    assert "networkx" in run(check.format(str(cycle), 1), tmp_path)


def test_only_the_program_freezes_what_it_imported(tmp_path) -> None:
    # the machc program (main() reading sys.argv) puts its imports out of the garbage
    # collector's reach; a call of main() from Python leaves the collector alone
    args = ["check", "-q", str(DENSE)]
    report = "\nimport gc\nprint('frozen' if gc.get_freeze_count() else 'free')"
    call = f"import machc.cli\nmachc.cli.main({args!r})"
    program = f"import sys, machc.cli\nsys.argv = {['machc', *args]!r}\nmachc.cli.main()"
    assert "free" in run(call + report, tmp_path)
    assert "frozen" in run(program + report, tmp_path)
