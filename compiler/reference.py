"""The op reference of docs/language.md, written from the op table itself.

Each op is shown with its arguments (kinds, defaults, checks), its shape rule,
and an example: a one-edge machine compiled by this compiler, whose generated
layer and call are quoted. ``tests/unit/test_docs.py`` checks that the page
holds exactly this text (``--update-golden`` rewrites it), so the reference
cannot drift from the compiler.
"""

from __future__ import annotations

import re

from .ir import format_value
from .ops import OPS, REQUIRED, OpSpec

BEGIN = "<!-- op reference: generated from compiler/ops.py, do not edit by hand -->"
END = "<!-- end of op reference -->"

# (group title, ops) in the order the reference shows them.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Maps with learned weights", ("linear", "conv", "conv_transpose")),
    ("Combining and passing through", ("identity", "add", "mul", "scale")),
    (
        "Activations",
        (
            "relu",
            "relu6",
            "gelu",
            "silu",
            "mish",
            "hardswish",
            "tanh",
            "sigmoid",
            "softplus",
            "elu",
            "leaky_relu",
            "softmax",
            "log_softmax",
        ),
    ),
    ("Normalisation", ("batchnorm", "groupnorm", "instancenorm", "layernorm", "rmsnorm")),
    (
        "Pooling and resampling",
        (
            "maxpool",
            "avgpool",
            "adaptive_avg_pool",
            "adaptive_max_pool",
            "global_avg_pool",
            "global_max_pool",
            "upsample",
        ),
    ),
    ("Padding, cropping and reordering axes", ("pad", "crop", "permute", "transpose")),
    ("Reshaping", ("flatten", "reshape")),
    ("Regularisation", ("dropout", "channel_dropout")),
    ("Sequence models", ("embedding", "attention")),
    ("Your own modules", ("module",)),
)

# An example use of each op: (input shape, pipeline, output shape) in .mach syntax; None for
# the ops that read ids or windows, whose examples are machines over time (SEQUENCES).
EXAMPLES: dict[str, tuple[str, str, str] | None] = {
    "linear": ("[8, 16, 16]", "linear(bias=false)", "[4, 16, 16]"),
    "conv": ("[3, 32, 32]", "conv(3, stride=2, padding=1)", "[16, 16, 16]"),
    "conv_transpose": ("[16, 8, 8]", "conv_transpose(4, stride=2, padding=1)", "[8, 16, 16]"),
    "identity": ("8", "identity", "8"),
    "add": ("[8, 4, 4] × 8", "add", "[8, 4, 4]"),
    "mul": ("[8, 4, 4] × [8, 4, 4]", "mul", "[8, 4, 4]"),
    "scale": ("8", "scale(-1)", "8"),
    "elu": ("8", "elu(2)", "8"),
    "leaky_relu": ("8", "leaky_relu(0.2)", "8"),
    "batchnorm": ("[16, 8, 8]", "batchnorm", "[16, 8, 8]"),
    "groupnorm": ("[16, 8, 8]", "groupnorm(4)", "[16, 8, 8]"),
    "instancenorm": ("[16, 8, 8]", "instancenorm(affine=true)", "[16, 8, 8]"),
    "layernorm": ("[16, 8]", "layernorm", "[16, 8]"),
    "rmsnorm": ("[16, 8]", "rmsnorm", "[16, 8]"),
    "gelu": ("8", 'gelu(approximate="tanh")', "8"),
    "maxpool": ("[16, 32, 32]", "maxpool(2)", "[16, 16, 16]"),
    "avgpool": ("[16, 32]", "avgpool(3, stride=2, padding=1)", "[16, 16]"),
    "adaptive_avg_pool": ("[16, 13, 9]", "adaptive_avg_pool([4, 3])", "[16, 4, 3]"),
    "adaptive_max_pool": ("[16, 50]", "adaptive_max_pool(5)", "[16, 5]"),
    "global_avg_pool": ("[16, 8, 8]", "global_avg_pool", "16"),
    "global_max_pool": ("[16, 4, 8, 8]", "global_max_pool", "16"),
    "upsample": ("[16, 8, 8]", 'upsample(2, mode="bilinear")', "[16, 16, 16]"),
    "pad": ("[16, 30, 30]", "pad([1, 2])", "[16, 32, 34]"),
    "crop": ("[16, 36]", "crop(2)", "[16, 32]"),
    "permute": ("[16, 8, 4, 2]", "permute([3, 1, 2])", "[16, 2, 8, 4]"),
    "transpose": ("[16, 8, 4]", "transpose(1, 2)", "[16, 4, 8]"),
    "flatten": ("[16, 4, 4]", "flatten", "256"),
    "reshape": ("256", "reshape([16, 4, 4])", "[16, 4, 4]"),
    "dropout": ("8", "dropout(0.1)", "8"),
    "channel_dropout": ("[16, 8, 8]", "channel_dropout(0.1)", "[16, 8, 8]"),
    "module": ("[16, 8, 8]", 'module("mylib.blocks.SqueezeExcite", 16, ratio=4)', "[16, 8, 8]"),
    "embedding": None,
    "attention": None,
}
_DEFAULT_EXAMPLE = ("[8, 4, 4]", None, "[8, 4, 4]")
SEQUENCES = "used in machines over time: see [sequences](sequences.md)"


