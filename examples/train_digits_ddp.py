"""The main job on several processes: the digits machine under DistributedDataParallel.

    torchrun --nproc_per_node=2 examples/train_digits_ddp.py [--epochs 15] [--batch 32]
    torchrun --nproc_per_node=2 examples/train_digits_ddp.py --model conv [--blocks 3]
    python -m torch.distributed.run --nproc_per_node=2 --master_port 29501 \\
        examples/train_digits_ddp.py --epochs 5 --out build/

(`.venv/bin/torchrun` in this repository's virtual environment.) torchrun starts
one process per device and gives each its RANK, LOCAL_RANK and WORLD_SIZE; every
process compiles examples/digits.mach (or, with --model conv, digits_conv.mach)
in memory with machc.load, builds the same machine (same seed; DDP also copies
rank 0's weights to the others), wraps it in DistributedDataParallel and trains
it on its share of scikit-learn's digits: a DistributedSampler gives each process
a different part of every epoch, shuffled anew each epoch (set_epoch). --batch is
per process (default 32: 64 a step on two processes, as train_digits.py). The
gradients are averaged across processes in backward, so every process holds the
same weights after each step. The backend is nccl on CUDA (one GPU per process,
cuda:LOCAL_RANK; the default when CUDA is available) and gloo on the CPU
(--device cpu). Run without torchrun, it trains as a group of one process.

Rank 0 shows the progress bar (on a terminal), evaluates on the held-out fifth
after each epoch and prints the held-out loss and accuracy and the training loss
(averaged over all processes); at the end it saves a checkpoint, OUT/digits_ddp.pt
(or digits_conv_ddp.pt): the state_dict of the model (unwrapped: the keys have no
"module." prefix, so it loads into a plain model, as train_digits.py's does) and
of the optimizer, and the epoch; then loads it into a fresh model and evaluates
it again (the same accuracy). BatchNorm statistics (--model conv) are rank 0's:
DDP copies its buffers to the others before every forward.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import machc
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm
from train_digits import (
    HERE,
    add_arguments,
    default_device,
    digits,
    epoch_line,
    evaluate,
    machine,
)


def start(device_name: str) -> tuple[int, int, torch.device]:
    """Join the process group torchrun set up (or make one of this process alone):
    (rank, world size, this process's device)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.device(device_name).type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device(device_name)
        backend = "gloo"
    if "RANK" in os.environ:  # started by torchrun: MASTER_ADDR, MASTER_PORT, WORLD_SIZE
        dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return dist.get_rank(), dist.get_world_size(), device


def main(argv: list[str] | None = None) -> float:
    """Train; returns the held-out accuracy on rank 0 (nan on the other ranks)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, batch=32)
    parser.add_argument(
        "--device",
        default=default_device(),
        help=f"cuda (nccl, cuda:LOCAL_RANK) or cpu (gloo) ({default_device()})",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar; print only the final accuracy"
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be positive")
    torch.set_num_threads(args.threads)
    rank, world, device = start(args.device)
    say = print if rank == 0 and not args.quiet else (lambda *a, **k: None)

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    source, class_name, shape, params = machine(args)
    # machc.load compiles in memory: no file that the processes would all write.
    build = getattr(machc.load(HERE / source, params=params), class_name)
    model = build().to(device)
    say(f"compiled {HERE / source} ({class_name}, {params})")
    say(f"{sum(p.numel() for p in model.parameters())} parameters")
    ddp = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    train_set, test_set = digits(args.seed, shape)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, seed=args.seed)
    pin = device.type == "cuda"
    train_loader = DataLoader(train_set, batch_size=args.batch, sampler=sampler, pin_memory=pin)
    test_loader = DataLoader(test_set, batch_size=512, pin_memory=pin)
    say(
        f"training on {world} process(es) ({dist.get_backend()}, {device.type}): "
        f"{len(sampler)} of {len(train_set)} digits each, {len(train_loader)} batches of "
        f"{args.batch} per epoch; {len(test_set)} held out"
    )
    optimizer = torch.optim.Adam(ddp.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    test_accuracy = math.nan
    for epoch in range(1, args.epochs + 1):
        sampler.set_epoch(epoch)  # another shuffle each epoch, the same on every rank
        ddp.train()
        totals = torch.zeros(2, dtype=torch.float64, device=device)  # sum of losses, digits
        bar = tqdm(
            train_loader,
            desc=f"epoch {epoch}/{args.epochs}",
            unit="batch",
            leave=False,
            disable=True if rank != 0 or args.quiet else None,
        )
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(ddp(x), y)
            loss.backward()  # DDP averages the gradients of all ranks here
            optimizer.step()
            totals += torch.stack([loss.detach().double() * len(y), totals.new_tensor(len(y))])
        bar.close()
        dist.all_reduce(totals)  # every rank's sums: the training loss of the whole epoch
        if rank == 0:
            # Rank 0's model is every rank's model (same weights); the others go on to the
            # next epoch and wait for rank 0 in their first backward.
            test_loss, test_accuracy = evaluate(model, test_loader, device)
            say(epoch_line(epoch, test_loss, test_accuracy, (totals[0] / totals[1]).item()))

    if rank == 0:
        checkpoint = args.out / source.replace(".mach", "_ddp.pt")
        args.out.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "model": model.state_dict(),  # the module DDP wraps: no "module." prefix
                "optimizer": optimizer.state_dict(),
                "epoch": args.epochs,
                "machine": class_name,
                "params": params,
                "accuracy": test_accuracy,
                "world_size": world,
            },
            checkpoint,
        )
        say(f"saved {checkpoint} (state_dict of the model and the optimizer, epoch {args.epochs})")
        saved = torch.load(checkpoint, map_location=device, weights_only=True)
        fresh = build().to(device)
        fresh.load_state_dict(saved["model"])
        _, reloaded = evaluate(fresh, test_loader, device)
        same = "the same" if reloaded == test_accuracy else f"NOT the same as {test_accuracy:.3f}"
        say(
            f"reloaded {checkpoint.name} (epoch {saved['epoch']}) into a fresh {class_name}: "
            f"held-out accuracy {reloaded:.3f} ({same})"
        )
        print(f"accuracy on {len(test_set)} held-out digits: {test_accuracy:.3f}")
    dist.barrier()  # the others wait for rank 0's checkpoint
    del ddp  # before its process group: a DDP module that outlives it can hang at exit
    dist.destroy_process_group()
    return test_accuracy


if __name__ == "__main__":
    main()
    sys.exit(0)
