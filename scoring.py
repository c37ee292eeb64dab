"""What every evaluation task (tasks.py, hellaswag.py) is made of: the model's loss at each target, and the
work shared out over torchrun's processes, each taking its items and every one getting the sum of all."""
import os

import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm


def mine(n):
    """The items of range(n) this process takes: every world_size-th one, from its rank."""
    return range(dist.get_rank(), n, dist.get_world_size()) if dist.is_initialized() else range(n)


def gathered(rows):
    """rows, of which each process filled its own (zeros elsewhere), summed over the processes: every one
    then holds all of them exactly, as one process alone would."""
    if dist.is_initialized():
        dist.all_reduce(rows)
    return rows


def bar(total, desc, progress):
    """A progress bar on rank 0's terminal (none when stderr is a file or a pipe)."""
    off = not progress or int(os.environ.get('RANK', '0')) != 0
    return tqdm(total=total, desc=desc, disable=True if off else None, dynamic_ncols=True, leave=False)


def token_losses(model, x, y, ctx):
    """The cross-entropy of every target of y (B, T) in float32, 0 where the target is -1."""
    with ctx:
        logits, _ = model(x, y)
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-1,
                           reduction='none').view(y.shape)
