"""Machines over time: the examples against PyTorch's own recurrent layers, state and steps."""

from __future__ import annotations

from pathlib import Path

import machc
import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def load(name: str, **params):
    return machc.load(EXAMPLES / name, params=params or None)


def test_lstm_matches_torch_lstm() -> None:
    torch.manual_seed(0)
    model = load("lstm.mach", n=5, m=7).LSTM().double()
    reference = nn.LSTM(5, 7, batch_first=True).double()
    m = 7
    with torch.no_grad():
        # nn.LSTM's gate rows are (input, forget, cell, output); the machine's
        # `gates` edge writes i × fg × o and `cand` writes g.
        w_ih, w_hh = reference.weight_ih_l0, reference.weight_hh_l0
        bias = reference.bias_ih_l0 + reference.bias_hh_l0
        rows = {"i": slice(0, m), "f": slice(m, 2 * m), "g": slice(2 * m, 3 * m)}
        rows["o"] = slice(3 * m, 4 * m)
        gates = [rows["i"], rows["f"], rows["o"]]
        model.gates.weight.copy_(torch.cat([torch.cat([w_ih[r], w_hh[r]], 1) for r in gates]))
        model.gates.bias.copy_(torch.cat([bias[r] for r in gates]))
        model.cand.weight.copy_(torch.cat([w_ih[rows["g"]], w_hh[rows["g"]]], 1))
        model.cand.bias.copy_(bias[rows["g"]])
    x = torch.randn(3, 11, 5, dtype=torch.float64)
    expected, (h_n, c_n) = reference(x)
    h, state = model(x, return_state=True)
    torch.testing.assert_close(h, expected)
    torch.testing.assert_close(state["h"][:, -1], h_n[0])
    torch.testing.assert_close(state["c"][:, -1], c_n[0])


def test_elman_matches_torch_rnn_with_a_readout() -> None:
    torch.manual_seed(1)
    model = load("elman.mach", n=4, m=6).Elman().double()
    rnn = nn.RNN(4, 6, batch_first=True).double()
    readout = nn.Linear(6, 4).double()
    with torch.no_grad():
        model.cell.weight.copy_(torch.cat([rnn.weight_ih_l0, rnn.weight_hh_l0], 1))
        model.cell.bias.copy_(rnn.bias_ih_l0 + rnn.bias_hh_l0)
        model.read.load_state_dict(readout.state_dict())
    x = torch.randn(2, 9, 4, dtype=torch.float64)
    hidden, _ = rnn(x)
    torch.testing.assert_close(model(x), readout(hidden))


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("lstm.mach", "LSTM"),
        ("elman.mach", "Elman"),
        ("stacked_rnn.mach", "StackedRNN"),
        ("time_machine.mach", "TimeMachine"),
    ],
)
def test_chunks_with_state_equal_one_long_call(name: str, cls: str) -> None:
    torch.manual_seed(2)
    model = getattr(load(name), cls)().double()
    shape = model.SPACES[model.INPUTS[0]]
    x = torch.randn(2, 10, *shape, dtype=torch.float64)
    whole = model(x)
    first, state = model(x[:, :4], return_state=True)
    second, state = model(x[:, 4:7], state=state, return_state=True)
    third = model(x[:, 7:], state=state)
    torch.testing.assert_close(torch.cat([first, second, third], 1), whole)
    assert set(state) == set(model.DELAYS)
    for space, k in model.DELAYS.items():
        assert state[space].shape == (2, k, *model.SPACES[space])


def test_steps_past_the_input_run_on_with_zero_input() -> None:
    torch.manual_seed(3)
    model = load("elman.mach", n=3, m=5).Elman().double()
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    longer = model(x, steps=9)
    assert longer.shape == (2, 9, 3)
    padded = torch.cat([x, torch.zeros(2, 5, 3, dtype=torch.float64)], 1)
    torch.testing.assert_close(longer, model(padded))
    torch.testing.assert_close(longer[:, :4], model(x))
    # free running from a state: nothing but the past drives it
    _, state = model(x, return_state=True)
    free = model(torch.zeros(2, 1, 3, dtype=torch.float64), steps=5, state=state)
    torch.testing.assert_close(free, longer[:, 4:])


