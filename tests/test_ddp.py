"""train.py under torchrun on CPU (gloo): 2 processes on one machine.
Run: python -m pytest -q tests/test_ddp.py"""
import os
import re
import shutil
import signal
import time

import numpy as np
import pytest
import torch

from conftest import TINY, chars_of, torchrun, write_char_dataset
from model import GPT, GPTConfig

pytestmark = pytest.mark.slow  # every test here starts torchrun (but one)


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def test_two_processes_train_log_once_and_stay_identical(ddp_run):
    """The shared DDP run of conftest.py: 2 processes of 2 micro-steps, 30 iterations, with a peak for MFU,
    the val task at each evaluation and TensorBoard."""
    out = ddp_run.stdout
    # regression: MFU counted the whole job's tokens against one device's peak (2x too high here)
    line = next(line for line in out.splitlines() if line.startswith('iter 6:'))  # the first MFU figure
    mfu, tok_s = float(re.search(r'mfu ([\d.]+)%', line)[1]) / 100, float(re.search(r'tok/s ([\d,]+)', line)[1].replace(',', ''))
    vocab = len(chars_of(ddp_run.data))
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=vocab, bias=False))
    flops_per_token = 6 * model.get_num_params() + 12 * 2 * 2 * 16 * 32
    assert abs(mfu / (flops_per_token * tok_s / 2 / 1e10) - 1) < 0.02, line
    assert out.count('iter 30: loss') == 1 and out.count('step 30: train loss') == 1
    assert out.count('Overriding: max_iters = 30') == 1
    assert out.count('decayed tensors: ') == 1  # regression: every process printed its optimizer groups
    assert 'tokens per iteration 512' in out  # 2 processes x 2 micro-steps x 4 x 32
    assert 'parameters identical on all 2 processes' in out
    # the eval tasks shard their windows over the processes; rank 0 alone logs and writes TensorBoard's files
    assert out.count('; val: loss ') == 7  # evaluations at 0, 5, ..., 30
    assert sorted(os.listdir(ddp_run.out)) == ['ckpt.pt', 'tensorboard']
    assert len(os.listdir(ddp_run.out / 'tensorboard')) == 1


def test_resumes_across_process_counts_and_a_ctrl_c_mid_evaluation_stops_cleanly(ddp_run, tmp_path, script):
    """A DDP checkpoint resumes in one process, and a one-process checkpoint under torchrun; with another
    number of processes no random state is restored (regression: ranks that had a saved state took it up
    and the others did not), and the log says so.
    That torchrun run is then stopped by a Ctrl-C during an evaluation. Regression: rank 0 evaluated alone
    while the others waited for it in the next step's gradient all-reduce; a Ctrl-C mid-evaluation then
    killed rank 1 with gloo's 'Connection closed by peer' and no checkpoint was written. Every process
    evaluates its share and checks for a stop between batches."""
    run, data = tmp_path / 'ddp', ddp_run.data
    shutil.copytree(ddp_run.out, run)
    p = script('train.py', *TINY, f'--dataset={data}', f'--out_dir={run}', '--init_from=resume', '--max_iters=32')
    assert 'note: random state not restored: saved by 2 process(es), this run has 1' in p.out
    assert load(run / 'ckpt.pt')['iter_num'] == 32
    proc = torchrun('train.py', *TINY, f'--dataset={data}', f'--out_dir={run}', '--init_from=resume',
                    '--max_iters=1000', '--eval_interval=33', '--eval_iters=100000',  # minutes of evaluation at 33
                    '--gradient_accumulation_steps=2', popen=True)
    head = []
    for line in proc.stdout:
        head.append(line)
        if line.startswith('iter 33:'):
            break
    time.sleep(0.5)  # well into the evaluation
    t0 = time.time()
    proc.send_signal(signal.SIGINT)  # torchrun passes it on to its workers, as after a Ctrl-C in a terminal
    out, err = proc.communicate(timeout=120)
    out = ''.join(head) + out
    assert time.time() - t0 < 20, err[-3000:]
    assert 'Connection closed' not in err and 'stopped by SIGINT at iter 33' in err, err[-3000:]
    assert out.count('note: random state not restored: saved by 1 process(es), this run has 2') == 1, out
    ckpt = load(run / 'ckpt.pt')
    assert ckpt['iter_num'] == 33 and ckpt['evaluated'] is False
    s = script('sample.py', f'--out_dir={run}', '--device=cpu', '--num_samples=1', '--max_new_tokens=20', '--start=F')
    text = s.out.split('\n---')[0]  # the sample, before its separator line
    assert text.startswith('F') and len(text) == 21 and set(text) <= set(chars_of(data)), s.out


