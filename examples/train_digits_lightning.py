"""The main job with Lightning: the digits machine in a LightningModule, trained by a Trainer.

    python examples/train_digits_lightning.py [--epochs 15] [--model conv] [--csv]
    python examples/train_digits_lightning.py --accelerator cpu --devices 2

Lightning is not among machc's dependencies: install it next to the CPU build of
PyTorch, pinned in the same command (else pip may fetch a CUDA build of torch):

    .venv/bin/pip install torch==2.13.0 lightning

DigitsModule, a LightningModule, builds the generated module of
examples/digits.mach (or, with --model conv, digits_conv.mach; compiled in
memory with machc.load) as its `net`, and sets example_input_array from the
generated module's example_inputs(), so that Lightning's model summary shows
the sizes of the inputs and outputs of every edge. A Trainer
(accelerator="auto": the GPU when there is one) trains it with Adam on
scikit-learn's digits, a fifth held out and evaluated after every epoch; each
epoch prints the held-out loss and accuracy and the training loss. A
ModelCheckpoint keeps the epoch of the best held-out accuracy in
OUT/digits_lightning.ckpt (weights, optimizer, epoch and the hyperparameters
that rebuild the module); at the end DigitsModule.load_from_checkpoint loads
it into a fresh module, which the Trainer evaluates again: the same accuracy.
--csv also logs the metrics to OUT/lightning_logs/ (a CSVLogger). With
--devices 2 Lightning runs DDP itself (it starts the second process).
"""

from __future__ import annotations

import argparse
import sys
import warnings

import lightning as L
import machc
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader
from train_digits import HERE, MODELS, add_arguments, digits, epoch_line, machine


class DigitsModule(L.LightningModule):
    """The generated module of a digits machine (``model``: dense or conv, with ``params``)."""

    def __init__(self, model: str = "dense", params: dict | None = None, lr: float = 3e-3):
        super().__init__()
        self.save_hyperparameters()  # load_from_checkpoint rebuilds the module from these
        source, class_name, _ = MODELS[model]
        self.net = getattr(machc.load(HERE / source, params=params or {}), class_name)()
        # The summary runs forward(*example_input_array) and shows every layer's sizes.
        self.example_input_array = self.net.example_inputs(batch=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True, sync_dist=True)
        accuracy = (logits.argmax(dim=1) == y).float().mean()
        self.log("val_acc", accuracy, prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class PrintEpochs(Callback):
    """One line per epoch, as train_digits.py prints it (after the epoch's validation)."""

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if {"val_loss", "val_acc", "train_loss"} <= metrics.keys():
            module.print(
                epoch_line(
                    trainer.current_epoch + 1,
                    metrics["val_loss"].item(),
                    metrics["val_acc"].item(),
                    metrics["train_loss"].item(),
                )
            )


def main(argv: list[str] | None = None) -> float:
    """Train; returns the held-out accuracy of the best epoch (the checkpoint's)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--accelerator", default="auto", help="auto, cpu, gpu... (auto)")
    parser.add_argument("--devices", default="auto", help="auto, or how many (auto)")
    parser.add_argument("--csv", action="store_true", help="log metrics to OUT/lightning_logs/")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar, no summary; only the results"
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be positive")
    devices = int(args.devices) if args.devices.isdigit() else args.devices
    torch.set_num_threads(args.threads)
    L.seed_everything(args.seed, workers=True, verbose=False)
    # The data set is a few hundred kilobytes in memory: loader processes would only slow it.
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    # Lightning 2.6 on torch 2.13 warns about its own use of torch's pytree: not ours.
    warnings.filterwarnings("ignore", r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")

    source, class_name, shape, params = machine(args)
    module = DigitsModule(args.model, params, args.lr)
    train_set, test_set = digits(args.seed, shape)
    train_loader = DataLoader(
        train_set,
        batch_size=args.batch,
        shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    test_loader = DataLoader(test_set, batch_size=512)

    name = source.replace(".mach", "_lightning")
    best = ModelCheckpoint(
        dirpath=args.out,
        filename=name,
        monitor="val_acc",
        mode="max",
        enable_version_counter=False,  # overwrite OUT/NAME.ckpt rather than add NAME-v1.ckpt
    )
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator=args.accelerator,
        devices=devices,
        logger=CSVLogger(args.out) if args.csv else False,
        enable_checkpointing=True,
        callbacks=[best, PrintEpochs()],
        # A bar on a terminal only (Lightning's writes to stdout): logs get plain lines.
        enable_progress_bar=sys.stdout.isatty() and not args.quiet,
        enable_model_summary=not args.quiet,
        num_sanity_val_steps=0,
        log_every_n_steps=10,  # --csv: the steps' losses too (an epoch has 23 batches)
    )
    trainer.fit(module, train_loader, test_loader)

    # The best epoch's checkpoint, in a module built afresh, evaluated again.
    score = best.best_model_score.item()
    fresh = DigitsModule.load_from_checkpoint(best.best_model_path)
    reloaded = trainer.validate(fresh, test_loader, verbose=False)[0]["val_acc"]
    if trainer.is_global_zero:
        epoch = torch.load(best.best_model_path, weights_only=False)["epoch"] + 1
        same = "the same" if reloaded == score else f"NOT the same as {score:.3f}"
        print(f"saved {best.best_model_path} (the best epoch: {epoch})")
        print(
            f"reloaded {name}.ckpt into a fresh {class_name}: held-out accuracy "
            f"{reloaded:.3f} ({same})"
        )
        print(f"accuracy on {len(test_set)} held-out digits: {score:.3f}")
    return score


if __name__ == "__main__":
    main()
    sys.exit(0)
