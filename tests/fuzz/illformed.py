"""Random ill-formed and hostile machines: sources a careless or malicious user might write.

Four kinds:

- **renamed** well-formed machines: one identifier (a space, an edge, a
  parameter, a machine, a loop variable, the time index) renamed everywhere
  to a name that generated code or Python also uses (``range``, ``list``,
  ``self``, ``DELAYS``, ``__class__``, ``_0``, keywords, builtins, the
  locals of generated methods). Most are still valid sources: they must
  compile and run like the original;
- **corrupted** well-formed machines: a wrong name, size, op, argument, an
  extra edge that often closes a cycle, a read of another step written
  wrongly: each must be a diagnostic;
- **hostile** constructs: deep expressions, huge numbers, huge loops and
  arrays, hundreds of edges into one space, long chains of machines, long
  module paths, ``shared`` of odd edges, recursive machines, odd imports,
  odd unicode;
- well-formed machines compiled with odd ``--set`` values (``params``).
"""

from __future__ import annotations

import builtins
import keyword
import random

from .tokens import KEYWORDS, Token, identifiers, join, rename, tokenize
from .wellformed import well_formed

Params = dict[str, str]

# Names that generated code gives a meaning to: its imports, helpers, locals, class
# attributes, nn.Module's attributes, NamedTuple's, and names it makes from others.
GENERATED_NAMES = sorted(
    set(
        """
        range list self DELAYS __class__ _0 z _ __x __init__ __dict__ __module__ __name__ _x
        _complete runtime torch nn F Tensor NamedTuple annotations batch steps state lengths
        return_state offset x0 l O I forward f resolvent training SPACES INPUTS OUTPUTS
        WINDOWS IDS STATEFUL_EDGES CAUSAL parameters to double eval cuda T_destination
        dump_patches count index _fields _asdict _replace _make h_2 x_ x_2 h_m1 Output
        MOutput t given like spaces name shape cls super print len sorted KeyError ValueError
        dict tuple str int float bool object isinstance zip min max sum any all getattr iter
        next type linear relu conv embedding attention shared ids std M Net past seen
        h_steps h_past y_e y_ cell_x x_at e_w_h tok None True False class def lambda
        adjoint bar cotangent _leaves _pull cycle_z solve_z z_next z_in solve with
        """.split()
    )
)
# Every name with a meaning somewhere: the above, Python's keywords and builtins, .mach's words.
RESERVED = sorted(
    set(GENERATED_NAMES)
    | set(keyword.kwlist)
    | set(keyword.softkwlist)
    | {n for n in dir(builtins) if n.isidentifier() and not n.startswith("__")}
    | KEYWORDS
)

HUGE_INTS = [0, -1, 1, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**20]
HUGE_TEXT = [
    *(str(n) for n in HUGE_INTS),
    "1" + "0" * 100,
    "100000",
    "100001",
    "1" * 4301,
    "9" * 5000,
    *"1e308 1e309 1e-400 0.0 1e-320 123456789012345678901234567890.5".split(),
]
ODD_SET_VALUES = [
    *"٤ ٤٢ ８ 1_000 0x10 +3 -0 1e3 1e309 nan inf -inf NaN true TRUE False yes 1.5 3. .5".split(),
    *"2147483648 10000000000000000000000 -1 0 ² ½ 𝟖".split(),
    *[" 8", "8 ", "", "\x00", "8\n", "1" * 5000],
]
ODD_SET_KEYS = ["", ".", "M.", ".n", "M.N.n", "Unknown.n", "n.", "M..n", "Ｍ.n", "__class__"]
ODD_UNICODE = [
    *"\u00a0 \u200b \u200d \ufeff \u2028 \u2029 \u0085 \x0c \x0b \r \r\n \t \u202e".split(" "),
    *"é ٤ ℌ ｘ 𝑥 Ⅻ ⁹ \U0001f600 \u0301 × → − — ⟶ ∗ \x1c \x1d \x1e \x7f".split(" "),
]

