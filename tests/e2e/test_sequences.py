"""Sequence machines against PyTorch's own layers and hand-written references.

One section per oracle: transformer encoder layers, attention windows, the
bidirectional LSTM (with packed sequences), causality and chunked decoding,
backward recurrences, errors with their locations, the shape of generated code
and dropout in attention. Outputs and gradients (of the inputs and of every
parameter, mapped back to the reference's names) must agree.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from pathlib import Path

import machc
import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
STD = ROOT / "compiler" / "std"

DOUBLE = torch.float64


# --- helpers -------------------------------------------------------------------------


def load(path: Path, **params) -> types.ModuleType:
    return machc.load(path, params=params or None)


def machines(source: str, filename: str = "inline.mach", **params) -> types.ModuleType:
    """The generated module of an inline source (imports of std.* resolve as in files)."""
    code = machc.compile_source(source, filename, params=params or None)
    module = types.ModuleType(filename.removesuffix(".mach"))
    exec(compile(code, f"<machc:{filename}>", "exec"), module.__dict__)  # noqa: S102
    return module


def forward_of(source: str, cls: str) -> str:
    """The text of ``cls.forward`` in generated code (up to the next method, ``f``)."""
    start = source.index("    def forward", source.index(f"class {cls}("))
    return source[start : source.index("    def f(", start)]


def randomize(module: nn.Module) -> None:
    """Every parameter drawn anew, so layer norms are not the identity and biases not zero."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)


def copy_by_map(model: nn.Module, reference: nn.Module, names: dict[str, str]) -> None:
    """``model``'s parameters from ``reference``'s: ``names`` maps mine to theirs, covering both."""
    assert set(names) == {n for n, _ in model.named_parameters()}
    assert set(names.values()) == {n for n, _ in reference.named_parameters()}
    with torch.no_grad():
        for mine, theirs in names.items():
            model.get_parameter(mine).copy_(reference.get_parameter(theirs))


def assert_grads_by_map(model: nn.Module, reference: nn.Module, names: dict[str, str]) -> None:
    for mine, theirs in names.items():
        torch.testing.assert_close(
            model.get_parameter(mine).grad,
            reference.get_parameter(theirs).grad,
            msg=lambda m, mine=mine, theirs=theirs: f"grad of {mine} vs {theirs}: {m}",
        )


def valid_steps(lengths: Tensor | None, batch: int, steps: int) -> Tensor:
    """``[batch, steps]`` booleans: the steps before each sequence's length."""
    if lengths is None:
        return torch.ones(batch, steps, dtype=torch.bool)
    return torch.arange(steps)[None, :] < lengths[:, None]


def leaf(x: Tensor) -> Tensor:
    return x.detach().clone().requires_grad_()


@pytest.fixture
def no_fastpath():
    """nn.MultiheadAttention and nn.TransformerEncoderLayer take a fused "fast path" in eval
    mode without gradients; the tests run with gradients, and switch it off besides."""
    backend = getattr(torch.backends, "mha", None)
    if backend is None or not hasattr(backend, "set_fastpath_enabled"):
        yield
        return
    before = backend.get_fastpath_enabled()
    backend.set_fastpath_enabled(False)
    yield
    backend.set_fastpath_enabled(before)


LENGTHS = torch.tensor([6, 3, 1])  # batch 3 of at most 6 steps: full, half, one step


# --- 1. transformer encoder layers = nn.TransformerEncoderLayer ------------------------

# machine parameter <- nn.TransformerEncoderLayer parameter. Encoder (examples) and
# std.attention's PreNormEncoderLayer name their edges alike.
ENCODER_NAMES = {
    "proj.weight": "self_attn.in_proj_weight",  # q × k × v in one linear, as in_proj
    "proj.bias": "self_attn.in_proj_bias",
    "attn.weight": "self_attn.out_proj.weight",  # the linear after attention
    "attn.bias": "self_attn.out_proj.bias",
    "up.weight": "linear1.weight",
    "up.bias": "linear1.bias",
    "down.weight": "linear2.weight",
    "down.bias": "linear2.bias",
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
}


