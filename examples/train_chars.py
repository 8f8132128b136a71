"""Train the GPT machine as a character model on this repository's own documentation.

    python examples/train_chars.py [--steps 1500] [--batch 32] [--ctx 64] [--d 64] [--layers 2]
    python examples/train_chars.py --sample-length 400 --temperature 0.8 --prompt "space "

It compiles examples/gpt.mach (GPT: token and position embeddings, pre-norm
blocks of causal self-attention) with machc.load and trains it to predict the
next byte of the text of docs/*.md, read from the repository at run time
(nothing is downloaded). Bytes are the ids (vocab 256, so any UTF-8 text
works). A batch is --batch random windows of --ctx bytes; the loss is the
cross-entropy of every window position's prediction of the byte after it;
the optimizer is AdamW, its learning rate decaying along a half cosine to a
tenth. The mean loss is printed every --log-every steps and goes down (from
about ln 256 = 5.5 at the start to about 1.5 with the defaults, which take
under a minute on one CPU core); the last lines compare the first step's
loss with the last steps', give the loss on held-out text (the last tenth of
the documents, never trained on), and print a sample.

The sample is generated one byte at a time with the machine's state: the
prompt runs in one call with return_state=True, then each sampled byte is fed
alone with state= (the keys and values of every earlier step, a KV cache, and
the step count, so positions continue). When the steps reach --ctx (the
positions it was trained on), generation starts afresh from the last half of
the window. Runs are deterministic for a given --seed and --threads.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import machc
import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:
    from tqdm import tqdm
except ImportError:  # the progress bar is optional: pip install tqdm (in the examples extra)
    tqdm = None

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs"
GPT_CTX = 256  # the positions GPT embeds (gpt.mach's default ctx): --ctx may not exceed it
HELD_OUT = 0.1  # the last tenth of the text is for the held-out loss


def corpus() -> bytes:
    """The documentation, docs/*.md in name order, as one byte string."""
    paths = sorted(DOCS.glob("*.md"))
    if not paths:
        raise SystemExit(f"no documentation found under {DOCS}")
    return b"\n\n".join(path.read_bytes() for path in paths)


def windows(
    data: Tensor, batch: int, ctx: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``batch`` random windows of ``ctx`` ids, and the same windows one byte later."""
    starts = torch.randint(0, len(data) - ctx, (batch, 1), generator=generator)
    chunk = data[starts + torch.arange(ctx + 1)]
    return chunk[:, :-1], chunk[:, 1:]


def next_byte_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy of every position's logits against the byte that follows it."""
    logits = model(x)  # [batch, ctx, 256]
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


@torch.no_grad()
def sample(
    model: nn.Module,
    prompt: bytes,
    length: int,
    ctx: int,
    temperature: float,
    generator: torch.Generator,
) -> bytes:
    """``prompt`` and ``length`` sampled bytes, fed back one per call with the returned state."""
    model.eval()
    text = bytearray(prompt)
    logits, state = model(torch.tensor([list(prompt)]), return_state=True)
    for _ in range(length):
        probs = torch.softmax(logits[0, -1] / temperature, dim=-1)
        byte = torch.multinomial(probs, 1, generator=generator)
        text.append(int(byte))
        if int(state["t"]) < ctx:
            # One new step: attention reads the cached keys and values of the others.
            logits, state = model(byte.view(1, 1), state=state, return_state=True)
        else:
            # Past the trained positions: start again from the last half of the window.
            recent = list(text[-(ctx // 2) :])
            logits, state = model(torch.tensor([recent]), return_state=True)
    return bytes(text)


def main(argv: list[str] | None = None) -> tuple[float, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500, help="training steps (default 1500)")
    parser.add_argument("--batch", type=int, default=32, help="windows per step (default 32)")
    parser.add_argument(
        "--ctx", type=int, default=64, help=f"bytes per window, at most {GPT_CTX} (default 64)"
    )
    parser.add_argument("--d", type=int, default=64, help="GPT width, a multiple of 4 (default 64)")
    parser.add_argument("--layers", type=int, default=2, help="GPT blocks (default 2)")
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate (default 3e-3)")
    parser.add_argument(
        "--log-every", type=int, default=100, help="print the mean loss every N steps (default 100)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", default="machine ", help='start of the sample ("machine ")')
    parser.add_argument(
        "--sample-length", type=int, default=300, help="bytes to sample (default 300)"
    )
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: the model is small, more threads add little "
        "and slow down badly when another process holds a core)",
    )
    args = parser.parse_args(argv)
    if not 2 <= args.ctx <= GPT_CTX:
        parser.error(f"--ctx must be in 2..{GPT_CTX} (the positions GPT embeds)")
    if args.d < 4 or args.d % 4:
        parser.error("--d must be a positive multiple of 4 (GPT has 4 heads)")
    prompt = args.prompt.encode("utf-8")
    if not 1 <= len(prompt) <= args.ctx:
        parser.error(f"--prompt must be 1..{args.ctx} bytes (--ctx)")
    if min(args.steps, args.batch, args.layers, args.log_every) < 1 or args.sample_length < 0:
        parser.error("--steps, --batch, --layers and --log-every must be positive")
    if args.temperature <= 0:
        parser.error("--temperature must be positive")
    if args.threads < 1:
        parser.error("--threads must be positive")
    torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    params = {"GPT.d": args.d, "GPT.layers": args.layers}
    model = machc.load(HERE / "gpt.mach", params=params).GPT()
    print(f"compiled {HERE / 'gpt.mach'} (d={args.d}, layers={args.layers}); GPT:")
    print(model)
    print(f"{sum(p.numel() for p in model.parameters())} parameters")

    text = corpus()
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()  # bytes are the ids
    split = int(len(data) * (1 - HELD_OUT))
    train, held_out = data[:split], data[split:]
    print(
        f"text: {len(text)} bytes of {DOCS.relative_to(HERE.parent)}/*.md "
        f"({len(train)} for training, {len(held_out)} held out)"
    )

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    # A cosine decay of the learning rate to a tenth over the run.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda done: 0.55 + 0.45 * math.cos(math.pi * done / args.steps)
    )
    batches = torch.Generator().manual_seed(args.seed)
    steps = range(1, args.steps + 1)
    bar = steps if tqdm is None else tqdm(steps, desc="training", unit="step", disable=None)
    first = math.nan
    interval: list[float] = []  # the losses since the last printed mean
    model.train()
    for step in bar:
        x, y = windows(train, args.batch, args.ctx, batches)
        optimizer.zero_grad(set_to_none=True)
        loss = next_byte_loss(model, x, y)
        loss.backward()
        optimizer.step()
        schedule.step()
        interval.append(loss.item())
        if step == 1:
            first = interval[0]
        if tqdm is not None:
            bar.set_postfix(loss=f"{interval[-1]:.3f}", refresh=False)
        if step % args.log_every == 0 or step == args.steps:
            line = f"step {step:4d}  loss {sum(interval) / len(interval):.4f}"
            if tqdm is None:
                print(line)
            else:
                bar.write(line, file=sys.stdout)
            last, interval = sum(interval) / len(interval), []
    if tqdm is not None:
        bar.close()
    print(f"loss {first:.4f} -> {last:.4f} (first step -> mean of the last logged steps)")

    model.eval()
    with torch.no_grad():
        x, y = windows(held_out, 64, args.ctx, torch.Generator().manual_seed(args.seed))
        held = next_byte_loss(model, x, y).item()
    print(f"held-out loss {held:.4f} on 64 windows of the last {HELD_OUT:.0%} of the text")

    generator = torch.Generator().manual_seed(args.seed)
    out = sample(model, prompt, args.sample_length, args.ctx, args.temperature, generator)
    print(f"sample ({args.sample_length} bytes after the prompt, temperature {args.temperature}):")
    print(out.decode("utf-8", errors="replace"))
    return first, last


if __name__ == "__main__":
    main()
    sys.exit(0)
