"""Shared helpers: tiny datasets written into tmp_path, and running the scripts as subprocesses."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# a tiny model that trains in seconds on a CPU; append --out_dir and --dataset
TINY = ['--device=cpu', '--compile=False', '--dtype=float32', '--n_layer=2', '--n_head=2', '--n_embd=32',
        '--block_size=32', '--batch_size=4', '--max_iters=10', '--dropout=0.0', '--lr_decay_iters=10',
        '--warmup_iters=2', '--gradient_accumulation_steps=1', '--eval_interval=5', '--eval_iters=2', '--log_interval=1', '--wandb_log=False']

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 40


def write_char_dataset(out_dir, text=TEXT):
    """train.bin / val.bin / meta.pkl for a character-level dataset, 90/10 split."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    n = int(0.9 * len(ids))
    ids[:n].tofile(out_dir / 'train.bin')
    ids[n:].tofile(out_dir / 'val.bin')
    with open(out_dir / 'meta.pkl', 'wb') as f:
        pickle.dump({'vocab_size': len(chars), 'stoi': stoi, 'itos': dict(enumerate(chars))}, f)
    return out_dir


@pytest.fixture
def char_dataset(tmp_path):
    """Path of a tiny character-level dataset folder (pass it as --dataset=<path>)."""
    return write_char_dataset(tmp_path / 'data' / 'tiny_char')


def run(script, *args, cwd=None, env=None, check=True, timeout=300):
    """Run REPO/script with args; returns the CompletedProcess. On an unexpected exit code the
    assertion message carries the tail of stderr."""
    full_env = dict(os.environ, PYTHONUNBUFFERED='1', WANDB_MODE='offline', **(env or {}))
    p = subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd or REPO,
                       env=full_env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert p.returncode == 0, f"{script} exited {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p