def encoder_machine(norm_first: bool, d: int, heads: int) -> nn.Module:
    if norm_first:
        library = load(STD / "attention.mach", d=d, heads=heads, hidden=4 * d)
        return library.PreNormEncoderLayer()
    return load(EXAMPLES / "encoder.mach", d=d, heads=heads).Encoder()


@pytest.mark.parametrize("norm_first", [False, True], ids=["Encoder", "PreNormEncoderLayer"])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "padded"])
def test_encoder_layers_equal_torch_transformer_encoder_layer(
    norm_first: bool, lengths: Tensor | None, no_fastpath
) -> None:
    torch.manual_seed(10)
    d, heads, batch, steps = 8, 2, 3, 6
    model = encoder_machine(norm_first, d, heads).double()
    reference = nn.TransformerEncoderLayer(
        d,
        heads,
        4 * d,
        dropout=0.0,
        activation="gelu",
        batch_first=True,
        norm_first=norm_first,
    ).double()
    reference.eval()
    randomize(reference)
    copy_by_map(model, reference, ENCODER_NAMES)
    x = torch.randn(batch, steps, d, dtype=DOUBLE)
    x_model, x_reference = leaf(x), leaf(x)
    valid = valid_steps(lengths, batch, steps)
    padding = None if lengths is None else ~valid  # True: a padded key, ignored

    y = model(x_model, lengths=lengths)
    expected = reference(x_reference, src_key_padding_mask=padding)
    torch.testing.assert_close(y[valid], expected[valid])
    assert (y[~valid] == 0).all()  # padded steps of the generated outputs are zero

    weights = torch.randn(batch, steps, d, dtype=DOUBLE) * valid[..., None]
    (y * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(x_model.grad, x_reference.grad)
    assert_grads_by_map(model, reference, ENCODER_NAMES)


# --- 2. attention = nn.MultiheadAttention, for each window -----------------------------

ATTEND = """
machine Attend(d: int = 8, heads: int = 2, w: int = 2) over t {
    input  x : d
    space  q : d
    space  k : d
    space  v : d
    output y : d

    proj : x -> q × k × v = linear
    attn : q × k[WINDOW] × v[WINDOW] -> y = attention(heads=heads) | linear
}
"""

ATTEND_NAMES = {
    "proj.weight": "in_proj_weight",
    "proj.bias": "in_proj_bias",
    "attn.weight": "out_proj.weight",
    "attn.bias": "out_proj.bias",
}


def blocked_keys(window: str, steps: int, w: int) -> Tensor | None:
    """nn.MultiheadAttention's attn_mask (True: not read) for the window ``k[window]``."""
    query, key = torch.arange(steps)[:, None], torch.arange(steps)[None, :]
    if window == "..":
        return None
    if window == "0..t":
        return key > query  # upper-triangular
    return (key > query) | (key < query - w)  # t-w..t: the last w + 1 steps


@pytest.mark.parametrize("window", ["0..t", "t-w..t", ".."], ids=["causal", "sliding", "full"])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "padded"])
def test_attention_equals_torch_multihead_attention(
    window: str, lengths: Tensor | None, no_fastpath
) -> None:
    torch.manual_seed(20)
    d, heads, w, batch, steps = 8, 2, 2, 3, 6
    model = machines(ATTEND.replace("WINDOW", window), d=d, heads=heads, w=w).Attend().double()
    reference = nn.MultiheadAttention(d, heads, batch_first=True).double()
    randomize(reference)
    copy_by_map(model, reference, ATTEND_NAMES)
    x = torch.randn(batch, steps, d, dtype=DOUBLE)
    x_model, x_reference = leaf(x), leaf(x)
    valid = valid_steps(lengths, batch, steps)

    y = model(x_model, lengths=lengths)
    expected, _ = reference(
        x_reference,
        x_reference,
        x_reference,
        attn_mask=blocked_keys(window, steps, w),
        key_padding_mask=None if lengths is None else ~valid,
        need_weights=False,
    )
    torch.testing.assert_close(y[valid], expected[valid])
    assert (y[~valid] == 0).all()

    weights = torch.randn(batch, steps, d, dtype=DOUBLE) * valid[..., None]
    (y * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(x_model.grad, x_reference.grad)
    assert_grads_by_map(model, reference, ATTEND_NAMES)


# --- 3. a 2-layer bidirectional LSTM from the library = nn.LSTM ------------------------

# examples/bilstm.mach's Tagger without its read-out.
DEEP_BILSTM = """
import std.recurrent

machine Deep(n: int = 5, m: int = 6) over t {
    input  x  : n
    space  h1 : 2 * m
    output h2 : 2 * m

    layer1 : x -> h1  = BiLSTM(n=n, m=m)
    layer2 : h1 -> h2 = BiLSTM(n=2 * m, m=m)
}
"""


def lstm_pieces(
    get: Callable[[str], Tensor],
    m: int,
    layer: int,
    reverse: bool,
    bias: Callable[[Tensor, Tensor], Tensor],
) -> dict[str, Tensor]:
    """The library LSTM's parameters, by state_dict name, assembled from nn.LSTM's tensors of
    one layer and direction (``get(name)``: a parameter or its gradient).

    nn.LSTM's rows are the gates i, f, g, o; the library's ``gates`` edge writes
    i × fg × o and ``cand`` writes g, each from x × h[t-dir] (columns: x, then h).
    Its one bias stands for ``bias_ih + bias_hh`` (``bias`` combines them).
    """
    suffix = f"_l{layer}" + ("_reverse" if reverse else "")
    w_ih, w_hh = get(f"weight_ih{suffix}"), get(f"weight_hh{suffix}")
    b = bias(get(f"bias_ih{suffix}"), get(f"bias_hh{suffix}"))
    i, f, g, o = (slice(j * m, (j + 1) * m) for j in range(4))
    prefix = f"layer{layer + 1}.{'bwd' if reverse else 'fwd'}"
    return {
        f"{prefix}.gates.weight": torch.cat([torch.cat([w_ih[r], w_hh[r]], 1) for r in (i, f, o)]),
        f"{prefix}.gates.bias": torch.cat([b[i], b[f], b[o]]),
        f"{prefix}.cand.weight": torch.cat([w_ih[g], w_hh[g]], 1),
        f"{prefix}.cand.bias": b[g],
    }


def lstm_map(get, m: int, layers: int, bias) -> dict[str, Tensor]:
    pieces: dict[str, Tensor] = {}
    for layer in range(layers):
        for reverse in (False, True):
            pieces |= lstm_pieces(get, m, layer, reverse, bias)
    return pieces


def same_gradient(b_ih: Tensor, b_hh: Tensor) -> Tensor:
    """The gradient of the library's one bias: that of bias_ih, which equals bias_hh's."""
    torch.testing.assert_close(b_ih, b_hh)
    return b_ih


@pytest.mark.parametrize("lengths", [None, torch.tensor([7, 2, 5])], ids=["full", "packed"])
def test_library_bilstm_equals_torch_bidirectional_lstm(lengths: Tensor | None) -> None:
    torch.manual_seed(30)
    n, m, batch, steps = 4, 5, 3, 7
    model = machines(DEEP_BILSTM, "deep.mach", n=n, m=m).Deep().double()
    reference = nn.LSTM(n, m, num_layers=2, bidirectional=True, batch_first=True).double()
    values = lstm_map(lambda name: getattr(reference, name), m, 2, torch.add)
    assert set(values) == set(model.state_dict())
    with torch.no_grad():
        for name, value in values.items():
            model.get_parameter(name).copy_(value)
    x = torch.randn(batch, steps, n, dtype=DOUBLE)
    x_model, x_reference = leaf(x), leaf(x)

    y = model(x_model, lengths=lengths)
    if lengths is None:
        expected, _ = reference(x_reference)
    else:
        packed = pack_padded_sequence(x_reference, lengths, batch_first=True, enforce_sorted=False)
        out, _ = reference(packed)
        expected, _ = pad_packed_sequence(out, batch_first=True, total_length=steps)
    valid = valid_steps(lengths, batch, steps)
    torch.testing.assert_close(y, expected)  # padded steps: zero in both
    assert (y[~valid] == 0).all()

    weights = torch.randn(batch, steps, 2 * m, dtype=DOUBLE)
    (y * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(x_model.grad, x_reference.grad)
    grads = lstm_map(lambda name: getattr(reference, name).grad, m, 2, same_gradient)
    for name, grad in grads.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, msg=name)


def test_forward_lstm_state_with_lengths_is_each_sequence_at_its_own_end() -> None:
    torch.manual_seed(31)
    n, m, batch, steps = 3, 4, 3, 6
    model = load(EXAMPLES / "lstm.mach", n=n, m=m).LSTM().double()
    reference = nn.LSTM(n, m, batch_first=True).double()
    pieces = lstm_pieces(lambda name: getattr(reference, name), m, 0, False, torch.add)
    with torch.no_grad():
        for name, value in pieces.items():
            model.get_parameter(name.removeprefix("layer1.fwd.")).copy_(value)
    x = torch.randn(batch, steps, n, dtype=DOUBLE)
    lengths = torch.tensor([2, 6, 4])
    y, state = model(x, lengths=lengths, return_state=True)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, (h_n, c_n) = reference(packed)
    expected, _ = pad_packed_sequence(out, batch_first=True, total_length=steps)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(state["h"][:, -1], h_n[0])
    torch.testing.assert_close(state["c"][:, -1], c_n[0])


# --- 4. causality: GPT and local attention in chunks ----------------------------------

GPT_SIZES = {"vocab": 11, "d": 8, "heads": 2, "layers": 2, "ctx": 16}


@pytest.fixture
def gpt() -> nn.Module:
    torch.manual_seed(40)
    return load(EXAMPLES / "gpt.mach", **GPT_SIZES).GPT().double().eval()


def tokens(batch: int, steps: int, seed: int = 41) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(GPT_SIZES["vocab"], (batch, steps), generator=generator)


def test_gpt_later_tokens_leave_earlier_logits_unchanged(gpt: nn.Module) -> None:
    tok = tokens(2, 12)
    for t in (0, 5, 10):
        changed = tok.clone()
        changed[:, t + 1 :] = (tok[:, t + 1 :] + 1) % GPT_SIZES["vocab"]
        before, after = gpt(tok), gpt(changed)
        torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1])
        moved = (after[:, t + 1 :] - before[:, t + 1 :]).abs().amax(-1)
        assert (moved > 1e-6).all(), f"some logit after step {t} did not change"


