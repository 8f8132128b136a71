"""The base of every IR node and diagnostic: a frozen pydantic model the compiler builds
without validating.

NOTE: start-up time. pydantic builds a model's validator the first time one of its
instances is validated. For the IR's models that was about a sixth of ``machc check``
on a small file: the schemas, and pydantic's search of every installed package for
plugins (docs/benchmarks.md, "Start-up time"). The compiler makes its records from
values it has already checked, so a :class:`Record` is made as ``model_construct``
makes one (the fields given, the defaults for the rest, nothing converted), except that
a missing or unknown field is an error. The models stay the IR's contract: ``machc ir
--schema`` prints their JSON schema and ``machc ir`` output loads with
``CheckedProgram.model_validate_json``, which does validate.

With ``MACHC_VERIFY_IR=1`` in the environment (the tests and the fuzzer set it) every
record is also validated as it is made, and what pydantic makes of the same fields must
be the same, type for type: a record the compiler makes is then one validation would
have made, and a list where a tuple belongs, or a string where an enum belongs, is
caught where it is made.
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict

VERIFY = os.environ.get("MACHC_VERIFY_IR", "") not in ("", "0")


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: object) -> None:
        # Validation (model_validate, model_validate_json) makes a record as pydantic
        # does, not through __init__ below; the validator is built after this, on first use.
        cls.__pydantic_custom_init__ = False

    def __init__(self, /, **data: object) -> None:
        cls = type(self)
        plan = _PLANS.get(cls) or _plan(cls)
        values = {}
        given = 0  # fields given in data
        for name, required, factory, default in plan:
            if name in data:
                values[name] = data[name]
                given += 1
            elif required:
                raise TypeError(f"{cls.__name__}: no value for field {name!r}")
            else:
                values[name] = default if factory is None else factory()
        if given < len(data):
            unknown = sorted(set(data) - set(values))
            raise TypeError(f"{cls.__name__}: no field {', '.join(map(repr, unknown))}")
        object.__setattr__(self, "__dict__", values)
        object.__setattr__(self, "__pydantic_fields_set__", set(data))
        object.__setattr__(self, "__pydantic_extra__", None)
        object.__setattr__(self, "__pydantic_private__", None)
        if VERIFY:
            verify(self, data)


# per class: (name, required, default factory, default) of each field, in order
_PLANS: dict[type, tuple[tuple[str, bool, object, object], ...]] = {}


def _plan(cls: type[Record]) -> tuple[tuple[str, bool, object, object], ...]:
    fields = cls.__pydantic_fields__.items()
    plan = tuple((n, f.is_required(), f.default_factory, f.default) for n, f in fields)
    _PLANS[cls] = plan
    return plan


def verify(record: Record, data: dict[str, object]) -> None:
    """Raise TypeError unless validating ``data`` gives ``record``, type for type."""
    validated = type(record).model_validate(data)
    for name in type(record).__pydantic_fields__:
        made, expected = getattr(record, name), getattr(validated, name)
        if not _same(made, expected):
            raise TypeError(
                f"{type(record).__name__}.{name} is made as {made!r}, but validation makes "
                f"{expected!r} of it"
            )


def _same(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return a == b or (a != a and b != b)  # NaN is NaN
