"""The main job: compile a .mach machine, import the generated module, and train it.

    python examples/train_digits.py [--epochs 15] [--depth 3] [--width 48]
    python examples/train_digits.py --model conv [--blocks 3] [--channels 16]
    python examples/train_digits.py --device cpu --out build/ --quiet

It compiles examples/digits.mach (DigitNet, a dense machine on the 64 pixels)
or, with --model conv, examples/digits_conv.mach (DigitConvNet, a
convolutional machine on the [1, 8, 8] image) into build/ (as `machc compile`
would), imports the module, and trains the machine with Adam on
scikit-learn's bundled digits data set (1797 8×8 images; nothing is
downloaded), a fifth held out. Batches come from a DataLoader, shuffled by a
generator seeded with --seed; a progress bar shows each epoch on a terminal
(none when the output is not one, or with --quiet). After each epoch it
prints the loss and accuracy on the held-out digits and the mean training
loss (the last number of the line, which goes down). At the end it saves a
checkpoint to OUT/digits.pt (OUT/digits_conv.pt with --model conv): the
state_dict of the model and of the optimizer, and the epoch; then it loads
that file into a freshly built model and evaluates it again, which gives the
same accuracy. The last line is the held-out accuracy (about 0.97 with the
defaults, in about ten seconds on one CPU core). --device defaults to cuda
when it is available, else cpu. Runs on the CPU are deterministic for a
given --seed and --threads.

examples/train_digits_ddp.py trains the same machines with
DistributedDataParallel (torchrun), examples/train_digits_lightning.py with
Lightning; both reuse the helpers here.
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
from torch.utils.data import DataLoader, RandomSampler, TensorDataset
from tqdm import tqdm

HERE = Path(__file__).resolve().parent


# --model: (source file, class, input shape)
MODELS = {
    "dense": ("digits.mach", "DigitNet", (64,)),
    "conv": ("digits_conv.mach", "DigitConvNet", (1, 8, 8)),
}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_arguments(parser: argparse.ArgumentParser, batch: int = 64) -> None:
    """The options the digits scripts share: the machine, its size, the training run."""
    parser.add_argument("--model", choices=sorted(MODELS), default="dense")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--depth", type=int, default=3, help="dense: blocks")
    parser.add_argument("--width", type=int, default=48, help="dense: features per block")
    parser.add_argument("--blocks", type=int, default=3, help="conv: blocks")
    parser.add_argument("--channels", type=int, default=16, help="conv: channels per block")
    parser.add_argument("--batch", type=int, default=batch, help=f"batch size (default {batch})")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate (3e-3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads on the CPU (default 1: the tensors are tiny, more "
        "threads add overhead, a lot on a busy CPU)",
    )
    parser.add_argument(
        "--out", type=Path, default=HERE.parent / "build", help="where files go (build/)"
    )


def machine(args: argparse.Namespace) -> tuple[str, str, tuple[int, ...], dict]:
    """The --model's source file, class name, input shape, and its parameters from args."""
    source, class_name, shape = MODELS[args.model]
    if args.model == "dense":
        params = {"depth": args.depth, "width": args.width}
    else:
        params = {"blocks": args.blocks, "c": args.channels}
    return source, class_name, shape, params


def compile_machine(out_dir: Path, name: str, params: dict, quiet: bool = False):
    """Compile ``examples/name`` into ``out_dir`` and import the generated module."""
    source = machc.compile_file(HERE / name, params=params)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name.replace(".mach", ".py")
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not quiet:
        print(f"compiled {HERE / name} -> {path}")
    return module


def digits(seed: int, shape: tuple[int, ...] = (64,)) -> tuple[TensorDataset, TensorDataset]:
    """(train, held-out) datasets: pixels scaled to 0..1 in ``shape``, labels; a fifth held out."""
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32).reshape(-1, *shape) / 16.0  # pixels 0..16
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    n_test = len(x) // 5
    return TensorDataset(x[n_test:], y[n_test:]), TensorDataset(x[:n_test], y[:n_test])


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (in eval mode) over ``loader``."""
    model.eval()
    loss, correct, count = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(dim=1) == y).sum().item()
        count += len(y)
    return loss / count, correct / count


def epoch_line(epoch: int, test_loss: float, test_accuracy: float, train_loss: float) -> str:
    # The training loss comes last: tests read the last number of each "epoch" line.
    return (
        f"epoch {epoch:2d}  held-out loss {test_loss:.4f}  acc {test_accuracy:.3f}"
        f"  train loss {train_loss:.4f}"
    )


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument(
        "--device", default=default_device(), help=f"cpu, cuda, cuda:1... ({default_device()})"
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar; print only the final accuracy"
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be positive")
    device = torch.device(args.device)
    say = (lambda *a, **k: None) if args.quiet else print

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    source, class_name, _, params = machine(args)
    module = compile_machine(args.out, source, params, quiet=args.quiet)
    model = getattr(module, class_name)().to(device)
    say(model)
    say(f"{sum(p.numel() for p in model.parameters())} parameters")

    train_set, test_set = digits(args.seed, MODELS[args.model][2])
    pin = device.type == "cuda"
    # A new order each epoch, drawn from a seeded generator: the same batches every run.
    shuffle = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(
        train_set,
        batch_size=args.batch,
        sampler=RandomSampler(train_set, generator=shuffle),
        pin_memory=pin,
    )
    test_loader = DataLoader(test_set, batch_size=512, pin_memory=pin)
    say(
        f"training on {device}: {len(train_set)} digits in {len(train_loader)} batches "
        f"of {args.batch} per epoch, {len(test_set)} held out"
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    test_accuracy = 0.0
    for epoch in range(1, args.epochs + 1):
        model.train()
        total = 0.0
        # disable=None: a bar on a terminal only, so that logs and pipes get plain lines.
        bar = tqdm(
            train_loader,
            desc=f"epoch {epoch}/{args.epochs}",
            unit="batch",
            leave=False,
            disable=True if args.quiet else None,
        )
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        bar.close()
        test_loss, test_accuracy = evaluate(model, test_loader, device)
        say(epoch_line(epoch, test_loss, test_accuracy, total / len(train_set)))

    # The checkpoint: enough to evaluate the model, or to resume training where it stopped.
    checkpoint = args.out / source.replace(".mach", ".pt")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": args.epochs,
            "machine": class_name,
            "params": params,
            "accuracy": test_accuracy,
        },
        checkpoint,
    )
    say(f"saved {checkpoint} (state_dict of the model and the optimizer, epoch {args.epochs})")

    # Reload it into a model built afresh (other initial weights) and evaluate that.
    saved = torch.load(checkpoint, map_location=device, weights_only=True)
    fresh = getattr(module, class_name)().to(device)
    fresh.load_state_dict(saved["model"])
    resumed = torch.optim.Adam(fresh.parameters(), lr=args.lr)
    resumed.load_state_dict(saved["optimizer"])  # training could go on from epoch saved["epoch"]
    _, reloaded = evaluate(fresh, test_loader, device)
    same = "the same" if reloaded == test_accuracy else f"NOT the same as {test_accuracy:.3f}"
    say(
        f"reloaded {checkpoint.name} (epoch {saved['epoch']}) into a fresh {class_name}: "
        f"held-out accuracy {reloaded:.3f} ({same})"
    )
    print(f"accuracy on {len(test_set)} held-out digits: {test_accuracy:.3f}")
    return test_accuracy


if __name__ == "__main__":
    main()
    sys.exit(0)
