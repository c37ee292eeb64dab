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
    if vocab and vocab.get('chat'):
        chat_files(data_dir, split, n)
    elif n < block_size + 1 and not example_len:
        fail(f"{path} has {n} tokens, fewer than block_size + 1 = {block_size + 1}; lower --block_size or use "
             f"more data")
    return n


def splits(data_dir, block_size, vocab):
    """train.py's view of a dataset -> ({split: tokens}, {split: example_starts}), each split checked; for a chat
    dataset, rank 0 says once how many training conversations a window cuts."""
    n_tokens = {s: split_tokens(data_dir, s, block_size, vocab) for s in ('train', 'val')}
    examples = {s: example_starts(data_dir, s, n, vocab) for s, n in n_tokens.items()}
    note = cut_note(examples['train'], n_tokens['train'], block_size, vocab)
    if note and int(os.environ.get('RANK', '0')) == 0:
        print(note, flush=True)
    return n_tokens, examples


def example_starts(data_dir, split, n_tokens, vocab=None):
    """Where the examples of a split begin (an int64 array), or None for a stream of text: every example_len-th
    token for fixed-length examples (addition, images), {split}_starts.bin for conversations (chat.py)."""
    vocab = vocab or {}
    if vocab.get('example_len'):
        return np.arange(0, n_tokens, vocab['example_len'])
    if vocab.get('chat'):
        return np.fromfile(os.path.join(data_dir, f'{split}_starts.bin'), dtype=np.int64)
    return None


def trained_mask(data_dir, split, vocab=None):
    """A chat dataset's {split}_mask.bin, 1 where a token is trained (read lazily), else None."""
    if not (vocab or {}).get('chat'):
        return None
    return np.memmap(os.path.join(data_dir, f'{split}_mask.bin'), dtype=np.uint8, mode='r')


def starts(n_tokens, block_size, shape, generator, examples=None):
    """Random window starts of the given shape in a split of n_tokens: anywhere in a stream, at an example's
    first token in a dataset of examples (example_starts)."""
    if examples is not None:
        return torch.from_numpy(examples[torch.randint(len(examples), shape, generator=generator).numpy()])
    return torch.randint(n_tokens - block_size, shape, generator=generator)


def windows(data_dir, split, ix, block_size, device, vocab=None):
    """Windows of block_size + 1 tokens of split.bin starting at ix -> inputs x, targets y (len(ix), block_size).
    Examples mask their targets: a target that is not trained is -1, which the loss ignores. A fixed-length
    example (vocab's example_len) is a window of its own, whose targets before loss_from are not trained; a
    conversation starts a window of block_size, which runs on into the next ones, trained where its mask says."""
    # a fresh memmap per batch: a long-lived one keeps every page it touched in memory
    return token_windows(np.memmap(os.path.join(data_dir, f'{split}.bin'), dtype=np.uint16, mode='r'), ix,
                         block_size, device, vocab, trained_mask(data_dir, split, vocab))


def token_windows(data, ix, block_size, device, vocab=None, mask=None):
    """windows() of an array of token ids (and of its trained mask). A window that runs past the end is padded
    with untrained tokens."""
    vocab = vocab or {}
    length = vocab['example_len'] - 1 if vocab.get('example_len') else block_size
    pad = lambda a: np.pad(a, (0, length + 1 - len(a)))  # noqa: E731
    xy = torch.from_numpy(np.stack([pad(data[i:i + length + 1]) for i in ix.tolist()]).astype(np.int64))
    x, y = xy[:, :-1].contiguous(), xy[:, 1:].contiguous()
    y[:, :vocab.get('loss_from', 0)] = -1
    if mask is not None:
        trained = np.stack([pad(mask[i:i + length + 1]) for i in ix.tolist()])[:, 1:]
        y[torch.from_numpy(trained) == 0] = -1
    if device.startswith('cuda'):  # pinned memory lets the copy overlap with the GPU's work
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def cut_note(examples, n_tokens, block_size, vocab):
    """A chat dataset: how many training conversations are longer than a window, so cut; else ''."""
    if not (vocab or {}).get('chat'):
        return ''
    cut = int((lengths(examples, n_tokens) > block_size + 1).sum())
    return (f"{cut:,} of {len(examples):,} training conversations are longer than block_size + 1 = {block_size + 1} "
            f"tokens: their ends are cut" if cut else '')


def chat_files(data_dir, split, n):
    """Check a chat dataset's mask and starts files against its n tokens -> the conversations' lengths."""
    mask_path, starts_path = (os.path.join(data_dir, f'{split}_{kind}.bin') for kind in ('mask', 'starts'))
    for path in (mask_path, starts_path):
        if not os.path.isfile(path):
            fail(f"{path} not found: a chat dataset has {split}.bin, {split}_mask.bin and {split}_starts.bin; "
                 f"rerun data/chat/prepare.py")
    starts = np.fromfile(starts_path, dtype=np.int64) if os.path.getsize(starts_path) % 8 == 0 else None
    if (os.path.getsize(mask_path) != n or starts is None or not len(starts) or starts[0] != 0
            or (np.diff(starts) <= 0).any() or starts[-1] >= n):
        fail(f"{data_dir}: {split}_mask.bin or {split}_starts.bin does not fit {split}.bin's {n:,} tokens, so "
             f"they are damaged or from another run: rerun data/chat/prepare.py")
    return lengths(starts, n)


def lengths(starts, n_tokens):
    """The lengths of the examples that begin at starts in a split of n_tokens."""
    return np.diff(np.append(starts, n_tokens))


def prepare_dataset(data_dir, input_path):
    """Run data_dir/prepare.py (with --input=input_path if given) when its train.bin is missing -> data_dir."""
    script = os.path.join(data_dir, 'prepare.py')
    if os.path.isfile(os.path.join(data_dir, 'train.bin')) or not os.path.isfile(script):
        return data_dir
    print(f"{data_dir}/train.bin is missing: running {os.path.relpath(script)} first", flush=True)
    if subprocess.run([sys.executable, script] + ([f'--input={input_path}'] if input_path else [])).returncode:
        fail(f"{os.path.relpath(script)} failed (its error is above); fix that and rerun")
    return data_dir
