"""train.py under torchrun on CPU (gloo): 2 processes on one machine.
Run: python -m pytest -q tests/test_ddp.py"""
import os
import re
import signal
import time

import numpy as np
import pytest
import torch

from conftest import TINY, chars_of, torchrun, write_char_dataset
from model import GPT, GPTConfig

pytestmark = pytest.mark.slow  # every test here starts torchrun


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def test_two_processes_train_log_once_and_stay_identical(char_dataset, tmp_path, script):
    p = torchrun('train.py', *TINY, f'--dataset={char_dataset}', f'--out_dir={tmp_path / "ddp"}',
                 '--gradient_accumulation_steps=2', '--peak_flops=1e10', '--eval_tasks=val', '--tensorboard_log=True')
    assert p.returncode == 0, p.stderr[-3000:]
    # regression: MFU counted the whole job's tokens against one device's peak (2x too high here)
    line = next(line for line in p.stdout.splitlines() if line.startswith('iter 6:'))  # the first MFU figure
    mfu, tok_s = float(re.search(r'mfu ([\d.]+)%', line)[1]) / 100, float(re.search(r'tok/s ([\d,]+)', line)[1].replace(',', ''))
    vocab = len(chars_of(char_dataset))
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=vocab, bias=False))
    flops_per_token = 6 * model.get_num_params() + 12 * 2 * 2 * 16 * 32
    assert abs(mfu / (flops_per_token * tok_s / 2 / 1e10) - 1) < 0.02, line
    assert p.stdout.count('iter 10: loss') == 1 and p.stdout.count('step 10: train loss') == 1
    assert p.stdout.count('Overriding: max_iters = 10') == 1
    assert p.stdout.count('decayed tensors: ') == 1  # regression: every process printed its optimizer groups
    assert 'tokens per iteration 256' in p.stdout  # 2 processes x 1 micro-step x 4 x 32
    assert 'parameters identical on all 2 processes' in p.stdout
    # the eval tasks shard their windows over the processes; rank 0 alone logs and writes TensorBoard's files
    assert p.stdout.count('step 10: train loss') == 1 and p.stdout.count('; val: loss ') == 3
    assert sorted(os.listdir(tmp_path / 'ddp')) == ['ckpt.pt', 'tensorboard']
    assert len(os.listdir(tmp_path / 'ddp' / 'tensorboard')) == 1
    # a DDP checkpoint resumes in one process, and a one-process checkpoint under torchrun; with another
    # number of processes no random state is restored (regression: ranks that had a saved state took it
    # up and the others did not), and the log says so
    p = script('train.py', *TINY, f'--dataset={char_dataset}', f'--out_dir={tmp_path / "ddp"}', '--init_from=resume',
               '--max_iters=12')
    assert 'note: random state not restored: saved by 2 process(es), this run has 1' in p.out
    assert load(tmp_path / 'ddp' / 'ckpt.pt')['iter_num'] == 12
    p = torchrun('train.py', *TINY, f'--dataset={char_dataset}', f'--out_dir={tmp_path / "ddp"}',
                 '--init_from=resume', '--max_iters=14', '--gradient_accumulation_steps=2')
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count('note: random state not restored: saved by 1 process(es), this run has 2') == 1
    assert load(tmp_path / 'ddp' / 'ckpt.pt')['iter_num'] == 14
    s = script('sample.py', f'--out_dir={tmp_path / "ddp"}', '--device=cpu', '--num_samples=1',
               '--max_new_tokens=20', '--start=F')
    assert len(s.out.strip()) > 0