# Names in a well-formed source that are not the user's own: ops, op arguments, std
# machines and their parameters. Renaming those breaks the source in a boring way.
_NOT_RENAMED = frozenset(
    """
    linear conv conv_transpose identity add mul scale relu relu6 gelu silu mish hardswish
    tanh sigmoid softplus elu leaky_relu softmax log_softmax dropout channel_dropout
    batchnorm groupnorm instancenorm layernorm maxpool avgpool adaptive_avg_pool
    adaptive_max_pool global_avg_pool global_max_pool upsample flatten reshape module
    rmsnorm embedding attention shared ids int float bool std blocks recurrent torch nn
    Identity ReLU Tanh GELU Sigmoid SiLU Linear
    out bias kernel stride padding dilation groups padding_mode output_padding factor
    approximate alpha slope p eps momentum affine ceil_mode size scale mode align_corners
    shape path num heads MLP ResBlock DenseMachine ConvBlock ResConvBlock ConvMachine Elman
    LSTM GRU BiLSTM BiGRU TimeMachine CausalBlock LocalBlock EncoderLayer
    PreNormEncoderLayer MLPBlock n width depth c_in c_out c m dir d hidden w blocks o
    """.split()
)


def own_names(text: str) -> list[str]:
    """The user's own identifiers of a generated source: what renaming may touch."""
    return [n for n in identifiers(text) if n not in _NOT_RENAMED]


# --- renamed: valid sources with names that generated code also uses ------------------


def renamed(rng: random.Random) -> tuple[str, Params]:
    """A well-formed source with one to three identifiers renamed to reserved names."""
    text = well_formed(rng)
    names = own_names(text)
    for _ in range(rng.choice([1, 1, 2, 3])):
        if not names:
            break
        old = rng.choice(names)
        new = rng.choice(GENERATED_NAMES if rng.random() < 0.6 else RESERVED)
        if new in KEYWORDS and rng.random() < 0.8:  # mostly names that parse
            new = rng.choice([n for n in RESERVED if n not in KEYWORDS])
        text = rename(text, old, new)
        names.remove(old)
    return text, {}


# --- corrupted: each must be a diagnostic ---------------------------------------------


def corrupted(rng: random.Random) -> tuple[str, Params]:
    """A well-formed source with one to three mistakes (and sometimes odd ``--set``s)."""
    text = well_formed(rng)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        text = rng.choice(_CORRUPTIONS)(rng, text)
    return text, odd_params(rng, text) if rng.random() < 0.15 else {}


def _wrong_name(rng: random.Random, text: str) -> str:
    tokens = tokenize(text)
    spots = [i for i, t in enumerate(tokens) if t.kind == "name" and t.text not in KEYWORDS]
    if spots:
        i = rng.choice(spots)
        tokens[i] = Token("name", rng.choice(["nope", "xx", tokens[i].text + "2", "Unknown"]))
    return join(tokens)


def _wrong_number(rng: random.Random, text: str) -> str:
    tokens = tokenize(text)
    spots = [i for i, t in enumerate(tokens) if t.kind in ("int", "float")]
    if spots:
        new = rng.choice('0 1 3 7 64 2 1.5 true [2] "a"'.split())
        tokens[rng.choice(spots)] = Token("int", new)
    return join(tokens)


def _wrong_op(rng: random.Random, text: str) -> str:
    from machc.ops import OPS  # the compiler's op table: no torch

    tokens = tokenize(text)
    spots = [i for i, t in enumerate(tokens) if t.kind == "name" and t.text in OPS]
    if spots:
        i = rng.choice(spots)
        op = rng.choice([*OPS, "lstm", "Linear", "relu_", "sofmax"])
        tokens[i] = Token("name", op + rng.choice(["", "", random_args(rng)]))
    return join(tokens)


_ARG_NAMES = (
    "out kernel p heads groups stride padding shape size scale eps mode bias num dropout "
    "path foo factor dilation output_padding align_corners ceil_mode approximate"
).split()
_ARG_VALUES = [
    *'0 -1 1 3 2.5 true false "same" "x" [] [3,3] [1,2,3,4,5] 1e-3 100000 [[1]] -0.5 ""'.split(),
    *["[3, 3]", str(2**31), str(10**20), "1e309", '"bilinear"', '"tanh"', "[0]", "[-1, 2]"],
]


