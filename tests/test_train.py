"""train.py end to end on a tiny character dataset: learning, checkpoints, exact resume, interruption,
non-finite losses and bad input. Run: python -m pytest -q tests/test_train.py"""
import math
import os
import pickle
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import REPO, TINY, run, write_char_dataset
from model import GPT, GPTConfig, resolve_dtype


def train(data, out, *args, check=True, cwd=None, env=None):
    return run('train.py', *TINY, f'--dataset={data}', f'--out_dir={out}', *args, check=check, cwd=cwd, env=env)


def losses(stdout):
    """The iter/step lines with the timing fields removed: what must repeat exactly."""
    return [re.sub(r'time \S+ms, mfu \S+, tok/s [\d,]+, ', '', line) for line in stdout.splitlines()
            if line.startswith(('iter ', 'step '))]


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def assert_one_line_error(p, text):
    assert p.returncode != 0, p.stdout[-1000:]
    assert 'Traceback' not in p.stderr, p.stderr
    assert text in p.stderr, p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith('error: ')


def test_learns_and_checkpoint_loads(char_dataset, tmp_path):
    p = train(char_dataset, tmp_path / 'out', '--max_iters=60', '--lr_decay_iters=60', '--learning_rate=1e-2',
              '--eval_interval=20', '--eval_iters=5')
    vocab = pickle.load(open(char_dataset / 'meta.pkl', 'rb'))['vocab_size']
    val = [float(m) for m in re.findall(r'val loss ([\d.]+)', p.stdout)]
    assert val[0] > math.log(vocab) - 0.3 and val[-1] < 0.6 * math.log(vocab), p.stdout
    assert re.search(r'^iter 60: loss [\d.]+, time [\d.]+ms, mfu n/a, tok/s [\d,]+, grad norm [\d.]+, lr ',
                     p.stdout, re.M)
    assert len(losses(p.stdout)) == 60 + 4  # exactly max_iters steps; evals at 0, 20, 40 and the end
    ckpt = load(tmp_path / 'out' / 'ckpt.pt')
    assert ckpt['iter_num'] == 60 and ckpt['best_val_loss'] == pytest.approx(min(val), abs=1e-4)
    assert ckpt['config']['dataset'] == str(char_dataset) and ckpt['config']['max_iters'] == 60
    model = GPT(GPTConfig(**ckpt['model_args']))
    model.load_state_dict(ckpt['model'])
    assert not any(k.startswith('_orig_mod') for k in ckpt['model'])
    assert not os.path.exists(tmp_path / 'out' / 'ckpt.pt.tmp')

    # eval_only with a resumed model: the same losses again, nothing written
    before = (tmp_path / 'out' / 'ckpt.pt').read_bytes()
    p = train(char_dataset, tmp_path / 'out', '--init_from=resume', '--eval_only=True', '--max_iters=60',
              '--eval_iters=5')
    assert f"val loss {val[-1]:.4f}" in p.stdout and not re.search(r'^iter ', p.stdout, re.M)
    assert (tmp_path / 'out' / 'ckpt.pt').read_bytes() == before
    # regression: eval_only from scratch created out_dir, though it writes nothing
    train(char_dataset, tmp_path / 'fresh', '--eval_only=True')
    assert not (tmp_path / 'fresh').exists()


def test_resume_is_bitwise_identical(char_dataset, tmp_path):
    """2N iterations in one go log the same losses as N, then N more after --init_from=resume."""
    args = ['--dropout=0.1', '--gradient_accumulation_steps=2', '--lr_decay_iters=20', '--eval_interval=5']
    whole = train(char_dataset, tmp_path / 'a', *args, '--max_iters=20')
    first = train(char_dataset, tmp_path / 'b', *args, '--max_iters=10')
    second = train(char_dataset, tmp_path / 'b', *args, '--max_iters=20', '--init_from=resume')
    assert 'changed: max_iters 10 -> 20' in second.stdout
    assert losses(whole.stdout) == losses(first.stdout) + losses(second.stdout)
    a, b = load(tmp_path / 'a' / 'ckpt.pt'), load(tmp_path / 'b' / 'ckpt.pt')
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])


