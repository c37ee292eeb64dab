"""The dataset folder and batches from it: data/<dataset>/ (or any folder) holding train.bin and val.bin,
uint16 token ids written by its prepare.py, read as windows of block_size + 1 tokens. Mistakes go out
through configurator.fail, as one line."""
import os
import subprocess
import sys

import numpy as np
import torch

from configurator import fail

REPO = os.path.dirname(os.path.abspath(__file__))


def dataset_dir(dataset, check=True, prepare=False, prepare_input=''):
    """A folder holding train.bin and val.bin, as given, else data/<dataset>; an absolute path. check:
    fail if neither exists. prepare: run the folder's prepare.py (--input=prepare_input) if train.bin is not
    there yet."""
    if os.path.isdir(dataset):
        return prepare_dataset(os.path.abspath(dataset), prepare_input) if prepare else os.path.abspath(dataset)
    folder = os.path.join(REPO, 'data', dataset)
    if check and os.sep in dataset:
        fail(f"dataset={dataset!r} is not a folder; give a folder holding train.bin and val.bin, or a name in data/")
    if check and not os.path.isdir(folder):
        known = sorted(d for d in os.listdir(os.path.dirname(folder))
                       if os.path.isdir(os.path.join(REPO, 'data', d)) and not d.startswith(('_', '.')))
        fail(f"no dataset {dataset!r}: data/ has {', '.join(known)}; or give a folder holding train.bin and val.bin")
    return prepare_dataset(folder, prepare_input) if prepare else folder


def split_tokens(data_dir, split, block_size, vocab=None):
    """The number of tokens in data_dir/split.bin, which must hold one window of block_size + 1, or (a
    dataset of fixed-length examples, as its vocab declares) whole examples that block_size fits."""
    path = os.path.join(data_dir, f'{split}.bin')
    if not os.path.isfile(path):
        hint = (f"run  python {os.path.relpath(os.path.join(data_dir, 'prepare.py'))}  (or train with --prepare=True)"
                if os.path.isfile(os.path.join(data_dir, 'prepare.py')) else "prepare it first")
        fail(f"{path} not found: {hint}")
    size = os.path.getsize(path)
    if size % 2:  # uint16 tokens: an odd size is a partial copy or an interrupted write
        fail(f"{path} has {size:,} bytes, an odd number, so it is cut short or damaged: rerun its prepare.py "
             f"(or copy the file again)")
    n = size // 2
    example_len = (vocab or {}).get('example_len')
    if example_len and block_size < example_len - 1:
        fail(f"block_size={block_size} does not fit the dataset's examples of {example_len} tokens: "
             f"use --block_size={example_len - 1} (an example's inputs)")
    if example_len and (n % example_len or not n):
        fail(f"{path} has {n} tokens, not a whole number of its {example_len}-token examples; rerun prepare.py")
    if n < block_size + 1 and not example_len:
        fail(f"{path} has {n} tokens, fewer than block_size + 1 = {block_size + 1}; lower --block_size or use "
             f"more data")
    return n


def starts(n_tokens, block_size, shape, generator, vocab=None):
    """Random window starts of the given shape in a split of n_tokens: anywhere in a stream, at an example's
    first token in a dataset of fixed-length examples."""
    example_len = (vocab or {}).get('example_len')
    if example_len:
        return torch.randint(n_tokens // example_len, shape, generator=generator) * example_len
    return torch.randint(n_tokens - block_size, shape, generator=generator)


def windows(data_dir, split, ix, block_size, device, vocab=None):
    """Windows of block_size + 1 tokens of split.bin starting at ix -> inputs x, targets y (len(ix), block_size).
    In a dataset of examples (vocab's example_len) a window is one example, and its targets before the
    vocab's loss_from are -1, which the loss ignores."""
    # a fresh memmap per batch: a long-lived one keeps every page it touched in memory
    return token_windows(np.memmap(os.path.join(data_dir, f'{split}.bin'), dtype=np.uint16, mode='r'), ix,
                         block_size, device, vocab)


def token_windows(data, ix, block_size, device, vocab=None):
    """windows() of an array of token ids."""
    length = vocab['example_len'] - 1 if vocab and vocab.get('example_len') else block_size
    xy = torch.from_numpy(np.stack([data[i:i + length + 1] for i in ix.tolist()]).astype(np.int64))
    x, y = xy[:, :-1].contiguous(), xy[:, 1:].contiguous()
    y[:, :(vocab or {}).get('loss_from', 0)] = -1
    if device.startswith('cuda'):  # pinned memory lets the copy overlap with the GPU's work
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)



def prepare_dataset(data_dir, input_path):
    """Run data_dir/prepare.py (with --input=input_path if given) when its train.bin is missing -> data_dir."""
    script = os.path.join(data_dir, 'prepare.py')
    if os.path.isfile(os.path.join(data_dir, 'train.bin')) or not os.path.isfile(script):
        return data_dir
    print(f"{data_dir}/train.bin is missing: running {os.path.relpath(script)} first", flush=True)
    if subprocess.run([sys.executable, script] + ([f'--input={input_path}'] if input_path else [])).returncode:
        fail(f"{os.path.relpath(script)} failed (its error is above); fix that and rerun")
    return data_dir