def test_state_and_inputs_are_checked() -> None:
    model = load("elman.mach", n=3, m=5).Elman()
    with pytest.raises(ValueError, match=r"\[batch, time, 3\]"):
        model(torch.randn(2, 3))
    with pytest.raises(KeyError, match="only \\['h'\\]"):
        model(torch.randn(2, 4, 3), state={"y": torch.zeros(2, 1, 3)})
    with pytest.raises(ValueError, match=r"state\['h'\] must be \[2, 1, 5\]"):
        model(torch.randn(2, 4, 3), state={"h": torch.zeros(2, 5)})
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        model(torch.randn(2, 4, 3), steps=0)


def test_only_the_recurrence_runs_step_by_step() -> None:
    # the step loop (without the rewrite cells, forward would call torch.rnn_tanh)
    source = machc.compile_file(EXAMPLES / "elman.mach", rewrites=())
    loop = source[source.index("def forward") : source.index("def f(")]
    start = loop.index("def step(carry, inputs):")
    body = loop[start : loop.index("runtime.recur(step", start)]
    assert "self.read" not in body  # the readout runs once, on every step
    assert "F.linear(x" in loop[:start]  # the input projection too
    assert "F.linear(h_tm1, cell_w_h)" in body  # the step: only the recurrent part
    assert "# every step at once" in loop[loop.index("runtime.recur(step") :]


def test_gradients_flow_through_time() -> None:
    torch.manual_seed(4)
    model = load("time_machine.mach", depth=2, width=5).TimeMachine().double()
    x = torch.randn(2, 6, 4, dtype=torch.float64, requires_grad=True)
    y = model(x)
    y[:, -1].sum().backward()
    assert x.grad[:, 0].abs().sum() > 0  # the last output depends on the first input
    # and against the resolvent computed the naive way
    x0 = {"x": x.detach()}
    state = {k: torch.zeros_like(v) for k, v in model.resolvent(x0).items()}
    for _ in range(6 * 3 + 2):
        step = model.f(state)
        state = {k: step[k] + x0.get(k, 0) for k in state}
    torch.testing.assert_close(state["y"], model(x.detach()))


def test_the_library_gru_matches_torch_gru(tmp_path: Path) -> None:
    torch.manual_seed(6)
    (tmp_path / "gru.mach").write_text(
        "import std.recurrent\n"
        "machine Run over t {\n    input x : 5\n    output h : 7\n"
        "    gru : x -> h = GRU(n=5, m=7)\n}\n"
    )
    model = machc.load(tmp_path / "gru.mach").Run().double()
    reference = nn.GRU(5, 7, batch_first=True).double()
    m = 7
    r, z, n = slice(0, m), slice(m, 2 * m), slice(2 * m, 3 * m)
    w_ih, w_hh = reference.weight_ih_l0, reference.weight_hh_l0
    b_ih, b_hh = reference.bias_ih_l0, reference.bias_hh_l0
    gru = model.gru
    with torch.no_grad():
        gru.gates.weight.copy_(
            torch.cat([torch.cat([w_ih[r], w_ih[z]]), torch.cat([w_hh[r], w_hh[z]])], 1)
        )
        gru.gates.bias.copy_(torch.cat([b_ih[r] + b_hh[r], b_ih[z] + b_hh[z]]))
        gru.recall.weight.copy_(w_hh[n])
        gru.recall.bias.copy_(b_hh[n])
        gru.read.weight.copy_(w_ih[n])
        gru.read.bias.copy_(b_ih[n])
    x = torch.randn(3, 8, 5, dtype=torch.float64)
    expected, h_n = reference(x)
    h, state = model(x, return_state=True)
    torch.testing.assert_close(h, expected)
    torch.testing.assert_close(state["gru"]["h"][:, -1], h_n[0])
