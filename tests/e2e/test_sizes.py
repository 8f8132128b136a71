"""Sizes known at call time: one module for every image size, equal to a module compiled
for that size; the input, the smallest sizes and the relations checked on every call."""

from __future__ import annotations

from pathlib import Path

import machc
import pytest
import torch
from machc.runtime import SizeError

# A UNet-like machine: a strided stem, a pooled branch upsampled back and added to the
# stem's output (a relation: (H + 1) // 2 even), a machine used as an edge on a signal
# with its own symbol, and a global pool before the head.
SOURCE = """
machine Block(c: int) {
    input  x : [c, L, M]
    space  h : [c, L, M]
    output y
    f    : x -> h = conv(3, padding=1) | relu
    g    : h -> y = conv(3, padding=1)
    skip : x -> y = identity
}

machine Net(c: int = 4) {
    input  img : SHAPE
    space  a
    space  d
    space  u
    space  b
    output y : 10
    output map

    stem : img -> a = conv(3, stride=2, padding=1, out=c) | batchnorm | relu
    down : a -> d = maxpool(2)
    up   : d -> u = upsample(2) | conv(1)
    skip : a -> u = identity
    blk  : u -> b = Block(c=c)
    head : b -> y = global_avg_pool | linear
    out  : b -> map = conv(1, out=1)
}
"""


def _load(tmp_path: Path, shape: str):
    path = tmp_path / f"net_{len(list(tmp_path.iterdir()))}.mach"
    path.write_text(SOURCE.replace("SHAPE", shape), encoding="utf-8")
    return machc.load(path)


@pytest.fixture(scope="module")
def symbolic(tmp_path_factory):
    return _load(tmp_path_factory.mktemp("sizes"), "[3, H, W]")


def test_one_module_equals_modules_compiled_for_each_size(symbolic, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = symbolic.Net().double().eval()
    for h, w in ((16, 16), (24, 40), (4, 12)):
        fixed = _load(tmp_path, f"[3, {h}, {w}]").Net().double().eval()
        fixed.load_state_dict(model.state_dict())  # the same keys and shapes
        x = torch.randn(2, 3, h, w, dtype=torch.float64, requires_grad=True)
        y, m = model(x)
        y_ref, m_ref = fixed(x)
        torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
        torch.testing.assert_close(m, m_ref, rtol=0, atol=0)
        assert m.shape == (2, 1, (h + 1) // 2, (w + 1) // 2)
        (g,) = torch.autograd.grad((y.sum() + m.sum()), x)
        (g_ref,) = torch.autograd.grad((y_ref.sum() + m_ref.sum()), x)
        torch.testing.assert_close(g, g_ref, rtol=0, atol=0)
        state = model.resolvent({"img": x.detach()})
        torch.testing.assert_close(state["y"], y.detach())
        assert {k: tuple(v.shape[1:]) for k, v in state.items()} == model.shapes(h, w)


def test_spaces_show_the_symbols_and_shapes_gives_sizes(symbolic) -> None:
    net = symbolic.Net
    assert net.SPACES["img"] == (3, "H", "W")
    assert net.SPACES["a"] == (4, "(H + 1) // 2", "(W + 1) // 2")
    assert net.SPACES["d"] == (4, "(H + 1) // 4", "(W + 1) // 4")
    assert net.SPACES["y"] == (10,)
    assert net.shapes(9, 5)["d"] == (4, 2, 1)  # a staticmethod: no instance needed
    assert symbolic.Block_c4.SPACES["x"] == (4, "L", "M")
    (example,) = net().example_inputs()
    assert example.shape == (2, 3, 32, 32)  # (32 + 1) // 2 = 16 is even: the relation holds


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (
            (2, 4, 16, 16),
            r"'img' must be a tensor \[batch, 3, H, W\], got shape \[2, 4, 16, 16\] "
            r"\(axis 1 is 4, not 3\)",
        ),
        (
            (2, 3, 16),
            r"'img' must be a tensor \[batch, 3, H, W\], got shape \[2, 3, 16\] "
            r"\(3 axes, not 4\)",
        ),
        ((2, 3, 2, 16), r"H = 2 \(from 'img' axis 2\) is too small: with H < 3"),
        (
            (2, 3, 10, 16),
            r"Net: edge 'up' \(net_0.mach:22\) needs 2 \* \(\(H \+ 1\) // 4\) == "
            r"\(H \+ 1\) // 2 \(H is axis 2 of 'img'\), which does not hold for H = 10",
        ),
    ],
)
def test_inputs_that_do_not_fit_are_refused(symbolic, shape, message) -> None:
    model = symbolic.Net()
    with pytest.raises(SizeError, match=message):
        model(torch.randn(*shape))


def test_f_resolvent_and_adjoint_bind_sizes_from_the_state(symbolic) -> None:
    model = symbolic.Net().double()
    x = torch.randn(1, 3, 12, 8, dtype=torch.float64)
    state = model.resolvent({"img": x})
    out = model.f(state)
    assert out["a"].shape == (1, 4, 6, 4)
    bar = model.adjoint(state, {"y": torch.ones_like(state["y"])})
    assert bar["img"].shape == x.shape
    # a space whose axes are not the symbols themselves cannot bind them
    with pytest.raises(
        SizeError,
        match=r"the sizes H, W are not known: give the inputs that "
        r"have them \(img \[3, H, W\]\)",
    ):
        model.f({"a": state["a"]})


def test_one_symbol_bound_twice_must_agree(tmp_path: Path) -> None:
    path = tmp_path / "two.mach"
    path.write_text(
        "machine Two {\n    input a : [2, L]\n    input b : [3, L]\n    output y\n"
        "    f : a × b -> y = conv(1, out=4)\n}\n",
        encoding="utf-8",
    )
    model = machc.load(path).Two()
    assert model(torch.randn(2, 2, 7), torch.randn(2, 3, 7)).shape == (2, 4, 7)
    with pytest.raises(SizeError, match=r"L is 7 by 'a' axis 2 but 5 by 'b' axis 2"):
        model(torch.randn(2, 2, 7), torch.randn(2, 3, 5))


def test_info_counts_macs_at_the_example_sizes(tmp_path: Path) -> None:
    path = tmp_path / "net.mach"
    path.write_text(SOURCE.replace("SHAPE", "[3, H, W]"), encoding="utf-8")
    from machc.cli import main

    report = tmp_path / "info.txt"
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["info", str(path)]) == 0
    report.write_text(out.getvalue())
    text = out.getvalue()
    assert "[4, (H + 1) // 2, (W + 1) // 2]" in text
    assert "sizes known at call time: MACs are counted at H = 32, W = 32" in text


def test_export_with_dynamic_image_sizes(symbolic) -> None:
    model = symbolic.Net().eval()
    x = torch.randn(2, 3, 32, 32)
    h, w = torch.export.Dim("h", min=1, max=128), torch.export.Dim("w", min=1, max=128)
    program = torch.export.export(model, (x,), dynamic_shapes={"img": {2: 4 * h, 3: 4 * w}})
    for size in ((28, 28), (64, 16)):
        z = torch.randn(2, 3, *size)
        for got, want in zip(program.module()(z), model(z), strict=True):
            torch.testing.assert_close(got, want)
