"""Every example compiles, imports, runs, trains; generated modules behave like nn.Modules."""

from __future__ import annotations

import linecache
import os
import subprocess
import sys
from pathlib import Path

import machc
import pytest
import torch
from machc.names import MODULE_ATTRIBUTES
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.mach"))
# ImageNet-sized networks: 40 steps at batch 64 and 224×224 would take tens of minutes on a
# CPU. tests/e2e/test_cnn_references.py checks their outputs and gradients against
# hand-written torch.nn references instead.
TOO_BIG_TO_TRAIN = {"mobilenet_v2.mach", "resnet50.mach", "squeezenet.mach"}


def machines(path: Path):
    module = machc.load(path)
    names = [
        line.split()[1].split("(")[0]
        for line in path.read_text().splitlines()
        if line.startswith("machine ")
    ]
    return [getattr(module, name) for name in names if hasattr(module, name)]


def lead(cls, batch: int) -> tuple[int, ...]:
    """The leading axes of a tensor: [batch] or, for a machine over time, [batch, time]."""
    return (batch, 6) if hasattr(cls, "DELAYS") else (batch,)


def shapes(cls) -> dict[str, tuple[int, ...]]:
    """Every space's shape: SPACES, or at the example sizes for sizes known at call time."""
    return cls.shapes() if hasattr(cls, "shapes") else cls.SPACES


def example_input(cls, name: str, batch: int) -> torch.Tensor:
    """A random input: token ids for an ids space, normal values otherwise."""
    ids = getattr(cls, "IDS", {})
    if name in ids:
        return torch.randint(0, ids[name], lead(cls, batch))
    return torch.randn(*lead(cls, batch), *shapes(cls)[name])


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_forward_is_the_resolvent_on_inputs_and_outputs(path: Path) -> None:
    torch.manual_seed(0)
    for cls in machines(path):
        model = cls().eval()
        inputs = [example_input(cls, name, 5) for name in cls.INPUTS]
        result = model(*inputs)
        outputs = (result,) if len(cls.OUTPUTS) == 1 else tuple(result)
        assert len(outputs) == len(cls.OUTPUTS)
        state = model.resolvent(dict(zip(cls.INPUTS, inputs, strict=True)))
        for name, tensor in zip(cls.OUTPUTS, outputs, strict=True):
            assert tensor.shape == (*lead(cls, 5), *shapes(cls)[name])
            torch.testing.assert_close(tensor, state[name])
        if len(cls.OUTPUTS) > 1:
            assert result._fields == tuple(cls.OUTPUTS)  # names are plain identifiers here


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_a_few_training_steps_lower_the_loss(path: Path) -> None:
    if path.name in TOO_BIG_TO_TRAIN:
        pytest.skip("ImageNet-sized: its gradients are checked in test_cnn_references.py")
    torch.manual_seed(1)
    for cls in machines(path):
        model, teacher = cls(), cls().eval()  # a target the architecture can represent
        inputs = [example_input(cls, name, 64) for name in cls.INPUTS]
        with torch.no_grad():
            result = teacher(*inputs)
        targets = (result,) if len(cls.OUTPUTS) == 1 else tuple(result)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(40):
            optimizer.zero_grad()
            result = model(*inputs)
            outputs = (result,) if len(cls.OUTPUTS) == 1 else tuple(result)
            loss = sum(nn.functional.mse_loss(o, t) for o, t in zip(outputs, targets, strict=True))
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert losses[-1] < 0.5 * losses[0], losses


def test_state_dict_keys_live_under_edge_names() -> None:
    model = machc.load(ROOT / "examples" / "residual.mach").Residual()
    # The edge `f` would shadow the method f(state); its attribute is `f_`.
    assert list(model.state_dict()) == [
        "f_.weight",
        "f_.bias",
        "g.weight",
        "g.bias",
        "proj.weight",
        "out.weight",
        "out.bias",
    ]
    dense = machc.load(ROOT / "examples" / "dense.mach", params={"depth": 2}).DenseMachine()
    assert list(dense.state_dict()) == [
        "g_1.weight",
        "g_1.bias",
        "g_2.weight",
        "g_2.bias",
        "head.weight",
        "head.bias",
    ]
    assert dense.g_2.in_features == 16 + 32


