"""``runtime.recur``: a step loop as PyTorch's ``scan``, the form ``torch.compile`` and
``torch.export`` trace, computes what the Python loop of eager mode computes.

The random machines of the differential test (whose Python loops that test holds
to the machine's definition) run both ways: ``runtime.recur`` as in eager mode, and
forced onto its ``scan`` path, which also runs (slowly) in eager mode. ``forward``
with ``lengths=`` and ``state=``, the resolvent, and all gradients must agree.
Compiled and exported examples are in ``test_compile_export.py``.
"""

from __future__ import annotations

import warnings
from unittest import mock

import machc
import pytest
import torch
from hypothesis import HealthCheck, event, given, note, settings
from machc import runtime
from machc.runtime import loading, loops
from test_differential import sequence_cases, time_cases

# (Dynamo, which traces scan's loop body, warns of its own deprecated calls)
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)


def load_classes(source: str, filename: str) -> dict:
    """The generated module, imported as ``machc.load`` does: Dynamo, which traces a loop
    body even in eager mode, needs to find it in ``sys.modules``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", machc.MachcWarning)
        code = machc.compile_source(source, filename)
    event(f"{code.count('runtime.recur(')} loops")
    name = loading.module_name("random", code)
    return vars(loading.module_from_source(name, filename, code))


def as_scan():
    """``runtime.recur`` as if torch.compile were tracing: every loop is a ``scan``."""
    return mock.patch.object(loops, "_tracing", lambda: True)


SETTINGS = settings(
    max_examples=10,
    deadline=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)


_scan = loops._scan


def _fresh_scan(*args, **kwargs):
    """scan in eager mode compiles its loop body through one Dynamo cache for every loop:
    start afresh each time, or the shapes of the loop before make this one's dynamic
    (which torch.compile of a whole model, tracing each scan in place, never does)."""
    torch._dynamo.reset()
    return _scan(*args, **kwargs)


def run_both_ways(model, spec, seed: int, steps: int) -> None:
    """forward (with lengths=, and state= / return_state= where it can resume) and the
    resolvent, outputs and gradients: the scan path equals the Python loop."""
    g = torch.Generator().manual_seed(seed)
    inputs = [
        torch.randint(0, spec.ids[n], (2, steps), generator=g)
        if n in spec.ids
        else torch.randn(2, steps, *model.SPACES[n], generator=g, dtype=torch.float64)
        for n in model.INPUTS
    ]
    kwargs = {"lengths": torch.tensor([steps, max(1, steps - 1)])}
    # (a machine with windows or positions takes lengths= or state=, not both)
    chunks = not getattr(model, "WINDOWS", None) and not any(e.ctx for e in spec.edges)
    if model.CAUSAL and chunks:
        kwargs["return_state"] = True
        kwargs["state"] = {
            n: torch.randn(2, k, *model.SPACES[n], generator=g, dtype=torch.float64)
            for n, k in model.DELAYS.items()
        }
    x0 = {n: x for n, x in zip(model.INPUTS, inputs, strict=True)}
    results = []
    for scan in (False, True):
        model.zero_grad(set_to_none=True)
        given = [x.clone().requires_grad_(x.is_floating_point()) for x in inputs]
        with (
            mock.patch.object(loops, "_tracing", lambda scan=scan: scan),
            mock.patch.object(loops, "_scan", _fresh_scan),
        ):
            out = torch.utils._pytree.tree_leaves(model(*given, **kwargs))
            out += torch.utils._pytree.tree_leaves(model.resolvent(x0))
        w = torch.Generator().manual_seed(1)
        floats = [o for o in out if o.is_floating_point()]  # (not the ids)
        loss = sum((o * torch.randn(o.shape, generator=w, dtype=o.dtype)).sum() for o in floats)
        grads = []
        if loss.requires_grad:
            loss.backward()
            grads = [p.grad for p in model.parameters()] + [x.grad for x in given]
        results.append((out, grads))
    (want, want_grads), (got, got_grads) = results
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    for a, b in zip(got_grads, want_grads, strict=True):
        if b is None:
            assert a is None or not a.any()
        else:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@SETTINGS
@given(case=time_cases())
def test_random_recurrences_run_the_same_as_scan(case) -> None:
    spec, _, seed, steps = case
    source = spec.render()
    note(source)
    model = load_classes(source, "random_time.mach")[spec.name]().double().eval()
    run_both_ways(model, spec, seed, steps)


@SETTINGS
@given(case=sequence_cases())
def test_random_sequence_machines_run_the_same_as_scan(case) -> None:
    # loops forward and backward in time, lengths= masking a backward loop, windows, ids
    spec, _, seed, steps = case
    source = spec.render()
    note(source)
    model = load_classes(source, "random_sequence.mach")[spec.name]().double().eval()
    run_both_ways(model, spec, seed, steps)


def _elman_step(w):
    def step(carry, inputs):
        (h,) = carry
        x_t, valid_t = inputs
        h = runtime.keep_valid(torch.tanh(x_t + h @ w), valid_t)
        return (h,), (h, 2 * h)

    return step


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("scan", [False, True])
def test_recur_runs_every_step_in_order_and_folds_what_it_keeps(scan, reverse) -> None:
    torch.manual_seed(0)
    batch, steps = 3, 5
    w = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(batch * steps, 4, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 4])
    valid = runtime.valid_steps(lengths, batch, steps)
    init = (torch.zeros(batch, 4, dtype=torch.float64),)
    with mock.patch.object(loops, "_tracing", lambda: scan):
        carry, (h, h2) = runtime.recur(
            _elman_step(w), init, (x, valid), batch, steps, reverse=reverse
        )
    # by hand: a Python loop over [batch, steps, 4]
    seq, mask = x.unflatten(0, (batch, steps)), valid.unflatten(0, (batch, steps))
    state, outs = init[0], [None] * steps
    for t in range(steps - 1, -1, -1) if reverse else range(steps):
        state = torch.where(mask[:, t, None], torch.tanh(seq[:, t] + state @ w), 0.0)
        outs[t] = state
    want = torch.stack(outs, 1).flatten(0, 1)
    torch.testing.assert_close(h, want)
    torch.testing.assert_close(h2, 2 * want)
    torch.testing.assert_close(carry[0], state)
    (got,) = torch.autograd.grad(h.sum() + carry[0].sum(), w)
    (expected,) = torch.autograd.grad(want.sum() + state.sum(), w)
    torch.testing.assert_close(got, expected)


def test_a_step_gets_none_for_an_absent_sequence() -> None:
    seen = []

    def step(carry, inputs):
        seen.append(inputs[1])
        return carry, ()

    carry, ys = runtime.recur(step, (torch.zeros(2, 1),), (torch.zeros(6, 1), None), 2, 3)
    assert seen == [None, None, None] and ys == ()