def test_two_ranks_equal_one_rank_accumulating(tmp_path, script):
    """2 processes x 1 micro-step == 1 process x 2 micro-steps. Each split holds exactly one window,
    so every process draws the same batch whatever its seed."""
    data = write_char_dataset(tmp_path / 'one_window', text='abcdefghijklmnopqrstuvwxyz0123456789' * 3)
    ids = np.fromfile(data / 'val.bin', dtype=np.uint16)
    np.fromfile(data / 'train.bin', dtype=np.uint16)[:33].tofile(data / 'train.bin')  # block_size + 1
    np.concatenate([ids] * 10)[:33].tofile(data / 'val.bin')
    common = [f'--dataset={data}', '--max_iters=1', '--gradient_accumulation_steps=2']
    p = torchrun('train.py', *TINY, *common, f'--out_dir={tmp_path / "ddp"}')
    assert p.returncode == 0, p.stderr[-3000:]
    script('train.py', *TINY, *common, f'--out_dir={tmp_path / "single"}')
    a, b = load(tmp_path / 'ddp' / 'ckpt.pt')['model'], load(tmp_path / 'single' / 'ckpt.pt')['model']
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_accumulation_not_divisible_by_world_size(char_dataset, tmp_path):
    p = torchrun('train.py', *TINY, f'--dataset={char_dataset}', f'--out_dir={tmp_path / "out"}',
                 '--gradient_accumulation_steps=3')
    assert p.returncode != 0
    msg = 'error: gradient_accumulation_steps=3 is not divisible by the 2 processes'
    # every rank checks it before any collective, so none hangs; regression: every rank printed it
    assert p.stderr.count(msg) == 1, p.stderr[-3000:]
    assert not (tmp_path / 'out').exists()


def test_an_unknown_backend_is_one_line(char_dataset, tmp_path):
    """Regression: --backend=nosuch ended in an AssertionError traceback from every process."""
    p = torchrun('train.py', *TINY, f'--dataset={char_dataset}', f'--out_dir={tmp_path / "out"}',
                 '--gradient_accumulation_steps=2', '--backend=nosuch')
    assert p.returncode != 0 and 'AssertionError' not in p.stderr
    assert p.stderr.count("error: backend='nosuch': use 'nccl', 'gloo', 'mpi' or ''") == 1, p.stderr[-3000:]


def test_a_numbered_cuda_device_is_refused(char_dataset, tmp_path):
    """Regression: only a bare --device=cuda was mapped to cuda:LOCAL_RANK, so --device=cuda:0 put every
    process on the same GPU (NCCL: 'Duplicate GPU detected')."""
    p = torchrun('train.py', *TINY, f'--dataset={char_dataset}', f'--out_dir={tmp_path / "out"}',
                 '--gradient_accumulation_steps=2', '--device=cuda:0')
    assert p.returncode != 0
    msg = ('--device=cuda:0: under torchrun each process takes GPU LOCAL_RANK; use --device=cuda and choose '
           'the GPUs with CUDA_VISIBLE_DEVICES')
    assert p.stderr.count(msg) == 1, p.stderr[-3000:]  # printed by one process only


def test_ctrl_c_during_evaluation_stops_every_process_cleanly(trained, trained_copy):
    """Regression: rank 0 evaluated alone while the others waited for it in the next step's gradient
    all-reduce; a Ctrl-C mid-evaluation then killed rank 1 with gloo's 'Connection closed by peer' and no
    checkpoint was written. Every process evaluates its share and checks for a stop between batches."""
    proc = torchrun('train.py', *TINY, f'--dataset={trained.data}', f'--out_dir={trained_copy}',
                    '--init_from=resume', '--max_iters=1000', '--eval_interval=61', '--eval_iters=100000',
                    '--gradient_accumulation_steps=2', popen=True)
    for line in proc.stdout:
        if line.startswith('iter 61:'):
            break
    time.sleep(0.5)  # well into the evaluation
    t0 = time.time()
    proc.send_signal(signal.SIGINT)  # torchrun passes it on to its workers, as after a Ctrl-C in a terminal
    out, err = proc.communicate(timeout=120)
    assert time.time() - t0 < 20, err[-3000:]
    assert 'Connection closed' not in err and 'stopped by SIGINT at iter 61' in err, err[-3000:]
    ckpt = load(trained_copy / 'ckpt.pt')
    assert ckpt['iter_num'] == 61 and ckpt['evaluated'] is False
