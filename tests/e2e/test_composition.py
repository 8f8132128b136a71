"""Composition: machines as edges are exact, shared weights are held once, imports resolve."""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
from pathlib import Path

import machc
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

# net.mach with ResBlock's spaces and edges written out by hand in the parent.
INLINED = """
machine NetInline(w: int = 32) {
    input  x  : 8
    space  a  : w
    space  h1 : w
    space  b  : w
    space  h2 : w
    space  c  : w
    space  h3 : w
    space  c2 : w
    output y  : 2

    stem  : x -> a = linear | relu
    f1    : a -> h1 = linear | relu
    g1    : h1 -> b = linear
    skip1 : a -> b = identity
    f2    : b -> h2 = linear | relu
    g2    : h2 -> c = linear
    skip2 : b -> c = identity
    f3    : c -> h3 = linear | relu
    g3    : h3 -> c2 = linear
    skip3 : c -> c2 = identity
    head  : c2 -> y = linear
}
"""


def test_a_machine_as_an_edge_equals_its_edges_inlined(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = machc.load(EXAMPLES / "net.mach", params={"w": 6}).Net().double()
    (tmp_path / "inline.mach").write_text(INLINED)
    inline = machc.load(tmp_path / "inline.mach", params={"w": 6}).NetInline().double()
    with torch.no_grad():
        for p in inline.parameters():
            p.copy_(torch.randn_like(p))
        copies = {"stem": "stem", "head": "head", "blk1.f_": "f1", "blk1.g": "g1"}
        copies |= {"blk2.f_": "f2", "blk2.g": "g2"}
        for mine, theirs in copies.items():
            for kind in ("weight", "bias"):
                net.get_parameter(f"{mine}.{kind}").copy_(inline.get_parameter(f"{theirs}.{kind}"))
        # tied = shared(blk2): the inlined third block uses blk2's weights too
        for mine, theirs in (("f2", "f3"), ("g2", "g3")):
            for kind in ("weight", "bias"):
                inline.get_parameter(f"{theirs}.{kind}").copy_(
                    inline.get_parameter(f"{mine}.{kind}")
                )
    x = torch.randn(5, 8, dtype=torch.float64)
    torch.testing.assert_close(net(x), inline(x))
    state = net.resolvent({"x": x})
    inline_state = inline.resolvent({"x": x})
    for space in ("a", "b", "c", "c2", "y"):
        torch.testing.assert_close(state[space], inline_state[space])
    # the machine equation holds for the composed machine
    step = net.f(state)
    for space, value in state.items():
        torch.testing.assert_close(value, step[space] + (x if space == "x" else 0))


def test_shared_weights_are_held_once_and_get_both_gradients() -> None:
    net = machc.load(EXAMPLES / "net.mach").Net()
    keys = list(net.state_dict())
    assert not any(key.startswith("tied") for key in keys)
    assert sum(key.startswith("blk2.") for key in keys) == 4
    w = 32
    expected = (8 * w + w) + 2 * 2 * (w * w + w) + (w * 2 + 2)
    assert sum(p.numel() for p in net.parameters()) == expected
    x = torch.randn(3, 8)
    net(x).sum().backward()
    # The same computation with a separate copy of blk2 for the tied use: the shared
    # tensor's gradient is the sum of the two copies' gradients.
    copy = copy_module(net.blk2)
    c = net.blk2(net.blk1(torch.relu(net.stem(x))))
    grads = torch.autograd.grad(net.head(copy(c)).sum(), [net.blk2.g.weight, copy.g.weight])
    torch.testing.assert_close(net.blk2.g.weight.grad, grads[0] + grads[1])
    assert not torch.allclose(grads[0], grads[1])


def copy_module(module):
    return copy.deepcopy(module)


def test_one_class_per_machine_and_parameters() -> None:
    source = """
machine Block(w: int = 4) {
    input  x : w
    output y : w
    e : x -> y = linear | tanh
}

machine Two {
    input  x : 4
    space  a : 4
    space  b : 8
    output y : 8
    small : x -> a = Block
    grow  : a -> b = linear
    big   : b -> y = Block(w=8)
    again : a -> y = linear
}
"""
    code = machc.compile_source(source, filename="two.mach")
    assert "class Block(nn.Module):" in code and "class Block_w8(nn.Module):" in code
    assert code.count("class Block") == 2
    assert "self.small = Block()" in code and "self.big = Block_w8()" in code


def test_a_standalone_compile_runs_without_the_mach_files(tmp_path: Path) -> None:
    for name in ("blocks.mach", "net.mach"):
        (tmp_path / name).write_text((EXAMPLES / name).read_text())
    out = tmp_path / "out" / "net.py"
    out.parent.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "machc", "compile", str(tmp_path / "net.mach"), "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    for name in ("blocks.mach", "net.mach"):
        (tmp_path / name).unlink()
    spec = importlib.util.spec_from_file_location("standalone_net", out)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.Net()(torch.randn(2, 8)).shape == (2, 2)


def test_imports_through_the_search_path(tmp_path: Path) -> None:
    lib = tmp_path / "lib" / "mylib"
    lib.mkdir(parents=True)
    (lib / "layers.mach").write_text((EXAMPLES / "blocks.mach").read_text())
    (tmp_path / "quoted.mach").write_text(
        'import "layers.mach"\n'
        "machine Q {\n    input x : 4\n    output y : 4\n    b : x -> y = ResBlock(w=4)\n}\n"
    )
    (tmp_path / "dotted.mach").write_text(
        "import mylib.layers\n"
        "machine D {\n    input x : 4\n    output y : 4\n    b : x -> y = ResBlock(w=4)\n}\n"
    )
    search = [tmp_path / "lib" / "mylib"]
    assert machc.load(tmp_path / "quoted.mach", search_path=search).Q()(torch.randn(1, 4)).shape
    module = machc.load(tmp_path / "dotted.mach", search_path=[tmp_path / "lib"])
    assert module.D()(torch.randn(1, 4)).shape == (1, 4)
    with pytest.raises(machc.CompileError, match="cannot find"):
        machc.load(tmp_path / "quoted.mach")
    cli = [sys.executable, "-m", "machc", "check", "-q", str(tmp_path / "quoted.mach")]
    assert subprocess.run(cli, capture_output=True).returncode == 1
    found = subprocess.run([*cli, "-I", str(search[0])], capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    missing = subprocess.run(
        [*cli, "-I", str(tmp_path / "nowhere")], capture_output=True, text=True
    )
    assert missing.returncode == 2 and "no such directory" in missing.stderr


BLOCK_USED_TWICE = """
machine DenseBlock(c: int, k: int = 2) {
    input  x : c
    space  h
    output y : c

    f    : x -> h = linear(out=k * c) | relu
    g    : h -> y = linear
    skip : x -> y = identity
}

machine Net {
    input  x : 16
    space  a
    space  b
    output y

    b1 : x -> a = DenseBlock(c=16)
    p  : a -> b = linear(out=8)
    b2 : b -> y = DenseBlock(c=8, k=3)
}
"""


def test_a_block_without_defaults_runs_with_the_values_of_each_use(tmp_path: Path) -> None:
    path = tmp_path / "blocks.mach"
    path.write_text(BLOCK_USED_TWICE)
    module = machc.load(path)
    assert not hasattr(module, "DenseBlock")
    net = module.Net().double().eval()
    assert net.SPACES == {"x": (16,), "a": (16,), "b": (8,), "y": (8,)}
    assert module.DenseBlock_c8_k3.SPACES == {"x": (8,), "h": (24,), "y": (8,)}
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes == {
        "b1.f_.weight": (32, 16),
        "b1.f_.bias": (32,),
        "b1.g.weight": (16, 32),
        "b1.g.bias": (16,),
        "p.weight": (8, 16),
        "p.bias": (8,),
        "b2.f_.weight": (24, 8),
        "b2.f_.bias": (24,),
        "b2.g.weight": (8, 24),
        "b2.g.bias": (8,),
    }
    x = torch.randn(3, 16, dtype=torch.float64)
    a = net.b1(x)
    expected = net.b2(net.p(a))
    torch.testing.assert_close(net(x), expected)
    torch.testing.assert_close(a, x + net.b1.g(torch.relu(net.b1.f_(x))))


def test_shapes_left_out_build_the_same_module(tmp_path: Path) -> None:
    """unet.mach leaves its hidden shapes out; declared by hand they give the same model."""
    text = (EXAMPLES / "unet.mach").read_text()
    declared = text
    for name, shape in {
        "e1": "[16, 32, 32]",
        "e2": "[32, 16, 16]",
        "mid": "[32, 16, 16]",
        "up": "[16, 32, 32]",
    }.items():
        declared = declared.replace(f"    space  {name}\n", f"    space  {name} : {shape}\n")
    assert declared != text
    (tmp_path / "declared.mach").write_text(declared)
    torch.manual_seed(0)
    left_out = machc.load(EXAMPLES / "unet.mach").TinyUNet().eval()
    by_hand = machc.load(tmp_path / "declared.mach").TinyUNet().eval()
    by_hand.load_state_dict(left_out.state_dict())
    assert left_out.SPACES == by_hand.SPACES
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(left_out(x), by_hand(x))