def test_gpt_token_by_token_decoding_equals_one_call(gpt: nn.Module) -> None:
    tok = tokens(2, 12)
    whole = gpt(tok)
    state, outputs = None, []
    for t in range(12):
        out, state = gpt(tok[:, t : t + 1], state=state, return_state=True)
        outputs.append(out)
    torch.testing.assert_close(torch.cat(outputs, 1), whole)
    assert int(state["t"]) == 12  # positions continue from the step count
    # the KV cache of each block holds every step seen
    for block in ("block[1]", "block[2]"):
        assert state[block]["k"].shape == (2, 12, GPT_SIZES["d"])
        assert state[block]["v"].shape == (2, 12, GPT_SIZES["d"])


def test_gpt_chunks_equal_one_call(gpt: nn.Module) -> None:
    tok = tokens(2, 12)
    whole = gpt(tok)
    first, state = gpt(tok[:, :3], return_state=True)
    second, state = gpt(tok[:, 3:7], state=state, return_state=True)
    third = gpt(tok[:, 7:], state=state)
    torch.testing.assert_close(torch.cat([first, second, third], 1), whole)


def test_gpt_with_lengths_equals_each_sequence_alone(gpt: nn.Module) -> None:
    tok = tokens(3, 6)
    logits = gpt(tok, lengths=LENGTHS)
    for b, length in enumerate(LENGTHS.tolist()):
        alone = gpt(tok[b : b + 1, :length])
        torch.testing.assert_close(logits[b : b + 1, :length], alone)
        assert (logits[b, length:] == 0).all()