@pytest.mark.parametrize('optimizer', ['adamw', 'muon'])
def test_two_ranks_equal_one_rank_accumulating(tmp_path, script, optimizer):
    """2 processes x 1 micro-step == 1 process x 2 micro-steps. Each split holds exactly one window,
    so every process draws the same batch whatever its seed. Muon: every process orthogonalises the
    same all-reduced gradient."""
    data = write_char_dataset(tmp_path / 'one_window', text='abcdefghijklmnopqrstuvwxyz0123456789' * 3)
    ids = np.fromfile(data / 'val.bin', dtype=np.uint16)
    np.fromfile(data / 'train.bin', dtype=np.uint16)[:33].tofile(data / 'train.bin')  # block_size + 1
    np.concatenate([ids] * 10)[:33].tofile(data / 'val.bin')
    common = [f'--dataset={data}', '--max_iters=1', '--gradient_accumulation_steps=2', f'--optimizer={optimizer}']
    p = torchrun('train.py', *TINY, *common, f'--out_dir={tmp_path / "ddp"}')
    assert p.returncode == 0, p.stderr[-3000:]
    script('train.py', *TINY, *common, f'--out_dir={tmp_path / "single"}')
    a, b = load(tmp_path / 'ddp' / 'ckpt.pt')['model'], load(tmp_path / 'single' / 'ckpt.pt')['model']
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


@pytest.mark.parametrize('setting, msg', [
    # regression: every rank printed it
    ('--gradient_accumulation_steps=3', 'error: gradient_accumulation_steps=3 is not divisible by the 2 processes; '
                                        'make it a multiple of 2'),
    # regression: an AssertionError traceback from every process
    ('--backend=nosuch', "error: backend='nosuch': use 'nccl', 'gloo', 'mpi' or ''"),
    # regression: only a bare --device=cuda was mapped to cuda:LOCAL_RANK, so --device=cuda:0 put every
    # process on the same GPU (NCCL: 'Duplicate GPU detected')
    ('--device=cuda:0', "error: --device=cuda:0: under torchrun each process takes GPU LOCAL_RANK; use "
                        "--device=cuda and choose the GPUs with CUDA_VISIBLE_DEVICES"),
])
def test_bad_ddp_settings_stop_every_rank_before_any_collective(char_dataset, tmp_path, script, monkeypatch,
                                                                setting, msg):
    """Each rank of a torchrun job (run here in this process, with the environment torchrun gives it) checks
    these settings before it joins the others, so none waits in a collective. Rank 0 prints the line at
    once; the others wait for torchrun to stop them (5 s, skipped here) and print it only if it does not."""
    import configurator
    waits = []
    monkeypatch.setattr(configurator.time, 'sleep', waits.append)
    args = [a for a in TINY if not a.startswith('--device')]
    for rank in (0, 1):
        monkeypatch.setenv('RANK', str(rank))
        monkeypatch.setenv('LOCAL_RANK', str(rank))
        monkeypatch.setenv('WORLD_SIZE', '2')
        p = script('train.py', *args, f'--dataset={char_dataset}', f'--out_dir={tmp_path / "out"}',
                   '--gradient_accumulation_steps=2', setting, check=False)
        assert p.code == 2 and 'Traceback' not in p.err, p.err
        assert p.err.startswith(msg) and p.err.count('\n') == 1, p.err
        assert p.err.endswith(' (rank 1)\n') == (rank == 1), p.err
        assert waits == [5] * rank  # rank 1 waited before it printed
    assert not (tmp_path / 'out').exists()
