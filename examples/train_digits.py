"""The main job: compile a .mach machine, import the generated module, and train it.

    python examples/train_digits.py [--epochs 15] [--depth 3] [--width 48]
    python examples/train_digits.py --model conv [--blocks 3] [--channels 16]

It compiles examples/digits.mach (DigitNet, a dense machine on the 64 pixels)
or, with --model conv, examples/digits_conv.mach (DigitConvNet, a
convolutional machine on the [1, 8, 8] image) into build/ (as `machc compile`
would), imports the module, and trains the machine on scikit-learn's bundled
digits data set (1797 8×8 images; nothing is downloaded). The loss printed
each epoch goes down; the accuracy on held-out digits is printed at the end.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import machc
import torch
from sklearn.datasets import load_digits
from torch import nn

HERE = Path(__file__).resolve().parent


# --model: (source file, class, input shape)
MODELS = {
    "dense": ("digits.mach", "DigitNet", (64,)),
    "conv": ("digits_conv.mach", "DigitConvNet", (1, 8, 8)),
}


def compile_machine(out_dir: Path, name: str, params: dict):
    """Compile ``examples/name`` into ``out_dir`` and import the generated module."""
    source = machc.compile_file(HERE / name, params=params)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name.replace(".mach", ".py")
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    print(f"compiled {HERE / name} -> {path}")
    return module


def digits(seed: int):
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0  # pixel values 0..16
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    n_test = len(x) // 5
    return (x[n_test:], y[n_test:]), (x[:n_test], y[:n_test])


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="dense")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--depth", type=int, default=3, help="dense: blocks")
    parser.add_argument("--width", type=int, default=48, help="dense: features per block")
    parser.add_argument("--blocks", type=int, default=3, help="conv: blocks")
    parser.add_argument("--channels", type=int, default=16, help="conv: channels per block")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE.parent / "build")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    source, class_name, shape = MODELS[args.model]
    if args.model == "dense":
        params = {"depth": args.depth, "width": args.width}
    else:
        params = {"blocks": args.blocks, "c": args.channels}
    module = compile_machine(args.out, source, params)
    model = getattr(module, class_name)()
    print(model)
    print(f"{sum(p.numel() for p in model.parameters())} parameters")

    (x_train, y_train), (x_test, y_test) = digits(args.seed)
    x_train, x_test = x_train.reshape(-1, *shape), x_test.reshape(-1, *shape)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    shuffle = torch.Generator().manual_seed(args.seed)
    for epoch in range(1, args.epochs + 1):
        model.train()
        total = 0.0
        for batch in torch.randperm(len(x_train), generator=shuffle).split(args.batch):
            optimizer.zero_grad()
            loss = loss_fn(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        print(f"epoch {epoch:2d}  loss {total / len(x_train):.4f}")
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(dim=1) == y_test).float().mean().item()
    print(f"accuracy on {len(x_test)} held-out digits: {accuracy:.3f}")
    return accuracy


if __name__ == "__main__":
    main()
    sys.exit(0)