def test_one_block_machine_takes_a_branch_per_use() -> None:
    # resblocks.mach: one ResBlock whose `if` gives a projection shortcut only to the blocks
    # that change the channels or the resolution.
    net = machc.load(ROOT / "examples" / "resblocks.mach").SmallResNet().eval()
    blocks = {
        name: sorted({k.split(".")[1] for k in net.state_dict() if k.startswith(name)})
        for name in ("block1", "block2", "block3")
    }
    assert blocks == {"block1": ["body"], "block2": ["body", "proj"], "block3": ["body", "proj"]}

    def body(block, x):
        b = block.body
        return b[3](b[2](torch.relu(b[1](b[0](x)))))

    x = torch.randn(2, 8, 32, 32)
    torch.testing.assert_close(net.block1(x), torch.relu(body(net.block1, x) + x))
    shortcut = net.block2.proj[1](net.block2.proj[0](x))
    torch.testing.assert_close(net.block2(x), torch.relu(body(net.block2, x) + shortcut))
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_several_parametrised_ops_in_one_edge() -> None:
    model = machc.load(ROOT / "examples" / "digits.mach", params={"depth": 1}).DigitNet()
    assert isinstance(model.block_1, nn.ModuleList)
    assert [type(m) for m in model.block_1] == [nn.Linear, nn.LayerNorm]
    model.eval()
    x = torch.randn(3, 64)
    expected = model.head(nn.functional.gelu(model.block_1[1](model.block_1[0](x))))
    torch.testing.assert_close(model(x), expected)


def test_reserved_attribute_names_cover_nn_module() -> None:
    public = {name for name in dir(nn.Module) if not name.startswith("_")}
    assert public <= MODULE_ATTRIBUTES, sorted(public - MODULE_ATTRIBUTES)


def test_loaded_source_shows_in_tracebacks() -> None:
    module = machc.load(ROOT / "examples" / "autoencoder.mach")
    model = module.AutoEncoder()
    with pytest.raises(RuntimeError) as info:
        model(torch.randn(2, 5))  # wrong width: the first linear fails
    frame = next(f for f in info.traceback if f.path and str(f.path).startswith("<machc:"))
    line = linecache.getline(str(frame.path), frame.lineno + 1)
    assert "self.enc1(x)" in line


def test_dropout_follows_train_and_eval() -> None:
    text = """machine D {
        input x : 200
        output y : 200
        e : x -> y = dropout(0.5)
    }"""
    path = ROOT / "build" / "test_dropout.mach"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    model = machc.load(path).D()
    x = torch.ones(4, 200)
    assert torch.equal(model.eval()(x), x)
    zeros = (model.train()(x) == 0).float().mean().item()
    assert 0.3 < zeros < 0.7


@pytest.mark.parametrize(
    ("model", "epochs", "generated", "least_accuracy"),
    [("dense", 4, "digits.py", 0.85), ("conv", 5, "digits_conv.py", 0.5)],
)
def test_main_job_trains_digits(
    tmp_path: Path, capsys, model, epochs, generated, least_accuracy
) -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import train_digits
    finally:
        sys.path.pop(0)
    args = ["--model", model, "--epochs", str(epochs), "--out", str(tmp_path)]
    if model == "conv":
        args += ["--blocks", "2", "--channels", "8"]
    accuracy = train_digits.main(args)
    out = capsys.readouterr().out
    losses = [float(line.split()[-1]) for line in out.splitlines() if line.startswith("epoch")]
    assert len(losses) == epochs
    assert losses[-1] < losses[0] / 2, losses
    assert accuracy > least_accuracy  # chance is 0.1
    assert (tmp_path / generated).exists()


def test_compilation_is_deterministic_across_hash_seeds() -> None:
    code = (
        "import sys, machc\n"
        f"for p in {[str(p) for p in EXAMPLES]!r}:\n"
        "    sys.stdout.write(machc.compile_file(p))\n"
    )
    outputs = set()
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, check=True)
        outputs.add(run.stdout)
    assert len(outputs) == 1


def test_loaded_models_pickle_within_the_process() -> None:
    import io

    model = machc.load(ROOT / "examples" / "residual.mach").Residual()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    copy = torch.load(buffer, weights_only=False)
    x = torch.randn(2, 16)
    torch.testing.assert_close(copy(x), model(x))


def test_loaded_models_unpickle_in_another_process(tmp_path: Path) -> None:
    # torch.save of a whole model from machc.load carries the generated code: a fresh
    # process rebuilds the module (machc installed, nothing compiled) and gets the model.
    model = machc.load(ROOT / "examples" / "resnet.mach").ResNet().eval()
    x = torch.randn(2, *model.SPACES["img"])
    torch.save({"model": model, "x": x, "y": model(x)}, tmp_path / "whole.pt")
    code = (
        "import sys, torch\n"
        f"saved = torch.load({str(tmp_path / 'whole.pt')!r}, weights_only=False)\n"
        "torch.testing.assert_close(saved['model'](saved['x']), saved['y'])\n"
        "assert 'machc.driver' not in sys.modules, 'unpickling compiled something'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=tmp_path)


def test_loading_twice_gives_one_module() -> None:
    first = machc.load(ROOT / "examples" / "residual.mach")
    assert machc.load(ROOT / "examples" / "residual.mach") is first
    other = machc.load(ROOT / "examples" / "dense.mach", params={"depth": 2})
    again = machc.load(ROOT / "examples" / "dense.mach", params={"depth": 3})
    assert other is not again and other.__name__ != again.__name__