def random_args(rng: random.Random) -> str:
    """``(...)``: zero to three arguments, positional or keyword, of any kind."""
    args = []
    for _ in range(rng.randint(0, 3)):
        value = rng.choice(_ARG_VALUES)
        args.append(f"{rng.choice(_ARG_NAMES)}={value}" if rng.random() < 0.6 else value)
    return "(" + ", ".join(args) + ")"


_EXTRA_OPS = "linear identity relu attention(heads=1) embedding shared(extra) add mul".split()


def _extra_edge(rng: random.Random, text: str) -> str:
    """An edge between two random names: often a cycle, a shape mismatch or a bad product."""
    names = identifiers(text)
    lines = text.split("\n")
    spots = [i for i, line in enumerate(lines) if " = " in line and ":" in line]
    if not names or not spots:
        return text
    a, b = rng.choice(names), rng.choice(names)
    read = rng.choice([a, f"{a}[t-1]", f"{a}[1]", f"{a}[0..t]", f"{a}[..]", f"{a}[1..2]", "t"])
    lines.insert(rng.choice(spots) + 1, f"    extra : {read} -> {b} = {rng.choice(_EXTRA_OPS)}")
    return "\n".join(lines)


def _drop_line(rng: random.Random, text: str) -> str:
    lines = text.split("\n")
    if len(lines) > 2:
        del lines[rng.randrange(len(lines))]
    return "\n".join(lines)


def _swap_role(rng: random.Random, text: str) -> str:
    tokens = tokenize(text)
    spots = [i for i, t in enumerate(tokens) if t.text in ("input", "output", "space")]
    if spots:
        tokens[rng.choice(spots)] = Token("name", rng.choice(["input", "output", "space"]))
    return join(tokens)


_TIME_SUFFIXES = [
    *"[t] [t-0] [2*t] [t-1] [t+1] [t-(-1)] [0..t] [t-0..t] [t..0] [..] [t-1][t-1]".split(),
    *"[1][t-1] [t-100001] [t-t] [t*1] [-t] [t-1..t-1] [0..t+1]".split(),
    f"[t-{10**20}]",
    f"[t-{10**20}..t]",
]


def _time_read(rng: random.Random, text: str) -> str:
    """A read of another step or a window written some wrong way (or outside time)."""
    tokens = tokenize(text)
    spots = [i for i, t in enumerate(tokens) if t.kind == "name" and t.text not in KEYWORDS]
    if spots:
        tokens.insert(rng.choice(spots) + 1, Token("other", rng.choice(_TIME_SUFFIXES)))
    return join(tokens)


def _duplicate_machine(rng: random.Random, text: str) -> str:
    return text + "\n" + text


_CORRUPTIONS = [
    _wrong_name,
    _wrong_number,
    _wrong_op,
    _wrong_op,
    _extra_edge,
    _extra_edge,
    _drop_line,
    _swap_role,
    _time_read,
    _duplicate_machine,
]


def odd_params(rng: random.Random, text: str) -> Params:
    """``--set`` keys and values, mostly odd ones."""
    names = own_names(text) or ["n"]
    params: Params = {}
    for _ in range(rng.randint(1, 2)):
        key = rng.choice([rng.choice(names), f"M.{rng.choice(names)}", rng.choice(ODD_SET_KEYS)])
        params[key] = rng.choice([*ODD_SET_VALUES, rng.choice(HUGE_TEXT), "2", "1", "0.5"])
    return params


def set_params(rng: random.Random) -> tuple[str, Params]:
    """A well-formed source compiled with ``--set`` values, valid and odd."""
    text = well_formed(rng)
    names = own_names(text)
    values = [*ODD_SET_VALUES, *"1 2 3 0 true 0.5".split(), *HUGE_TEXT[:8]]
    params: Params = {}
    for _ in range(rng.randint(1, 3)):
        key = rng.choice(names) if names and rng.random() < 0.8 else rng.choice(ODD_SET_KEYS)
        if rng.random() < 0.3:
            key = f"{rng.choice(['M', 'Net', 'Model', 'Block'])}.{key}"
        params[key] = rng.choice(values)
    return text, params