def test_gpt_positions_past_ctx_raise_index_error_naming_the_edge(gpt: nn.Module) -> None:
    ctx = GPT_SIZES["ctx"]
    gpt(tokens(1, ctx))  # exactly ctx steps: fine
    with pytest.raises(IndexError, match=r"edge 'pos' \(.*gpt\.mach:33\) embeds 16 positions"):
        gpt(tokens(1, ctx + 1))
    with pytest.raises(IndexError, match="edge 'pos'"):
        gpt(tokens(1, 4), steps=ctx + 1)
    _, state = gpt(tokens(1, ctx - 2), return_state=True)
    with pytest.raises(IndexError, match=r"edge 'pos'.*reaches step 16"):
        gpt(tokens(1, 3), state=state)


def test_gpt_lengths_with_state_raise_value_error(gpt: nn.Module) -> None:
    tok = tokens(3, 6)
    with pytest.raises(ValueError, match="lengths= cannot be combined with state="):
        gpt(tok, lengths=LENGTHS, return_state=True)
    _, state = gpt(tok, return_state=True)
    with pytest.raises(ValueError, match="lengths= cannot be combined with state="):
        gpt(tok, lengths=LENGTHS, state=state)


def test_local_block_chunks_equal_one_call_and_keep_w_steps() -> None:
    torch.manual_seed(42)
    d, w = 8, 3
    block = load(STD / "attention.mach", d=d, heads=2, hidden=16, w=w).LocalBlock().double()
    x = torch.randn(2, 12, d, dtype=DOUBLE)
    whole, state = block(x, return_state=True)
    assert state["k"].shape == (2, w, d)  # only the steps a later window still reads
    assert state["v"].shape == (2, w, d)
    torch.testing.assert_close(state["k"], block.qkv(block.norm1(x[:, -w:]))[..., d : 2 * d])
    # chunks shorter and longer than the window, then one step at a time
    outputs, state = [], None
    for start, stop in ((0, 2), (2, 7), (7, 9), (9, 10), (10, 11), (11, 12)):
        out, state = block(x[:, start:stop], state=state, return_state=True)
        assert state["k"].shape[1] == min(stop, w)
        outputs.append(out)
    torch.testing.assert_close(torch.cat(outputs, 1), whole)


