"""Machine parameters: values bound to declarations, and values given for no parameter.

Values come from ``--set`` (text) or ``params=`` (Python values), keyed ``name``
(every machine with that parameter) or ``Machine.name``; a parameter with no
value takes its default, an expression of the parameters before it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from . import ir
from . import syntax as s
from .diagnostics import Code, Reporter, Span
from .expressions import (
    WORDS,
    Problem,
    as_param,
    did_you_mean,
    evaluate,
    names_in,
    parse_param_text,
)

PARAM_TYPES: dict[str, type] = {"int": int, "float": float, "bool": bool}


_PARAM_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*\.)?[A-Za-z_][A-Za-z0-9_]*")


def check_param_keys(source: s.SourceFile, params: Mapping[str, object], reporter: Reporter):
    """Every value given must bind some machine's parameter (reported at the machine names)."""
    top = Span(file=source.path, line=1, column=1, end_line=1, end_column=1)
    for key in params:
        machine_name, _, name = key.rpartition(".")
        if not _PARAM_KEY.fullmatch(key):
            reporter.error(
                Code.PARAMETER,
                f"a value is set for {key!r}, which is not NAME or MACHINE.NAME",
                source.machines[0].name_span if source.machines else top,
            )
            continue
        decls = [m for m in source.machines if not machine_name or m.name == machine_name]
        if machine_name and not decls:
            known = ", ".join(m.name for m in source.machines) or "none"
            reporter.error(
                Code.PARAMETER,
                f"a value is set for {key!r}, but this file has no machine {machine_name!r}",
                source.machines[0].name_span if source.machines else top,
                hint=f"the machines are: {known}",
            )
        elif decls and not any(p.name == name for m in decls for p in m.params):
            where = f"machine {machine_name!r} has no" if machine_name else "no machine here has a"
            known = sorted({p.name for m in decls for p in m.params})
            reporter.error(
                Code.PARAMETER,
                f"a value is set for {key!r}, but {where} parameter {name!r}",
                decls[0].name_span,
                hint=did_you_mean(name, known)
                or ("parameters: " + ", ".join(known) if known else "there are no parameters"),
            )


def missing_params(decl: s.MachineDecl, given: Mapping[str, object]) -> list[s.ParamDecl]:
    """The parameters that have neither a default nor a value in ``given``."""
    return [
        p
        for p in decl.params
        if p.default is None and p.name not in given and f"{decl.name}.{p.name}" not in given
    ]


def bind_params(
    decl: s.MachineDecl, given: Mapping[str, object], reporter: Reporter, missing_ok=False
) -> dict[str, ir.Value] | None:
    """The machine's parameters bound to values (given, or defaults); None after errors.

    ``missing_ok``: a parameter without default and value is no error (None is returned).
    """
    env: dict[str, ir.Value] = {}
    declared: set[str] = set()
    failed: set[str] = set()
    for param in decl.params:
        if param.name == decl.time:
            reporter.error(
                Code.DUPLICATE_NAME,
                f"parameter {param.name!r} has the name of the machine's time index",
                param.span,
            )
            failed.add(param.name)
            continue
        if param.name in WORDS:
            what = "a literal" if param.name in ("true", "false") else "a keyword"
            reporter.error(
                Code.PARAMETER, f"{param.name!r} is {what}, not a parameter name", param.span
            )
            failed.add(param.name)
            continue
        if param.name in declared:
            reporter.error(
                Code.DUPLICATE_NAME, f"parameter {param.name!r} declared twice", param.span
            )
            failed.add(param.name)
            continue
        declared.add(param.name)
        type_ = PARAM_TYPES.get(param.type)
        if type_ is None:
            reporter.error(
                Code.PARAMETER,
                f"unknown parameter type {param.type!r} (use int, float or bool)",
                param.type_span,
            )
            failed.add(param.name)
            continue
        if missing_ok and param in missing_params(decl, given):
            failed.add(param.name)
            continue
        value = _param_value(decl, param, type_, given, env, failed, reporter)
        if value is None:
            failed.add(param.name)
        else:
            env[param.name] = value
    return None if failed else env


def _param_value(
    decl: s.MachineDecl, param, type_, given, env, failed: set[str], reporter: Reporter
) -> ir.Value | None:
    qualified = f"{decl.name}.{param.name}"
    key = qualified if qualified in given else param.name if param.name in given else None
    if key is not None:
        raw = given[key]
        value = parse_param_text(raw, type_) if isinstance(raw, str) else raw
        converted = as_param(value, type_)
        if converted is None:
            shown = repr(raw) if len(repr(raw)) <= 40 else repr(raw)[:37] + "..."
            reporter.error(
                Code.PARAMETER,
                f"parameter {param.name!r} of {decl.name} is {param.type}, "
                f"but {key}={shown} was given",
                param.span,
                hint="an int is at most 18 ASCII digits, a float a decimal number, a bool "
                "true or false"
                if isinstance(raw, str)
                else None,
            )
        return converted
    if param.default is None:
        reporter.error(
            Code.PARAMETER,
            f"parameter {param.name!r} of {decl.name} has no default and no value",
            param.span,
            hint=f"give one: machc compile --set {param.name}=VALUE, or params={{...}}",
        )
        return None
    if names_in(param.default) & failed:
        return None  # a consequence of the error reported for that parameter
    try:
        value = evaluate(param.default, env)
    except Problem as exc:
        if not exc.silent:
            reporter.error(exc.code, exc.message, exc.span, hint=exc.hint)
        return None
    converted = as_param(value, type_)
    if converted is None:
        reporter.error(
            Code.PARAMETER,
            f"default of parameter {param.name!r} must be {param.type}, "
            f"got {ir.format_value(value)}",
            param.default.span,
        )
    return converted


def warn_unchecked(decl: s.MachineDecl, params: Mapping[str, object], reporter: Reporter):
    """A machine that needs values from a use, and has none: its other parameter errors,
    and a warning that it is not checked."""
    bind_params(decl, params, reporter, missing_ok=True)
    missing = missing_params(decl, params)
    names = ", ".join(repr(p.name) for p in missing)
    first = missing[0].name
    reporter.warning(
        Code.UNCHECKED_MACHINE,
        f"machine {decl.name} is never used, and cannot be checked alone: "
        + (f"parameter {names} has" if len(missing) == 1 else f"parameters {names} have")
        + " no default",
        decl.name_span,
        hint=f"use it as an edge ({decl.name}({first}=...)), give {first} a default, or "
        f"check it with --set {decl.name}.{first}=VALUE",
    )