# --- hostile constructs -----------------------------------------------------------------

DEPTHS = [10, 50, 99, 100, 101, 150, 300, 500, 1000, 3000]


def deep_expression(rng: random.Random) -> str:
    """An expression nested ``n`` deep, worth a small positive integer where it can be."""
    n = rng.choice(DEPTHS)
    kind = rng.choice(
        ["sum", "sub", "neg", "parens", "list", "product", "mixed", "power", "logic", "call"]
    )
    if kind == "sum":
        return " + ".join(["1"] * n)
    if kind == "sub":
        return f"{n + 4}" + " - 1" * n
    if kind == "neg":
        return "-" * (2 * (n // 2)) + "4"
    if kind == "parens":
        return "(" * n + "4" + ")" * n
    if kind == "list":
        return "[" * n + "4" + "]" * n
    if kind == "product":
        return " * ".join(["1"] * n) + " * 4"
    if kind == "power":  # right-associative, and huge unless the base is 1
        return " ** ".join([rng.choice(["1", "2", "10"])] * n)
    if kind == "logic":  # a bool where a number is wanted: an error either way
        return " or ".join(["not false"] * n) if n < 600 else "not " * n + "true"
    if kind == "call":
        return "max(" * n + "4" + ", 1)" * n
    return "".join(rng.choice(["(", "-(", "1 + ("]) for _ in range(n)) + "4" + ")" * n


def _templates(text: str) -> list[str]:
    """Templates separated by blank lines, ``{n}`` (and other fields) to fill in."""
    return [block.strip() + "\n" for block in text.split("\n\n") if block.strip()]


_DEEP = _templates(
    """
machine M { input x : {e}
  output y : 4
  e : x -> y = linear }

machine M { input x : 4
  output y : 4
  e : x -> y = linear | scale({e}) }

machine M(n: int = {e}) { input x : n
  output y : 4
  e : x -> y = linear }

machine M { input x : 4
  space h[1..4] : 4
  output y : 4
  e : x -> h[1..4] = linear
  o : h[{e}] -> y = linear }

machine M over t { input x : 4
  output y : 4
  e : x -> y = linear
  r : y[t-({e})] -> y = linear }

machine M { input x : [{e}, {e}]
  output y : 4
  e : x -> y = flatten | linear }

machine M { input x : 4
  output y : 4
  for i in 1..{e} { e[i] : x -> y = linear } }

machine M { input x : [3, 8, 8]
  output y : [3, 8, 8]
  e : x -> y = conv({e}, padding="same") }

machine M { input x : 4
  output y : 4
  if {e} == 4 { e : x -> y = linear } else { f : x -> y = relu } }
"""
)


def deep_blocks(rng: random.Random) -> str:
    """Loops and ifs nested ``n`` deep around one edge."""
    n = rng.choice(DEPTHS)
    body = "e : x -> y = linear"
    for k in range(n):
        kind = rng.choice(["if", "for", "else"])
        if kind == "if":
            body = f"if {k} >= 0 {{ {body} }}"
        elif kind == "else":
            body = f"if {k} < 0 {{ }} else if true {{ {body} }} else {{ }}"
        else:
            body = f"for i{k} in 1..1 {{ {body} }}"
    return f"machine M {{ input x : 4\n  output y : 4\n  {body} }}\n"


def _h_deep_blocks(rng: random.Random) -> tuple[str, Params]:
    return deep_blocks(rng), {}


def _h_deep(rng: random.Random) -> tuple[str, Params]:
    return rng.choice(_DEEP).replace("{e}", deep_expression(rng)), {}


_HUGE = _templates(
    """
machine M { input x : {n}
  output y : 4
  e : x -> y = linear }

machine M { input x : 4
  output y : {n}
  e : x -> y = linear }

machine M { input x : [3, {n}]
  output y : 4
  e : x -> y = flatten | linear }

machine M { input x : [3, 8, 8]
  output y : [3, 8, 8]
  e : x -> y = conv({n}, padding="same") }

machine M { input x : [3, 8, 8]
  output y : [3, 8, 8]
  e : x -> y = conv(3, padding={n}) | adaptive_avg_pool(8) }

machine M { input x : [3, 8, 8]
  output y : [3, 8, 8]
  e : x -> y = conv(3, padding=1, dilation={n}) }

machine M { input x : [4, 8]
  output y : [4, 8]
  e : x -> y = conv(1, groups={n}) }

machine M { input x : [4, 8]
  output y : 4
  e : x -> y = adaptive_avg_pool({n}) | global_avg_pool }

machine M { input x : [4, 8]
  output y : [4, 8]
  e : x -> y = upsample({n}) | adaptive_avg_pool(8) }

machine M { input x : [4, 8]
  output y : [4, 8]
  e : x -> y = maxpool(3, stride={n}, padding=1) | adaptive_avg_pool(8) }

machine M { input x : 4
  output y : 4
  e : x -> y = linear(out={n}) | linear }

machine M { input x : 4
  output y : 4
  e : x -> y = dropout({n}) | scale({n}) | elu({n}) | leaky_relu({n}) }

machine M { input x : 4
  output y : 4
  e : x -> y = layernorm(eps={n}) | batchnorm(eps={n}, momentum={n}) }

machine M { input x : 4
  output y : 4
  e : x -> y = reshape([{n}]) }

machine M(n: int = {n}) { input x : 4
  output y : 4
  e : x -> y = linear }

machine M(p: float = {n}) { input x : 4
  output y : 4
  e : x -> y = dropout(p) }

machine M { input x : 4
  space h[1..{n}] : 4
  output y : 4
  e : x -> h[1] = linear
  o : h[1] -> y = linear }

machine M { input x : 4
  space h[{n}..{n}] : 4
  output y : 4
  e : x -> h[{n}] = linear
  o : h[{n}] -> y = linear }

machine M { input x : 4
  output y : 4
  for i in 1..{n} { e[i] : x -> y = linear } }

machine M { input x : 4
  output y : 4
  e[{n}] : x -> y = linear }

machine M over t { input x : 4
  output y : 4
  e : x -> y = linear
  r : y[t-{n}] -> y = linear }

machine M over t { input x : 4
  output y : 4
  e : x -> y = linear
  r : y[t+{n}] -> y = linear }

machine M over t { input x : 8
  space q : 8
  space k : 8
  space v : 8
  output y : 8
  p : x -> q * k * v = linear
  a : q * k[t-{n}..t] * v[t-{n}..t] -> y = attention(heads=2) }

machine M over t { input x : 8
  space q : 8
  space k : 8
  space v : 8
  output y : 8
  p : x -> q * k * v = linear
  a : q * k[0..t] * v[0..t] -> y = attention(heads={n}) }

machine M over t { input tok : ids({n})
  output y : 4
  e : tok -> y = embedding }

machine M over t { input x : 4
  output y : 4
  e : x -> y = linear
  p : t -> y = embedding({n}) }
"""
)


def _h_huge_number(rng: random.Random) -> tuple[str, Params]:
    text = rng.choice(_HUGE).replace("{n}", rng.choice(HUGE_TEXT))
    params = {"n": rng.choice(HUGE_TEXT + ODD_SET_VALUES)} if rng.random() < 0.2 else {}
    return text, params


_LOOPS = _templates(
    """
machine M { input x : 4
  output y : 4
  for i in 1..{a} { for j in 1..{b} { e[i * {b} + j] : x -> y = identity } } }

machine M { input x : 4
  output y : 4
  for i in 1..{a} { for j in 1..{b} { for k in 1..{b} { } } }
  e : x -> y = linear }

machine M { input x : 4
  output y : 4
  for i in 1..{a} { e[i] : x -> y = identity } }

machine M { input x : 4
  space h[1..{a}] : 1
  output y : 4
  for i in 1..{a} { g[i] : x -> h[i] = linear }
  o : h[1..{a}] -> y = linear }

machine M { input x : 4
  space h[1..{a}] : 1
  output y : 4
  for i in 1..{a} { g[i] : x × h[1..i-1] -> h[i] = linear }
  o : h[{a}] -> y = linear }

machine M { input x : 4
  output y : 4
  for i in 1..{a} { space h[i..i] : 4
    g[i] : x -> h[i] = linear
    o[i] : h[i] -> y = linear } }

machine M over t { input x : 4
  space h[1..{a}] : 2
  output y : 4
  for i in 1..{a} { g[i] : x × h[1..{a}][t-1] -> h[i] = linear }
  o : h[1] -> y = linear }

machine M { input x : 4
  output y : 4
  e : x -> y = linear
  for i in 1..{a} { for j in i..{b} { f[i * 1000000 + j] : x -> y = identity } } }
"""
)


def _h_big_loops(rng: random.Random) -> tuple[str, Params]:
    a, b = rng.choice([10, 1000, 100000, 100001]), rng.choice([10, 1000, 100000])
    return rng.choice(_LOOPS).replace("{a}", str(a)).replace("{b}", str(b)), {}


def _h_many_edges(rng: random.Random) -> tuple[str, Params]:
    n = rng.choice([100, 300, 500])
    roll = rng.random()
    if roll < 0.4:  # every edge written out, all into one space (under 10 kB)
        body = "\n".join(f"e{i}:x->y=identity" for i in range(n))
        return f"machine M{{input x:4 output y:4\n{body}}}\n", {}
    if roll < 0.6:  # a long chain of spaces
        spaces = " ".join(f"space s{i}:1" for i in range(1, n))
        chain = "\n".join(f"e{i}:s{i - 1}->s{i}=identity" for i in range(1, n))
        return (
            f"machine M{{input s0:1 output y:1\n{spaces}\n{chain}\no:s{n - 1}->y=identity}}\n",
            {},
        )
    if roll < 0.8:  # a chain of machines, each used as an edge of the next
        k = rng.choice([20, 100, 300])
        parts = ["machine A0{input x:2 output y:2 e:x->y=linear}"]
        parts += [f"machine A{i}{{input x:2 output y:2 e:x->y=A{i - 1}}}" for i in range(1, k)]
        return "\n".join(parts) + "\n", {}
    k = rng.choice([20, 200])
    return "".join(f"machine M{i}{{input x:1 output y:1 e:x->y=linear}}\n" for i in range(k)), {}


_MODULE_PATHS = [
    *"torch.nn.Linear torch.nn.Identity torch.nn torch os.system builtins.print".split(),
    *". .. a..b a. .a é.ü torch.nn.Conv2d machc.runtime.external __main__.M".split(),
    *["", "a b.c", "torch.nn.Linear\\n", "\\u0000.x", "x" * 5000],
]
_MODULE_ARGS = [
    *["", ", 4, 4", ", 4", ", shape=4", ", shape=[2, 2]", ", shape=[]", ", shape=-1"],
    ", in_features=4, out_features=4",
]


def _h_module_path(rng: random.Random) -> tuple[str, Params]:
    parts = rng.choice([2, 50, 300, 1000])
    path = rng.choice([".".join(["a"] * parts) + ".B", *_MODULE_PATHS])
    args = rng.choice(_MODULE_ARGS)
    return f'machine M {{ input x : 4\n output y : 4\n e : x -> y = module("{path}"{args}) }}\n', {}


_SHARED = _templates(
    """
machine A { input x : 4
  space h : 4
  output y : 4
  e : x -> h = linear
  s : h -> y = shared({t}) }
machine N { input x : 4
  space h : 4
  output y : 4
  a : x -> h = A
  o : h -> y = {use} }

machine M { input x : 4
  space h[1..2] : 4
  output y : 4
  for i in 1..2 { g[i] : x -> h[i] = linear }
  o : h[1] -> y = shared({t}) }
"""
)
_SHARED_TARGETS = ["zz", "e", "s", '"g[2]"', '"g[9]"', "x", "", '"e"', "shared", "o", '"g[1"']


def _h_shared(rng: random.Random) -> tuple[str, Params]:
    target = rng.choice(_SHARED_TARGETS)
    use = rng.choice(["shared(a)", "linear", "A", f"shared({target})"])
    return rng.choice(_SHARED).replace("{t}", target).replace("{use}", use), {}


_RECURSION = _templates(
    """
machine A { input x : 4
  output y : 4
  e : x -> y = A }

machine A { input x : 4
  output y : 4
  e : x -> y = B }
machine B { input x : 4
  output y : 4
  e : x -> y = A(w=1) }

import std.blocks
machine MLP { input x : 4
  output y : 4
  e : x -> y = linear }
machine M { input x : 16
  output y : 10
  e : x -> y = MLP }

import std.recurrent
machine M { input x : 16
  output y : 16
  e : x -> y = Elman }

machine A(w: int = 4) { input x : w
  output y : w
  e : x -> y = linear }
machine M { input x : 4
  output y : 4
  e : x -> y = A(v=1, w=4, w=5) }

machine A(w: int) { input x : w
  output y : w
  e : x -> y = linear }
machine M { input x : 4
  output y : 4
  e : x -> y = A | relu }
"""
)


def _h_recursion(rng: random.Random) -> tuple[str, Params]:
    return rng.choice(_RECURSION), {}


_IMPORTS = [
    *'"fuzz.mach" "nonexistent.mach" std.nope std "." "/dev/null" "" "blocks.mach"'.split(),
    *'std.blocks a.b.c "../x.mach" "/" std.blocks.MLP "net.mach" std.std std._ "NUL"'.split(),
    '"\\u0000"',
    '"' + "a/" * 200 + 'x.mach"',
]
_IMPORT_BODIES = [
    "machine M { input x : 4\n output y : 4\n e : x -> y = linear }",
    "machine M { input x : 32\n output y : 32\n e : x -> y = ResBlock }",
    "machine M { input x : 16\n output y : 10\n e : x -> y = MLP }",
    "",
]


def _h_imports(rng: random.Random) -> tuple[str, Params]:
    lines = [f"import {rng.choice(_IMPORTS)}" for _ in range(rng.choice([1, 1, 2]))]
    return "\n".join(lines) + "\n" + rng.choice(_IMPORT_BODIES) + "\n", {}


def _h_unicode(rng: random.Random) -> tuple[str, Params]:
    """A well-formed source with odd characters in names, strings, comments or between."""
    tokens = tokenize(well_formed(rng))
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(tokens))
        odd = rng.choice(ODD_UNICODE)
        roll = rng.random()
        if roll < 0.4:
            tokens.insert(i, Token("other", odd))
        elif roll < 0.7 and tokens[i].kind == "name":
            tokens[i] = Token("other", tokens[i].text + odd)
        elif tokens[i].kind in ("comment", "string"):
            tokens[i] = Token("other", tokens[i].text[:-1] + odd + tokens[i].text[-1:])
        else:
            tokens[i] = Token("other", odd)
    return join(tokens), {}


_TIME_READS = [
    *"h[t] h[t-0] h[2*t] h[t-1] h[t+1] h[0..t] h[..] h[t-2..t] h[t..t] h[t-0..t]".split(),
    *"h[1..t] h[t-1][t-1] t t[t-1] h[t-n] h[t+n] h[t-(n-n)] tok[t-1] tok[0..t]".split(),
]
_TIME_HEADERS = ["over t", "over n", "over x", "over M", "", "over t over t", "over range"]
_TIME_OPS = "linear attention(heads=1) embedding embedding(4) identity mul".split()


def _h_time(rng: random.Random) -> tuple[str, Params]:
    read, header, op = (rng.choice(x) for x in (_TIME_READS, _TIME_HEADERS, _TIME_OPS))
    return (
        f"machine M(n: int = 1) {header} {{ input x : 4\n input tok : ids(5)\n space h : 4\n"
        f" output y : 4\n a : x × tok -> h = linear\n e : {read} -> y = {op}\n"
        f" b : tok -> y = embedding }}\n",
        {},
    )


_HOSTILE = [
    _h_deep_blocks,
    _h_deep,
    _h_deep,
    _h_huge_number,
    _h_huge_number,
    _h_big_loops,
    _h_many_edges,
    _h_module_path,
    _h_shared,
    _h_recursion,
    _h_imports,
    _h_unicode,
    _h_time,
]


def hostile(rng: random.Random) -> tuple[str, Params]:
    """One of many hand-made shapes of trouble, with random sizes."""
    return rng.choice(_HOSTILE)(rng)