def test_local_lm_example_chunks_equal_one_call() -> None:
    torch.manual_seed(43)
    model = load(EXAMPLES / "local_attention.mach", vocab=13, d=8, heads=2, w=2).LocalLM()
    model = model.double()
    tok = torch.randint(13, (2, 9))
    whole = model(tok)
    first, state = model(tok[:, :4], return_state=True)
    second = model(tok[:, 4:], state=state)
    torch.testing.assert_close(torch.cat([first, second], 1), whole)
    assert state["block1"]["k"].shape == (2, 2, 8)


# --- 5. backward recurrences: BiElman = two explicit loops ----------------------------


def bielman_reference(
    x: Tensor, params: dict[str, Tensor], lengths: Tensor | None, m: int
) -> Tensor:
    """hf[t] = tanh(W_f [x[t], hf[t-1]] + b_f) forward from zero; hb[t] = tanh(W_b [x[t],
    hb[t+1]] + b_b) backward from zero at each sequence's last step; y = [hf, hb], zero at
    padded steps."""
    batch, steps, _ = x.shape
    alive = valid_steps(lengths, batch, steps)[..., None]
    hf, hb = x.new_zeros(batch, m), x.new_zeros(batch, m)
    forward, backward = [], [None] * steps
    for t in range(steps):
        hf = torch.tanh(torch.cat([x[:, t], hf], 1) @ params["fwd.weight"].T + params["fwd.bias"])
        forward.append(hf)
    for t in range(steps - 1, -1, -1):
        hb = torch.tanh(torch.cat([x[:, t], hb], 1) @ params["bwd.weight"].T + params["bwd.bias"])
        hb = torch.where(alive[:, t], hb, 0.0)  # past a sequence's end: still the zero start
        backward[t] = hb
    y = torch.cat([torch.stack(forward, 1), torch.stack(backward, 1)], 2)
    return torch.where(alive, y, 0.0)


