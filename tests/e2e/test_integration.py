"""What tools of a training stack ask of a generated module, on every example.

Example inputs (``example_inputs()``), fresh
parameters (``reset_parameters()``, after building on the meta device and
``to_empty()``), dropout as modules, ``deepcopy`` and ``state_dict`` round trips.
"""

from __future__ import annotations

import copy
from pathlib import Path

import machc
import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.mach"))


def classes(path: Path, **options) -> list[type[nn.Module]]:
    """The classes of the file's own machines (not the instances of machines used as edges;
    a machine whose parameters have no defaults has only those)."""
    module = machc.load(path, **options)
    names = [
        line.split()[1].split("(")[0]
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.startswith("machine ")
    ]
    return [getattr(module, name) for name in names if hasattr(module, name)]


CLASSES = [pytest.param(cls, id=f"{p.name}:{cls.__name__}") for p in EXAMPLES for cls in classes(p)]


def _outputs(out) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("cls", CLASSES)
def test_example_inputs_fit_forward(cls) -> None:
    torch.manual_seed(0)
    model = cls().eval()
    over_time = hasattr(cls, "DELAYS")
    inputs = model.example_inputs(batch=3, steps=5) if over_time else model.example_inputs(3)
    assert len(inputs) == len(cls.INPUTS)
    ids = getattr(cls, "IDS", {})
    for name, tensor in zip(cls.INPUTS, inputs, strict=True):
        lead = (3, 5) if over_time else (3,)
        if name in ids:
            assert tensor.dtype == torch.long and tensor.shape == lead
            assert 0 <= int(tensor.min()) and int(tensor.max()) < ids[name]
        else:
            shape = cls.shapes()[name] if hasattr(cls, "shapes") else cls.SPACES[name]
            assert tensor.shape == (*lead, *shape) and tensor.dtype == torch.float32
    with torch.no_grad():
        outs = _outputs(model(*inputs))
    assert len(outs) == len(cls.OUTPUTS)
    # they follow the parameters' dtype
    floats = [t for t in model.double().example_inputs() if t.is_floating_point()]
    assert all(t.dtype == torch.float64 for t in floats)


@pytest.mark.parametrize("cls", CLASSES)
def test_meta_device_then_reset_parameters(cls) -> None:
    # Built without memory, materialised, initialised: as FSDP and large-model loaders do.
    torch.manual_seed(0)
    fresh = cls()
    with torch.device("meta"):
        model = cls()
    assert all(p.is_meta for p in model.parameters())
    model = model.to_empty(device="cpu")
    for p in model.parameters():
        p.data.fill_(1e30)  # to_empty leaves memory as it was: make that visible
    for b in model.buffers():
        if b.is_floating_point():
            b.fill_(float("nan"))
    model.reset_parameters()
    named = dict(fresh.named_parameters())
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all() and p.abs().max() < 1e3, name
        if p.numel() > 32:  # initialised alike: the same scale as a fresh module's
            want, got = named[name].std().item(), p.std().item()
            assert (want == got == 0) or 0.5 < got / want < 2, (name, want, got)
    for name, b in model.named_buffers():
        if b.is_floating_point():
            assert torch.isfinite(b).all(), name
    model.eval()
    with torch.no_grad():
        outs = _outputs(model(*model.example_inputs()))
    assert all(torch.isfinite(o).all() for o in outs if o.is_floating_point())


@pytest.mark.parametrize("cls", CLASSES)
def test_deepcopy_and_state_dict_round_trip(cls) -> None:
    torch.manual_seed(0)
    model = cls().eval()
    inputs = model.example_inputs()
    with torch.no_grad():
        want = _outputs(model(*inputs))
        twin = copy.deepcopy(model)
        assert type(twin) is type(model)
        for a, b in zip(_outputs(twin(*inputs)), want, strict=True):
            torch.testing.assert_close(a, b)
        other = cls().eval()
        other.load_state_dict(model.state_dict())
        for a, b in zip(_outputs(other(*inputs)), want, strict=True):
            torch.testing.assert_close(a, b)


def test_dropout_is_found_by_type() -> None:
    model = machc.load(ROOT / "examples" / "digits.mach").DigitNet()
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert dropouts and all(0 < d.p < 1 for d in dropouts)
    # MC-dropout: dropout modules alone in training mode make predictions vary
    model.eval()
    for d in dropouts:
        d.train()
    x = torch.randn(4, 64)
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    # and no parameter moved to make room for them: keys as the edges name them
    keys = set(model.state_dict())
    assert not any("dropout" in key for key in keys), sorted(keys)


def test_spectral_norm_layers_are_reset_as_spectral_norm_makes_them() -> None:
    module = machc.load(ROOT / "examples" / "deq.mach", params={"n": 8, "w": 16})
    with torch.device("meta"):
        model = module.DEQ()
    model = model.to_empty(device="cpu")
    model.reset_parameters()
    norm = model.cell.parametrizations.weight[0]
    weight = model.cell.parametrizations.weight.original
    # the power iteration's vectors are unit vectors that estimate the largest singular value
    assert torch.allclose(norm._u.norm(), torch.tensor(1.0))
    sigma = torch.linalg.matrix_norm(weight.detach(), ord=2)
    estimate = norm._u @ weight.detach() @ norm._v
    assert abs(estimate.item() - sigma.item()) < 0.05 * sigma.item()


# loops written out edge by edge: TorchScript indexes a ModuleDict by constants only;
# without regroup: TorchScript cannot compile runtime.regroup (it takes callables)
SCRIPTABLE = [
    pytest.param(cls, id=f"{p.name}:{cls.__name__}")
    for p in EXAMPLES
    if "runtime.Solve" not in machc.compile_file(p)
    for cls in classes(p, expand_loops=True, rewrites=("cells",))
    if not hasattr(cls, "DELAYS")  # over time: keyword-only steps=, state= (below)
    and not hasattr(cls, "shapes")  # sizes known at call time: runtime.bind_sizes
]


@pytest.mark.parametrize("cls", SCRIPTABLE)
def test_torchscript_of_machines_not_over_time(cls) -> None:
    # TorchScript is deprecated in PyTorch 2, but deployed models still use it. Machines over
    # time (keyword-only arguments), solved cycles (a local function), sizes known at call
    # time (runtime.bind_sizes takes keyword arguments) and loops kept as loops (a
    # ModuleDict indexed by the loop variable) do not script; --expand-loops writes loops out,
    # --no-regroup leaves out runtime.regroup.
    import warnings

    torch.manual_seed(0)
    model = cls().eval()
    inputs = model.example_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(model)
    with torch.no_grad():
        for a, b in zip(_outputs(scripted(*inputs)), _outputs(model(*inputs)), strict=True):
            torch.testing.assert_close(a, b)