def _arguments(spec: OpSpec) -> str:
    if not spec.args:
        return "none"
    parts = []
    for arg in spec.args:
        if arg.default is REQUIRED:
            default = "required"
        elif arg.default is None:
            default = "optional"
        else:
            default = f"`{format_value(arg.default)}`"
        parts.append(f"`{arg.name}` ({arg.describe_kinds()}, {default}): {arg.doc}")
    if spec.extra_args:
        parts.append("then any positional and keyword arguments of the class")
    return "<br>".join(parts)


def _example_code(name: str) -> tuple[str, list[str]]:
    """The example edge in .mach, and the generated Python it becomes (layer; statement)."""
    from .driver import compile_source  # the reference is written by the compiler itself

    inputs, pipeline, output = EXAMPLES.get(name, _DEFAULT_EXAMPLE)
    pipeline = pipeline or name
    factors = inputs.split(" × ")
    names = ["x", "s"][: len(factors)]
    decls = [f"    input {n} : {shape}" for n, shape in zip(names, factors, strict=True)]
    source = "\n".join(
        [
            "machine Example {",
            *decls,
            f"    output y : {output}",
            f"    e : {' × '.join(names)} -> y = {pipeline}",
            "}",
        ]
    )
    code = compile_source(source, filename="example.mach")
    layer = re.search(r"self\.e = (.*?)  # ", code)
    statement = re.search(r"def forward.*?\n(?:\s+(?:#|\"\"\").*\n)*\s+(y = .*)\n", code)
    assert statement is not None, code
    edge = f"e : {' × '.join(f'{n} {s}' for n, s in zip(names, factors, strict=True))}"
    edge += f" -> y {output} = {pipeline}"
    python = [f"self.e = {layer.group(1)}"] if layer else []
    return edge, [*python, statement.group(1)]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def ops_markdown() -> str:
    """The op reference section body, between the BEGIN and END markers."""
    listed = [name for _, names in GROUPS for name in names]
    missing = sorted(set(OPS) - set(listed))
    assert not missing, f"ops without a group in compiler/reference.py: {missing}"
    lines = [BEGIN, ""]
    for title, names in GROUPS:
        lines += [f"### {title}", ""]
        lines.append("| op | arguments | shape | what it does | example and generated code |")
        lines.append("| --- | --- | --- | --- | --- |")
        for name in names:
            spec = OPS[name]
            if name in EXAMPLES and EXAMPLES[name] is None:
                code = SEQUENCES
            else:
                edge, python = _example_code(name)
                code = "<br>".join(f"`{_cell(line)}`" for line in [edge, *python])
            lines.append(
                f"| `{name}` | {_cell(_arguments(spec))} | `{_cell(spec.rule)}` | "
                f"{_cell(spec.doc)} | {code} |"
            )
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def replace_reference(page: str) -> str:
    """``page`` with the text between the markers replaced by :func:`ops_markdown`."""
    start, end = page.index(BEGIN), page.index(END) + len(END)
    return page[:start] + ops_markdown() + page[end:]