@pytest.mark.parametrize("lengths", [None, torch.tensor([5, 1, 3])], ids=["full", "padded"])
def test_bielman_equals_two_explicit_loops(lengths: Tensor | None) -> None:
    torch.manual_seed(50)
    n, m, batch, steps = 3, 4, 3, 5
    model = load(EXAMPLES / "bielman.mach", n=n, m=m).BiElman().double()
    params = {name: leaf(p) for name, p in model.named_parameters()}
    x = torch.randn(batch, steps, n, dtype=DOUBLE)
    x_model, x_reference = leaf(x), leaf(x)

    y = model(x_model, lengths=lengths)
    expected = bielman_reference(x_reference, params, lengths, m)
    torch.testing.assert_close(y, expected)

    weights = torch.randn(batch, steps, 2 * m, dtype=DOUBLE)
    (y * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(x_model.grad, x_reference.grad)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, params[name].grad, msg=name)
    if lengths is not None:
        # the backward recurrence starts at each sequence's own end: padding changes nothing
        for b, length in enumerate(lengths.tolist()):
            alone = model(x[b : b + 1, :length])
            torch.testing.assert_close(y[b : b + 1, :length], alone)


# --- 6. errors, with their locations ---------------------------------------------------

ERRORS = {
    "window outside attention": (
        """machine M over t {
    input  x : 4
    output y : 4
    e : x[0..t] -> y = linear
}""",
        "E019",
        (4, 9),
        "edge 'e' reads a window of steps x[0..t], but linear reads one step at a time",
    ),
    "heads not dividing the size": (
        """machine M over t {
    input  x : 6
    space  q : 6
    space  k : 6
    space  v : 6
    output y : 6
    proj : x -> q × k × v = linear
    attn : q × k[0..t] × v[0..t] -> y = attention(heads=4) | linear
}""",
        "E009",
        (8, 41),
        "heads=4 does not divide the size 6",
    ),
    "ids fed to linear": (
        """machine M over t {
    input  tok : ids(10)
    output y   : 4
    e : tok -> y = linear
}""",
        "E019",
        (4, 9),
        "edge 'e' reads ids 'tok' with linear; ids are read by embedding",
    ),
    "positions without a size": (
        """machine M over t {
    input  tok : ids(10)
    output y   : 4
    e : tok -> y = embedding
    p : t -> y = embedding
}""",
        "E019",
        (5, 18),
        "embedding of the time index 't' needs the number of positions",
    ),
    "keys without a window": (
        """machine M over t {
    input  x : 4
    space  q : 4
    space  k : 4
    space  v : 4
    output y : 4
    proj : x -> q × k × v = linear
    attn : q × k × v -> y = attention(heads=2) | linear
}""",
        "E019",
        (8, 16),
        "the keys k are read through a window of steps",
    ),
    "ids outside a machine over time": (
        """machine M {
    input  tok : ids(10)
    output y   : 4
    e : tok -> y = embedding
}""",
        "E019",
        (2, 18),
        "'tok' holds one id per step, but machine M is not a machine over time",
    ),
    "writing the future": (
        """machine M over t {
    input  x : 4
    output h : 4
    e : x -> h[t+1] = linear
}""",
        "E016",
        (4, 14),
        "h[t+1] can only be read",
    ),
}

CYCLE_BOTH_WAYS = """machine M over t {
    input  x : 4
    space  a : 4
    space  b : 4
    output y : 4
    f : x × b[t-1] -> a = linear
    g : a[t+1] -> b = linear
    r : a -> y = linear
}"""


def compile_error(source: str) -> machc.CompileError:
    with pytest.raises(machc.CompileError) as info:
        machc.check_source(source, "x.mach")
    return info.value


@pytest.mark.parametrize(("source", "code", "place", "message"), ERRORS.values(), ids=ERRORS)
def test_errors_name_their_code_and_place(
    source: str, code: str, place: tuple[int, int], message: str
) -> None:
    error = compile_error(source)
    [diagnostic] = error.errors
    assert diagnostic.code.value == code
    assert (diagnostic.span.line, diagnostic.span.column) == place
    assert message in diagnostic.message
    line, column = place
    assert f"x.mach:{line}:{column}: error: " in str(error)  # rendered with a caret
    assert "^" in str(error)