def test_gradient_accumulation_matches_a_bigger_batch(char_dataset, tmp_path):
    """batch 8 x 1 micro-step and 4 x 2 draw the same windows; the gradients (and the step) must agree."""
    one = train(char_dataset, tmp_path / 'a', '--batch_size=8', '--max_iters=1', '--always_save_checkpoint=True')
    two = train(char_dataset, tmp_path / 'b', '--batch_size=4', '--gradient_accumulation_steps=2',
                '--max_iters=1')
    norm = lambda p: float(re.search(r'grad norm ([\d.]+)', p.stdout).group(1))
    assert norm(one) == pytest.approx(norm(two), rel=1e-3)
    a, b = load(tmp_path / 'a' / 'ckpt.pt')['model'], load(tmp_path / 'b' / 'ckpt.pt')['model']
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_finetune_from_local_hf_directory(tmp_path):
    transformers = pytest.importorskip('transformers')
    data = write_char_dataset(tmp_path / 'data')
    vocab = pickle.load(open(data / 'meta.pkl', 'rb'))['vocab_size']
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=vocab, n_positions=64)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / 'hf')
    p = train(data, tmp_path / 'out', f'--init_from={tmp_path / "hf"}', '--max_iters=3', '--dropout=0.1')
    ckpt = load(tmp_path / 'out' / 'ckpt.pt')
    assert ckpt['iter_num'] == 3 and ckpt['model_args']['block_size'] == 32  # cropped from 64
    assert ckpt['model_args']['bias'] is True and ckpt['model_args']['dropout'] == 0.1
    assert 'iter 3: loss' in p.stdout
    # regression: resuming with the settings the fine-tune was started with (no shape settings, as in
    # config/finetune_shakespeare.py) was refused for the default shape; and changed AdamW settings
    # were listed as changed but the checkpoint's were kept
    p = run('train.py', '--device=cpu', '--compile=False', f'--dataset={data}', f'--out_dir={tmp_path / "out"}',
            '--init_from=resume', '--max_iters=5', '--eval_interval=5', '--eval_iters=2', '--batch_size=4',
            '--gradient_accumulation_steps=1', '--beta1=0.5', '--weight_decay=0.5')
    assert 'iter 5: loss' in p.stdout and 'beta1 0.9 -> 0.5' in p.stdout and 'n_layer' not in p.stdout
    assert 'tokens per iteration 128' in p.stdout  # 4 x 32, the checkpoint's block_size, not the default 1024
    ckpt = load(tmp_path / 'out' / 'ckpt.pt')
    assert ckpt['iter_num'] == 5 and ckpt['model_args']['block_size'] == 32
    groups = ckpt['optimizer']['param_groups']
    assert [g['betas'][0] for g in groups] == [0.5, 0.5] and [g['weight_decay'] for g in groups] == [0.5, 0.0]
    # regression: a block_size longer than the pretrained context crashed in the first forward
    p = train(data, tmp_path / 'out2', f'--init_from={tmp_path / "hf"}', '--block_size=128', check=False)
    assert_one_line_error(p, f"block_size=128 is longer than the context of {tmp_path / 'hf'} (64); use --block_size=64")


def start_long_run(data, out):
    """A tiny training run that would go on for a long time, to be interrupted."""
    return subprocess.Popen([sys.executable, str(REPO / 'train.py'), *TINY, f'--dataset={data}',
                             f'--out_dir={out}', '--max_iters=100000', '--eval_interval=1000'],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED='1'))


def test_sigint_saves_the_last_completed_iteration(char_dataset, tmp_path):
    proc = start_long_run(char_dataset, tmp_path / 'out')
    for line in proc.stdout:
        if line.startswith('iter 5:'):
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    last = int(re.findall(r'^iter (\d+):', out, re.M)[-1]) if 'iter ' in out else 5
    assert f'stopped by SIGINT at iter {last}' in err
    assert load(tmp_path / 'out' / 'ckpt.pt')['iter_num'] == last
    p = train(char_dataset, tmp_path / 'out', '--init_from=resume', f'--max_iters={last + 2}', '--eval_interval=1')
    assert f'iter {last + 2}: loss' in p.stdout
    # regression: a stop skips its evaluation to be quick, and the resumed run skipped it as well
    assert f'step {last}: train loss' in p.stdout


