"""Emit stage: view model → Python source, through the Jinja2 templates in ``templates/``."""

from __future__ import annotations

import functools

import jinja2

from .lower import ModuleView


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("machc", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def emit(view: ModuleView) -> str:
    """The source text of the generated module."""
    return _environment().get_template("module.py.j2").render(view=view)