def test_a_cycle_through_past_and_future_is_e013_naming_its_edges() -> None:
    error = compile_error(CYCLE_BOTH_WAYS)
    [diagnostic] = error.errors
    assert diagnostic.code.value == "E013"
    assert "earlier and later steps" in diagnostic.message
    assert (diagnostic.span.line, diagnostic.span.column) == (6, 5)
    notes = [(note.message, note.span.line) for note in diagnostic.notes]
    assert notes == [  # each edge of the cycle once, with the step it reads
        ("edge 'f' reads b[t-1] and writes 'a'", 6),
        ("edge 'g' reads a[t+1] and writes 'b'", 7),
    ]
    assert "edge 'r'" not in str(error)  # the read-out is not on the cycle


@pytest.mark.parametrize(
    "model",
    [
        lambda: load(EXAMPLES / "bielman.mach", n=2, m=3).BiElman(),
        lambda: load(EXAMPLES / "encoder.mach", d=4, heads=2).Encoder(),
        lambda: machines(
            "import std.recurrent\n"
            "machine Back over t {\n    input x : 2\n    output h : 3\n"
            "    lstm : x -> h = LSTM(n=2, m=3, dir=-1)\n}\n"
        ).Back(),
    ],
    ids=["BiElman", "Encoder", "LSTM(dir=-1)"],
)
def test_state_on_a_machine_that_reads_the_future_raises(model) -> None:
    model = model()
    assert model.CAUSAL is False
    x = torch.randn(1, 3, model.SPACES[model.INPUTS[0]][0])
    with pytest.raises(ValueError, match="reads later steps.*cannot run in chunks"):
        model(x, return_state=True)
    with pytest.raises(ValueError, match="reads later steps.*cannot run in chunks"):
        model(x, state={})


# --- 7. the shape of generated code ----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "classes"),
    [("encoder.mach", ["Encoder"]), ("gpt.mach", ["Block", "GPT"])],
)
def test_machines_without_recurrence_have_no_step_loop(name: str, classes: list[str]) -> None:
    source = machc.compile_file(EXAMPLES / name)
    for cls in classes:
        assert "for t in" not in forward_of(source, cls), cls
        assert "runtime.recur" not in forward_of(source, cls), cls


def test_bielman_runs_one_loop_forward_and_one_backward() -> None:
    # the step loops (with the rewrite cells, each is one call of torch.rnn_tanh)
    source = machc.compile_file(EXAMPLES / "bielman.mach", rewrites=())
    forward = forward_of(source, "BiElman")
    assert forward.count("runtime.recur(") == 2
    assert forward.count(", reverse=True)") == 1
    # the forward loop holds fwd only, the backward loop bwd only
    ahead = forward[forward.index("def step_1(") :]
    ahead = ahead[: ahead.index("reverse=True")]
    first, second = ahead.split("def step_2(")
    assert "hf[t-1]" in first and "hb[t+1]" not in first
    assert "hb[t+1]" in second and "hf[t-1]" not in second


# --- 8. dropout in attention -----------------------------------------------------------

DROPOUT = """
machine Drop(d: int = 8) over t {
    input  x : d
    space  q : d
    space  k : d
    space  v : d
    output y : d

    proj : x -> q × k × v = linear
    attn : q × k[..] × v[..] -> y = attention(heads=2DROPOUT) | linear
}
"""


def test_attention_dropout_acts_in_train_mode_only() -> None:
    torch.manual_seed(80)
    model = machines(DROPOUT.replace("DROPOUT", ", dropout=0.5")).Drop().double()
    plain = machines(DROPOUT.replace("DROPOUT", "")).Drop().double()
    plain.load_state_dict(model.state_dict())
    x = torch.randn(2, 6, 8, dtype=DOUBLE)
    model.eval()
    torch.testing.assert_close(model(x), plain(x))
    torch.testing.assert_close(model(x), model(x))
    model.train()
    first, second = model(x), model(x)
    assert not torch.allclose(first, plain(x))
    assert not torch.allclose(first, second)
