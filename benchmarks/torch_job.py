"""PyTorch DDP training on scikit-learn's digits: the job that `recovery_vs_torchrun` runs under torchrun.

Run it with torchrun, for example:

    python -m torch.distributed.run --nproc-per-node=2 --max-restarts=3 \\
        benchmarks/torch_job.py --progress P --checkpoint C --steps 600

It needs torch, numpy and scikit-learn, and never imports the kit or
TensorFlow. The model, optimizer, batch size and seeded held-out split match
`tfps_ha.examples.digits`. The ranks average gradients with
DistributedDataParallel over the gloo backend.

Every `--checkpoint-every` steps, rank 0 saves the model, the optimizer and the
step to a temporary file and renames it over `--checkpoint`. A kill during the
save leaves the previous checkpoint intact. On start, every rank resumes from
that file if it exists. The batches depend only on the step, so a resumed run
trains on the same batches as an uninterrupted one.

Each rank appends one JSON line per event to `--progress`, with the fields
`ts` (wall-clock seconds), `event`, `step`, `rank`, `restart`
(TORCHELASTIC_RESTART_COUNT) and `pid`. The events are `start` (process group
up and checkpoint loaded, at the step the run resumes from) and `step` (a
training step finished, at the step count after it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

# Same split and hyperparameters as tfps_ha/examples/digits.py.
HELD_OUT = 360
SEED = 20261204
BATCH_SIZE = 64
LEARNING_RATE = 0.003
# Gloo gives up on a collective after this long, so a peer that hangs without
# dying fails the rank instead of blocking it forever.
COLLECTIVE_TIMEOUT_SECONDS = 60


def load_train_split() -> tuple[np.ndarray, np.ndarray]:
    """Loads the digits training images and labels, without the 360 held-out images.

    Returns:
      Images as float32 in [0, 1] with shape (1437, 64), and int64 labels.
    """
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    images = (images / 16.0).astype("float32")
    labels = labels.astype("int64")
    order = np.random.default_rng(SEED).permutation(len(labels))
    train = order[HELD_OUT:]
    return images[train], labels[train]


def batch_indices(step: int, examples: int, rank: int, world_size: int) -> np.ndarray:
    """Returns the example indices that `rank` trains on at `step`.

    Each epoch draws a permutation seeded by the epoch number. The global batch
    of BATCH_SIZE examples is split between the ranks by stride.
    """
    batches_per_epoch = examples // BATCH_SIZE
    epoch, batch = divmod(step, batches_per_epoch)
    order = np.random.default_rng((SEED, epoch)).permutation(examples)
    global_batch = order[batch * BATCH_SIZE:(batch + 1) * BATCH_SIZE]
    return global_batch[rank::world_size]


def build_model() -> nn.Module:
    """Returns the two-layer classifier of the Keras digits example: 64 -> 128 (ReLU) -> 10 logits."""
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def save_checkpoint(path: str, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    """Writes the checkpoint to a temporary file and renames it over `path`."""
    temporary = f"{path}.tmp.{os.getpid()}"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Restores the model and optimizer from `path` if it exists.

    Returns:
      The step saved in the checkpoint, or 0 when there is none.
    """
    if not os.path.exists(path):
        return 0
    state = torch.load(path, map_location="cpu")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


class ProgressWriter:
    """Appends JSON progress lines to a file shared by all ranks and restarts.

    Each line goes out in one `os.write` on a descriptor opened with O_APPEND,
    so lines of different processes do not interleave on a local Linux file system.
    """

    def __init__(self, path: str, rank: int, restart: int):
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._fields = {"rank": rank, "restart": restart, "pid": os.getpid()}

    def write(self, event: str, step: int) -> None:
        line = {"ts": time.time(), "event": event, "step": step, **self._fields}
        os.write(self._fd, (json.dumps(line) + "\n").encode("utf-8"))

    def close(self) -> None:
        os.close(self._fd)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--progress", required=True, help="JSON-lines file that every rank appends progress to")
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint file that rank 0 writes and all ranks resume from")
    parser.add_argument("--steps", type=int, default=600, help="target number of training steps")
    parser.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints")
    parser.add_argument("--min-step-seconds", type=float, default=0.0,
                        help="minimum wall time of one step in seconds; a faster step sleeps for the rest")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps: received {args.steps}; expected at least 1")
    if args.checkpoint_every < 1:
        parser.error(f"--checkpoint-every: received {args.checkpoint_every}; expected at least 1")
    if args.min_step_seconds < 0:
        parser.error(f"--min-step-seconds: received {args.min_step_seconds}; expected 0 or more")
    return args


def train(args: argparse.Namespace) -> None:
    """Trains until `args.steps`, resuming from and saving to `args.checkpoint`."""
    # Two ranks share the machine's cores, so one intra-op thread each avoids oversubscription.
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_SECONDS))
    rank = dist.get_rank()
    world_size = dist.get_world_size()
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    progress = ProgressWriter(args.progress, rank, restart)

    torch.manual_seed(SEED)
    model = build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    step = load_checkpoint(args.checkpoint, model, optimizer)
    parallel_model = DistributedDataParallel(model)
    loss_function = nn.CrossEntropyLoss()
    images, labels = load_train_split()
    images_tensor = torch.from_numpy(images)
    labels_tensor = torch.from_numpy(labels)
    progress.write("start", step)

    while step < args.steps:
        started = time.monotonic()
        indices = torch.from_numpy(batch_indices(step, len(labels), rank, world_size))
        optimizer.zero_grad()
        loss = loss_function(parallel_model(images_tensor[indices]), labels_tensor[indices])
        loss.backward()
        optimizer.step()
        step += 1
        if rank == 0 and step % args.checkpoint_every == 0:
            save_checkpoint(args.checkpoint, model, optimizer, step)
        remaining = args.min_step_seconds - (time.monotonic() - started)
        if remaining > 0:
            time.sleep(remaining)
        progress.write("step", step)

    progress.close()
    dist.barrier()
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
