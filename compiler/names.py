"""Python identifiers for names from .mach sources.

Every name that generated code uses as an identifier comes from a
:class:`Namespace`, which hands out legal, unique, non-keyword identifiers
and never one of its reserved names. Source names are already restricted by
the grammar to ``[A-Za-z_][A-Za-z0-9_]*`` plus array indices; the namespace
is what keeps them from clashing with each other, with Python, or with the
names generated code relies on.
"""

from __future__ import annotations

import builtins
import itertools
import keyword
import re

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# Attributes of torch.nn.Module (torch 2.x) and of the generated classes. An edge
# named like one of these would shadow it, so its attribute gets another name.
# tests/e2e checks this list against dir(nn.Module) of the installed torch.
MODULE_ATTRIBUTES = frozenset(
    """
    T_destination call_super_init dump_patches training forward f resolvent adjoint
    example_inputs reset_parameters shapes
    SPACES INPUTS OUTPUTS DELAYS WINDOWS IDS STATEFUL_EDGES CAUSAL
    add_module apply bfloat16 buffers children compile cpu cuda double eval extra_repr
    float get_buffer get_extra_state get_parameter get_submodule half ipu load_state_dict
    modules mtia named_buffers named_children named_modules named_parameters parameters
    register_backward_hook register_buffer register_forward_hook register_forward_pre_hook
    register_full_backward_hook register_full_backward_pre_hook
    register_load_state_dict_post_hook register_load_state_dict_pre_hook register_module
    register_parameter register_state_dict_post_hook register_state_dict_pre_hook
    requires_grad_ set_extra_state set_submodule share_memory state_dict to to_empty train
    type xpu zero_grad
    """.split()
)


# Names the generated module defines or imports at module level.
MODULE_NAMES = frozenset(
    {"torch", "nn", "F", "Tensor", "NamedTuple", "annotations", "_complete", "runtime"}
    | {"_leaves", "_pull", "_like"}
)
# Locals of generated methods, besides the spaces: a space never takes one, nor a builtin
# the code calls (range, list), nor a name linters flag as ambiguous (E741: l, O, I).
METHOD_LOCALS = frozenset({"self", "state", "x0", "l", "O", "I"}) | frozenset(dir(builtins))
TIME_LOCALS = frozenset({"batch", "steps", "return_state", "lengths", "offset"})
ADJOINT_LOCALS = frozenset({"x", "bar", "cotangent"})  # adjoint(self, x, cotangent): bar
# A class may not take these: it would hide what generated code uses (super, sorted, KeyError,
# and self, which __init__ uses where it builds the layers and sub-machines).
CLASS_NAME_CLASHES = MODULE_NAMES | frozenset(dir(builtins)) | {"self"}


def class_name_problem(name: str) -> str | None:
    """Why a machine's name cannot name its generated class (None: it can)."""
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        return "is a Python keyword; the generated class needs another"
    if name.startswith("__"):
        return (
            "starts with two underscores, which Python mangles inside classes; the "
            "generated class needs another"
        )
    if name in CLASS_NAME_CLASHES:
        return "would hide a name the generated module uses"
    return None


class Namespace:
    """Hands out unique identifiers; the same key always gets the same identifier."""

    def __init__(self, reserved: frozenset[str] | set[str] = frozenset()):
        self._reserved = set(reserved)
        self._taken: set[str] = set()
        self._by_key: dict[str, str] = {}

    def taken(self, identifier: str) -> bool:
        """Whether ``identifier`` has been handed out (or is reserved)."""
        return identifier in self._taken or identifier in self._reserved

    def has(self, key: str) -> bool:
        """Whether ``key`` already has its identifier."""
        return key in self._by_key

    def reserve(self, *names: str) -> None:
        self._reserved.update(names)

    def name(self, key: str, hint: str | None = None) -> str:
        """The identifier for ``key`` (a source name such as ``h[2]``), made from ``hint`` or it."""
        if key in self._by_key:
            return self._by_key[key]
        base = sanitize(hint if hint is not None else key)
        if base not in self._taken and base not in self._reserved:  # the usual case, at once
            self._taken.add(base)
            self._by_key[key] = base
            return base
        candidates = itertools.chain(
            [base, base + "_"], (f"{base}_{n}" for n in itertools.count(2))
        )
        candidate = next(c for c in candidates if c not in self._taken and c not in self._reserved)
        self._taken.add(candidate)
        self._by_key[key] = candidate
        return candidate


def attribute_hint(name: str) -> str:
    """What an edge's (or a loop statement's) layer attribute is named after: its name, or
    ``edge_...`` for a name that starts with ``_`` (nn.Module keeps those to itself)."""
    return name if not name.startswith("_") else "edge" + name


def sanitize(name: str) -> str:
    """A legal, non-keyword identifier that reads like ``name``: ``h[2]`` → ``h_2``."""
    text = name.replace("[", "_").replace("]", "").replace("-", "m")
    if text.isascii() and text.isidentifier() and not keyword.iskeyword(text):
        if not keyword.issoftkeyword(text):
            return text  # the usual case (``h_2``), without a regular expression
    text = re.sub(r"[^A-Za-z0-9_]", "_", text) or "_"
    if text[0].isdigit():
        text = "_" + text
    if keyword.iskeyword(text) or keyword.issoftkeyword(text):
        text += "_"
    assert _IDENTIFIER.match(text), text
    return text
