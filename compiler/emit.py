"""Emit stage: view model → Python source, through the Jinja2 templates in ``templates/``."""

from __future__ import annotations

import functools

import jinja2

from .lower import ModuleView


@functools.cache
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("machc", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    environment.filters["indented"] = indented
    return environment


def indented(body: tuple[str, ...]) -> str:
    """The lines of a method's body, each indented into the method and ended by a newline
    (an empty line stays empty).

    NOTE: scale. One filter call per method, not a template loop over its lines: the
    loop took half a second for a 100,000-edge chain (docs/benchmarks.md).
    """
    return "".join([f"        {line}\n" if line else "\n" for line in body])


def emit(view: ModuleView) -> str:
    """The source text of the generated module."""
    return _environment().get_template("module.py.j2").render(view=view)