def test_reader_quitting_early_stops_like_a_signal(char_dataset, tmp_path):
    """Regression: with stdout piped into a reader that quits early (| grep -m1 iter), the next log
    line raised BrokenPipeError: a traceback, and the iterations since the last checkpoint were lost.
    Now it stops as on a signal: a checkpoint, a line on stderr, exit code 141 (a SIGPIPE'd process's)."""
    proc = subprocess.Popen([sys.executable, str(REPO / 'train.py'), *TINY, f'--dataset={char_dataset}',
                             f'--out_dir={tmp_path / "out"}', '--max_iters=100000', '--eval_interval=1000'],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # block-buffered
    for line in proc.stdout:
        if line.startswith('iter 3:'):
            break
    proc.stdout.close()  # the reader goes away
    code = proc.wait(timeout=120)
    err = proc.stderr.read()
    assert code == 141, err
    assert 'Traceback' not in err, err
    last = int(re.search(r'stopped by SIGPIPE at iter (\d+)', err).group(1))
    assert last > 3 and load(tmp_path / 'out' / 'ckpt.pt')['iter_num'] == last


def test_kill_during_save_leaves_a_loadable_checkpoint(char_dataset, tmp_path):
    out = tmp_path / 'out'
    proc = subprocess.Popen([sys.executable, str(REPO / 'train.py'), *TINY, f'--dataset={char_dataset}',
                             f'--out_dir={out}', '--max_iters=100000', '--eval_interval=1', '--eval_iters=1',
                             '--n_embd=256', '--n_layer=4'],  # a checkpoint of ~40 MB: slow to write
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, killed = time.time() + 120, False
    while time.time() < deadline and not killed:
        if (out / 'ckpt.pt').exists() and (out / 'ckpt.pt.tmp').exists():
            proc.kill()  # SIGKILL while the next checkpoint is being written
            killed = True
        time.sleep(0.001)
    proc.kill()
    proc.wait()
    assert killed, 'never caught a save in progress'
    assert load(out / 'ckpt.pt')['iter_num'] >= 1  # the previous checkpoint, whole


def test_non_finite_loss_stops_and_keeps_the_checkpoint(char_dataset, tmp_path):
    train(char_dataset, tmp_path / 'out', '--max_iters=5')
    before = (tmp_path / 'out' / 'ckpt.pt').read_bytes()
    p = train(char_dataset, tmp_path / 'out', '--init_from=resume', '--max_iters=100', '--learning_rate=1e12',
              '--decay_lr=False', '--grad_clip=0.0', check=False)
    assert_one_line_error(p, 'the last checkpoint was left as it was')
    assert re.search(r'loss is (nan|inf) at iter \d+', p.stderr)
    assert (tmp_path / 'out' / 'ckpt.pt').read_bytes() == before


def test_bad_checkpoints_are_refused(char_dataset, tmp_path):
    out = tmp_path / 'out'
    train(char_dataset, out, '--max_iters=1')
    good = (out / 'ckpt.pt').read_bytes()
    # another shape: every differing key is named
    p = train(char_dataset, out, '--init_from=resume', '--n_layer=3', '--n_embd=64', check=False)
    assert_one_line_error(p, 'n_layer: checkpoint 2, requested 3; n_embd: checkpoint 32, requested 64')
    # another vocabulary
    other = write_char_dataset(tmp_path / 'other', text='abcdefg hij\n' * 100)
    p = train(other, out, '--init_from=resume', check=False)
    assert_one_line_error(p, 'vocab_size: checkpoint')
    # a char-level checkpoint on a dataset whose meta.pkl went missing
    os.remove(other / 'meta.pkl')
    p = train(other, out, '--init_from=resume', check=False)
    # regression: the advice was to rerun prepare.py to write a meta.pkl, which a BPE dataset never has
    assert_one_line_error(p, f"the model does not fit the dataset (vocab_size: checkpoint 33, dataset: GPT-2 "
                             f"BPE, as {other} has no meta.pkl); pick the dataset it was trained on")
    # truncated
    (out / 'ckpt.pt').write_bytes(good[:len(good) // 2])
    p = train(char_dataset, out, '--init_from=resume', check=False)
    assert_one_line_error(p, 'is corrupted or not a checkpoint')
    assert (out / 'ckpt.pt').read_bytes() == good[:len(good) // 2]  # left for the user to inspect


@pytest.mark.parametrize('args, message', [
    (['--batch_size=0'], 'batch_size=0 must be positive'),
    (['--block_size=-4'], 'block_size=-4 must be positive'),
    (['--n_embd=30', '--n_head=4'], 'n_embd=30 is not divisible by n_head=4'),
    (['--device=cuda'], 'CUDA is not available here; use --device=cpu'),
    (['--dtype=float8'], "dtype='float8': use"),
    (['--block_size=600'], 'fewer than block_size + 1 = 601'),
    (['--init_from=gpt3'], "init_from='gpt3': use"),
    (['--init_from=resume'], '--init_from=resume but'),
    # regressions: AdamW's own ValueErrors came out as tracebacks
    (['--learning_rate=-1'], 'Invalid learning rate: -1.0; check learning_rate, beta1, beta2 and weight_decay'),
    (['--beta1=2'], 'Invalid beta parameter at index 0: 2.0; check'),
    # regressions: a negative grad_clip turned clipping off, a negative peak_flops gave a negative MFU
    (['--grad_clip=-1'], 'grad_clip=-1.0 must be >= 0 (0 disables clipping)'),
    (['--peak_flops=-1'], 'peak_flops=-1.0 must be >= 0 (0 looks the GPU up)'),
])
def test_bad_settings(char_dataset, tmp_path, args, message):
    if args == ['--device=cuda'] and torch.cuda.is_available():
        pytest.skip('CUDA is available here')
    p = train(char_dataset, tmp_path / 'out', *args, check=False)
    assert_one_line_error(p, message)


def test_missing_dataset_and_unwritable_out_dir(tmp_path):
    p = run('train.py', *TINY, '--dataset=no_such_dataset', check=False)
    assert_one_line_error(p, 'train.bin not found: run  python data/no_such_dataset/prepare.py')
    # regression: a folder path that does not exist was sent to 'python data//tmp/.../prepare.py'
    p = run('train.py', *TINY, f'--dataset={tmp_path / "nowhere"}', check=False)
    assert_one_line_error(p, f"dataset='{tmp_path / 'nowhere'}' is not a folder; give a folder holding")
    data = write_char_dataset(tmp_path / 'd')
    (tmp_path / 'file').write_text('x')
    p = train(data, tmp_path / 'file' / 'out', check=False)
    assert_one_line_error(p, 'cannot create out_dir')


def test_bfloat16_without_support_is_refused(monkeypatch):
    """Also a regression: torch.cuda.is_bf16_supported() is True on a T4 (it counts emulation), so 'auto'
    picked a slow emulated bfloat16 there instead of float16 with a GradScaler."""
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda *a, **k: (7, 5))
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda *a, **k: 'Tesla T4')
    with pytest.raises(ValueError, match='bfloat16 is not supported natively by Tesla T4; use --dtype=float16'):
        resolve_dtype('cuda', 'bfloat16')
    assert resolve_dtype('cuda', 'auto') == 'float16'
    assert resolve_dtype('cpu', 'auto') == 'float32'


def test_wandb_offline_and_resume_continues_the_run(char_dataset, tmp_path):
    pytest.importorskip('wandb')
    train(char_dataset, tmp_path / 'out', '--wandb_log=True', '--max_iters=5', cwd=tmp_path)
    run_id = load(tmp_path / 'out' / 'ckpt.pt')['wandb_run_id']
    assert run_id and list((tmp_path / 'wandb').glob(f'offline-run-*-{run_id}'))
    train(char_dataset, tmp_path / 'out', '--wandb_log=True', '--max_iters=8', '--init_from=resume', cwd=tmp_path)
    assert load(tmp_path / 'out' / 'ckpt.pt')['wandb_run_id'] == run_id


def test_single_gpu_setup_gets_past_device_selection(char_dataset, tmp_path):
    """Regression: train.py called torch.cuda.set_device('cuda'), which raises 'Expected a torch.device
    with a specified index' on every single-GPU run. CUDA is faked here (a sitecustomize shim) so the
    run goes through the CUDA setup path; it fails later, at the first real CUDA tensor."""
    shim = tmp_path / 'shim'
    shim.mkdir()
    (shim / 'sitecustomize.py').write_text(
        "import torch\n"
        "from torch._utils import _get_device_index\n"
        "torch.cuda.is_available = lambda: True\n"
        "torch.cuda.get_device_capability = lambda *a, **k: (9, 0)\n"
        "import sys\n"
        "def set_device(d):\n"
        "    print('set_device', _get_device_index(torch.device(d) if isinstance(d, str) else d), file=sys.stderr)\n"
        "torch.cuda.set_device = set_device\n")
    args = [a for a in TINY if not a.startswith(('--device', '--dtype'))]
    p = run('train.py', *args, f'--dataset={char_dataset}', f'--out_dir={tmp_path / "out"}', '--device=cuda',
            check=False, env={'PYTHONPATH': str(shim)})
    assert 'specified index' not in p.stderr and 'set_device' not in p.stderr, p.stderr[-2000:]
    assert 'device cuda, dtype bfloat16, 1 process(es)' in p.stdout, p.stderr[-2000:]
    # regression: with --device=cuda:1 the current GPU stayed 0, so the CUDA random state was saved and
    # restored on GPU 0 (torch.cuda.get_rng_state's default), and a context was made there
    p = run('train.py', *args, f'--dataset={char_dataset}', f'--out_dir={tmp_path / "out"}', '--device=cuda:1',
            check=False, env={'PYTHONPATH': str(shim)})
    assert 'set_device 1' in p.stderr and 'device cuda:1, dtype bfloat16' in p.stdout, p.stderr[-2000:]


def test_resume_with_a_scaler_from_a_run_without_one(char_dataset, tmp_path):
    """Regression: a float32 or bfloat16 run saves its disabled GradScaler as {}; resumed with float16 on
    CUDA (an enabled scaler) that raised 'The source state dict is empty', reported as an optimizer
    state that does not fit. Simulated on the CPU with a shim that enables every GradScaler."""
    out = tmp_path / 'out'
    train(char_dataset, out, '--max_iters=2')
    shim = tmp_path / 'shim'
    shim.mkdir()
    (shim / 'sitecustomize.py').write_text(
        "import torch\n"
        "_GradScaler = torch.amp.GradScaler\n"
        "torch.amp.GradScaler = lambda device, enabled=True, **kw: _GradScaler(device, enabled=True, **kw)\n")
    p = train(char_dataset, out, '--init_from=resume', '--max_iters=4', env={'PYTHONPATH': str(shim)})
    assert 'iter 4: loss' in p.stdout
    assert load(out / 'ckpt.pt')['scaler']['scale'] == 65536.0  # the enabled scaler's state, saved


def test_sigterm_after_sigint_still_saves(char_dataset, tmp_path):
    """Regression: under torchrun a Ctrl-C reaches the workers from the terminal and torchrun then
    sends them SIGTERM; that SIGTERM counted as a second Ctrl-C and killed them without a checkpoint.
    Only a repeated SIGINT quits at once."""
    proc = start_long_run(char_dataset, tmp_path / 'out')
    for line in proc.stdout:
        if line.startswith('iter 3:'):
            proc.send_signal(signal.SIGINT)
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert load(tmp_path / 'out' / 'ckpt.pt')['iter_num'] >= 3


def test_no_improvement_without_always_save_is_reported(char_dataset, tmp_path):
    """Regression: with always_save_checkpoint=False and a val loss that never beat the first
    evaluation, a run ended with exit code 0 and an empty out_dir, without a word."""
    p = train(char_dataset, tmp_path / 'out', '--always_save_checkpoint=False', '--learning_rate=0',
              '--decay_lr=False', '--max_iters=2', '--eval_interval=1')
    assert not (tmp_path / 'out' / 'ckpt.pt').exists()
    assert re.search(r"warning: no checkpoint was written: the val loss never went below \d\.\d{4}, the first "
                     r"evaluation's, and always_save_checkpoint is False", p.stderr), p.stderr


def test_failed_save_is_one_line_and_leaves_no_temp_file(char_dataset, tmp_path):
    """Regression: an error while writing the checkpoint (a full disk, here a folder in the way of the
    temp file) ended in a traceback."""
    out = tmp_path / 'out'
    train(char_dataset, out, '--max_iters=1')
    good = (out / 'ckpt.pt').read_bytes()
    (out / 'ckpt.pt.tmp').mkdir()
    p = train(char_dataset, out, '--init_from=resume', '--max_iters=2', '--eval_interval=1', check=False)
    assert_one_line_error(p, f"cannot write {out / 'ckpt.pt'} (")
    assert 'the previous checkpoint is unchanged' in p.stderr
    assert (out / 'ckpt.pt').read_bytes() == good
