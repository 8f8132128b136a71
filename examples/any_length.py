"""One compiled LSTM for every sequence length, and one exported program too.

The LSTM of examples/lstm.mach, compiled once with torch.compile and exported once
with torch.export, then run at lengths it never saw when it was compiled or traced:
generated step loops are PyTorch's scan operator when traced (docs/integration.md).

    .venv/bin/python examples/any_length.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import machc
import torch
from torch._dynamo.utils import counters
from torch.export import Dim

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[5, 17, 60, 200])
    args = parser.parse_args()
    torch.manual_seed(0)
    model = machc.load(HERE / "lstm.mach").LSTM()

    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    for steps in args.lengths:
        (x,) = model.example_inputs(batch=4, steps=steps)
        start = time.perf_counter()
        y = compiled(x)
        y.square().mean().backward()
        seconds = time.perf_counter() - start
        with torch.no_grad():
            error = float((y - model(x)).abs().max())
        graphs = counters["stats"]["unique_graphs"]
        print(
            f"compiled, {steps:4d} steps: {seconds:6.2f} s (forward and backward), "
            f"max |compiled - eager| {error:.1e}, graphs compiled so far: {graphs}"
        )

    model.eval()
    batch, length = Dim("batch", min=1), Dim("time", min=1, max=100_000)
    program = torch.export.export(
        model, model.example_inputs(2, 8), dynamic_shapes=({0: batch, 1: length},)
    )
    for steps in args.lengths:
        (x,) = model.example_inputs(batch=3, steps=steps)
        with torch.no_grad():
            error = float((program.module()(x) - model(x)).abs().max())
        print(f"exported once, {steps:4d} steps: max |exported - eager| {error:.1e}")


if __name__ == "__main__":
    main()
