"""train.py end to end on a tiny character dataset: learning, checkpoints, exact resume, interruption,
non-finite losses and bad input. Run: python -m pytest -q tests/test_train.py

Most runs go through the `script` fixture (train.py in this process), those stopped by a signal too
(signals_at sends it); the ones about pipes and SIGKILL are real subprocesses, marked slow."""
import ast
import contextlib
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import torch

import checkpoint
import corpus
import runtime
from conftest import (_run_here, REPO, TINY, TRAINED, assert_one_line_error, chars_of, in_process,
                      overwrite_largest_tensor, write_char_dataset)
from model import GPT, GPTConfig

SHAPE_FLAGS = ('--n_layer', '--n_head', '--n_embd', '--block_size')


@pytest.fixture
def train(script):
    """train(data, out, *args, check=True): train.py with the TINY settings, in this process."""
    return lambda data, out, *args, check=True: script('train.py', *TINY, f'--dataset={data}', f'--out_dir={out}',
                                                       *args, check=check)


def losses(stdout):
    """The iter/step lines with the timing fields removed: what must repeat exactly."""
    return [re.sub(r'time \S+ms( \([^)]*\))?, mfu \S+, tok/s [\d,]+, ', '', line) for line in stdout.splitlines()
            if line.startswith(('iter ', 'step '))]


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def test_learns_and_checkpoint_loads(trained, train, tmp_path):
    vocab = len(chars_of(trained.data))
    val = [float(m) for m in re.findall(r'val loss ([\d.]+)', trained.stdout)]
    assert val[0] > math.log(vocab) - 0.3 and val[-1] < 0.6 * math.log(vocab), trained.stdout
    assert re.search(r'^iter 60: loss [\d.]+, time [\d.]+ms \(data [\d.]+ms, fwd\+bwd [\d.]+ms, optim [\d.]+ms\), '
                     r'mfu n/a, tok/s [\d,]+, grad norm [\d.]+, lr ',
                     trained.stdout, re.M)
    assert len(losses(trained.stdout)) == 60 + 4  # exactly max_iters steps; evals at 0, 20, 40 and the end
    ckpt = load(trained.out / 'ckpt.pt')
    assert ckpt['iter_num'] == 60 and ckpt['best_val_loss'] == pytest.approx(min(val), abs=1e-4)
    assert ckpt['config']['dataset'] == str(trained.data) and ckpt['config']['max_iters'] == 60
    assert ckpt['checksum'] == checkpoint.digest(ckpt)  # sha256 of every tensor, checked when loading
    model = GPT(GPTConfig(**ckpt['model_args']))
    model.load_state_dict(ckpt['model'])
    assert not any(k.startswith('_orig_mod') for k in ckpt['model'])
    assert sorted(os.listdir(trained.out)) == ['ckpt.pt']  # no temp file, no interrupted.pt

    # eval_only with a resumed model: the same losses again, nothing written
    before = (trained.out / 'ckpt.pt').read_bytes()
    p = train(trained.data, trained.out, '--init_from=resume', '--eval_only=True', *TRAINED)
    assert f"val loss {val[-1]:.4f}" in p.out and not re.search(r'^iter ', p.out, re.M)
    assert (trained.out / 'ckpt.pt').read_bytes() == before
    # regression: eval_only from scratch created out_dir, though it writes nothing
    train(trained.data, tmp_path / 'fresh', '--eval_only=True')
    assert not (tmp_path / 'fresh').exists()


def get_lr(it, learning_rate, warmup_iters, lr_decay_iters, min_lr, lr_schedule='cosine', warmdown_frac=0.2):
    """get_lr lives in train.py, where a nanoGPT reader looks for it; its source is run here on its own."""
    tree = ast.parse((REPO / 'train.py').read_text())
    fn = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == 'get_lr')
    ns = dict(math=math, learning_rate=learning_rate, warmup_iters=warmup_iters, lr_decay_iters=lr_decay_iters,
              min_lr=min_lr, lr_schedule=lr_schedule, warmdown_frac=warmdown_frac)
    exec(compile(ast.Module([fn], type_ignores=[]), 'train.py', 'exec'), ns)
    return ns['get_lr'](it)


def test_lr_schedule():
    lr = lambda it: get_lr(it, 1.0, 10, 110, 0.1)
    assert lr(0) == pytest.approx(1 / 11)  # warmup starts above zero
    assert lr(9) == pytest.approx(10 / 11)
    assert lr(10) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.55)  # halfway through the cosine
    assert lr(110) == lr(500) == 0.1
    assert get_lr(5, 1.0, 10, 5, 0.1) == pytest.approx(6 / 11)  # decay ends before warmup: no crash
    assert get_lr(20, 1.0, 10, 5, 0.1) == 0.1
    assert get_lr(0, 1.0, 0, 10, 0.1) == 1.0


@pytest.mark.parametrize('schedule, at_decay_start, at_last_step', [
    ('cosine', 0.5 * (1 + math.cos(math.pi * 0.5)), 0.5 * (1 + math.cos(math.pi * 99 / 100))),
    ('linear', 0.5, 1 / 100),
    ('wsd', 1.0, 1 / 50),  # warmdown_frac 0.5: stable until halfway, then linear
])
def test_lr_schedules_at_their_endpoints(schedule, at_decay_start, at_last_step):
    """Warmup 10, decay to min_lr 0 at 110: step 0, warmup's end, halfway (WSD's decay starts), the last
    step, past the end. Muon's rate is these times muon_lr / learning_rate (test_optimizers.py)."""
    lr = lambda it: get_lr(it, 1.0, 10, 110, 0.0, schedule, warmdown_frac=0.5)
    assert lr(0) == pytest.approx(1 / 11)
    assert lr(10) == 1.0
    assert lr(60) == pytest.approx(at_decay_start)
    assert lr(61) < lr(60) and (lr(59) == 1.0) == (schedule == 'wsd')
    assert lr(109) == pytest.approx(at_last_step)
    assert lr(110) == lr(1000) == 0.0


def test_resume_is_bitwise_identical(resumed):
    """2N iterations in one go log the same losses as N, then N more after --init_from=resume (the shared
    runs of conftest.py: dropout, 2 micro-steps)."""
    second = resumed.second
    assert 'changed: max_iters 10 -> 20' in second.out
    assert 'note: random state restored for all 1 process(es)' in second.out
    assert len(losses(resumed.whole_log.out)) == 20 + 5  # every iteration; evaluations at 0, 5, 10, 15, 20
    assert losses(resumed.whole_log.out) == losses(resumed.first.out) + losses(second.out)
    assert losses(resumed.again.out) == losses(second.out)  # a second resume from 10 repeats the first
    a, b = load(resumed.whole / 'ckpt.pt'), load(resumed.ckpt20)
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])


def test_gradient_accumulation_matches_a_bigger_batch(tiny_data, tmp_path, train):
    """batch 8 x 1 micro-step and 4 x 2 draw the same windows; the gradients (and the step) must agree."""
    one = train(tiny_data, tmp_path / 'a', '--batch_size=8', '--max_iters=1')
    two = train(tiny_data, tmp_path / 'b', '--batch_size=4', '--gradient_accumulation_steps=2', '--max_iters=1')
    norm = lambda p: float(re.search(r'grad norm ([\d.]+)', p.out).group(1))
    assert norm(one) == pytest.approx(norm(two), rel=1e-3)
    a, b = load(tmp_path / 'a' / 'ckpt.pt')['model'], load(tmp_path / 'b' / 'ckpt.pt')['model']
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_finetune_from_local_hf_directory(tmp_path, tiny_data, train, script):
    transformers = pytest.importorskip('transformers')
    vocab = len(chars_of(tiny_data))
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=vocab, n_positions=64)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / 'hf')
    # no shape settings, as in config/finetune_shakespeare.py: the weights decide the shape
    args = [a for a in TINY if not a.startswith(SHAPE_FLAGS)]
    p = script('train.py', *args, f'--dataset={tiny_data}', f'--out_dir={tmp_path / "out"}',
               f'--init_from={tmp_path / "hf"}', '--max_iters=3', '--dropout=0.1', '--block_size=32')
    ckpt = load(tmp_path / 'out' / 'ckpt.pt')
    assert ckpt['iter_num'] == 3 and ckpt['model_args']['block_size'] == 32  # cropped from 64
    assert ckpt['model_args']['bias'] is True and ckpt['model_args']['dropout'] == 0.1
    # regression: the checkpoint's config held the default shape (12 layers, 768 wide, no bias)
    assert [ckpt['config'][k] for k in ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias')] == [2, 2, 32, 32, True]
    assert 'iter 3: loss' in p.out
    # regression: resuming with the settings the fine-tune was started with (no shape settings, as in
    # config/finetune_shakespeare.py) was refused for the default shape; changed AdamW settings were
    # listed as changed but the checkpoint's were kept; and the log listed 'bias False -> True' as changed
    p = script('train.py', '--device=cpu', '--compile=False', f'--dataset={tiny_data}', f'--out_dir={tmp_path / "out"}',
               '--init_from=resume', '--max_iters=5', '--eval_interval=5', '--eval_iters=2', '--batch_size=4',
               '--gradient_accumulation_steps=1', '--beta1=0.5', '--weight_decay=0.5')
    assert 'iter 5: loss' in p.out and 'beta1 0.9 -> 0.5' in p.out
    assert not re.search(r'changed: .*(n_layer|n_head|n_embd|block_size|bias) ', p.out), p.out
    assert 'tokens per iteration 128' in p.out  # 4 x 32, the checkpoint's block_size, not the default 1024
    ckpt = load(tmp_path / 'out' / 'ckpt.pt')
    assert ckpt['iter_num'] == 5 and ckpt['model_args']['block_size'] == 32
    groups = ckpt['optimizer']['param_groups']
    assert [g['betas'][0] for g in groups] == [0.5, 0.5] and [g['weight_decay'] for g in groups] == [0.5, 0.0]
    # regression: a block_size longer than the pretrained context crashed in the first forward
    p = train(tiny_data, tmp_path / 'out2', f'--init_from={tmp_path / "hf"}', '--block_size=128', check=False)
    assert_one_line_error(p, f"block_size=128 is longer than the context of {tmp_path / 'hf'} (64); use "
                             f"--block_size=64")


LONG_RUN = ['--max_iters=100000', '--eval_interval=1000']  # a run that would go on for a long time


@contextlib.contextmanager
def signals_at(prefix, *signals, delay=0.0):
    """While in it, the line of train.py's log that starts with prefix is followed by signals to this
    process, as a Ctrl-C in a terminal sends them (train.py runs in this process, whose main thread runs
    its handlers): at once, or after delay seconds from another thread while the run goes on. Yields a list
    that gets the time they were sent. A delayed signal not yet sent when the run ends is not sent. A run
    that would quit at once (os._exit, which would end this process too) raises an AssertionError instead."""
    log, sent, timers = runtime.log, [], []

    def quit_at_once(code):
        raise AssertionError(f"os._exit({code}): the run quit at once, without a checkpoint")

    def send():
        sent.append(time.time())
        for s in signals:
            os.kill(os.getpid(), s)

    def log_then_signal(msg):
        log(msg)
        if msg.startswith(prefix) and delay:
            timers.append(threading.Timer(delay, send))
            timers[-1].start()
        elif msg.startswith(prefix):
            send()
    try:
        with pytest.MonkeyPatch.context() as m:
            m.setattr(runtime, 'log', log_then_signal)
            m.setattr(os, '_exit', quit_at_once)
            yield sent
    finally:
        for timer in timers:
            timer.cancel()


@pytest.fixture(scope='module')
def stopped(tiny_data, tmp_path_factory):
    """A long run sent a SIGINT and at once a SIGTERM, as a launcher that passes a Ctrl-C on sends them,
    at its 'iter 5:' line: SimpleNamespace(code, out, err, out_dir). Tests that resume it work on a copy."""
    out_dir = tmp_path_factory.mktemp('stopped') / 'out'
    with signals_at('iter 5:', signal.SIGINT, signal.SIGTERM):
        p = in_process('train.py', *TINY, f'--dataset={tiny_data}', f'--out_dir={out_dir}', *LONG_RUN, check=False)
    return SimpleNamespace(code=p.code, out=p.out, err=p.err, out_dir=out_dir)


def test_sigint_saves_the_last_completed_iteration(stopped, tiny_data, tmp_path, train):
    """The stop (a SIGINT, followed by a SIGTERM as in test_sigterm_after_sigint_still_saves) saves the last
    completed iteration, and a resumed run goes on from it."""
    assert stopped.code == 130, stopped.err
    last = int(re.findall(r'^iter (\d+):', stopped.out, re.M)[-1]) if 'iter ' in stopped.out else 5
    assert f'stopped by SIGINT at iter {last}' in stopped.err
    assert load(stopped.out_dir / 'ckpt.pt')['iter_num'] == last
    shutil.copytree(stopped.out_dir, tmp_path / 'out')
    p = train(tiny_data, tmp_path / 'out', '--init_from=resume', f'--max_iters={last + 2}', '--eval_interval=1')
    assert f'iter {last + 2}: loss' in p.out
    # regression: a stop skips its evaluation to be quick, and the resumed run skipped it as well
    assert f'step {last}: train loss' in p.out


def test_sigint_keeps_the_best_checkpoint_without_always_save(tiny_data, tmp_path, train):
    """Regression: with always_save_checkpoint=False, Ctrl-C wrote the current weights over the
    best-val checkpoint. The stop's state goes to interrupted.pt, which resume reads."""
    out_dir = tmp_path / 'out'
    with signals_at('iter 5:', signal.SIGINT):
        p = train(tiny_data, out_dir, *LONG_RUN, '--always_save_checkpoint=False', '--eval_interval=3', check=False)
    out, err = p.out, p.err
    assert p.code == 130, err
    last = int(re.search(r'stopped by SIGINT at iter (\d+)', err).group(1))
    best, stopped = load(out_dir / 'ckpt.pt'), load(out_dir / 'interrupted.pt')
    assert stopped['iter_num'] == last and not stopped['evaluated']
    assert best['iter_num'] < last and best['iter_num'] % 3 == 0 and best['best_val_loss'] == stopped['best_val_loss']
    assert (f"saved checkpoint to {out_dir / 'interrupted.pt'} (iter {last}); {out_dir / 'ckpt.pt'} keeps the best "
            f"val loss ({best['best_val_loss']:.4f})") in out
    p = train(tiny_data, out_dir, '--init_from=resume', f'--max_iters={last + 2}', '--always_save_checkpoint=False')
    assert f"resuming from {out_dir / 'interrupted.pt'} at iter {last}" in p.out and f'iter {last + 2}: loss' in p.out
    assert not (out_dir / 'interrupted.pt').exists()  # the finished run went past it


@pytest.mark.slow  # a subprocess
def test_reader_quitting_early_stops_like_a_signal(tiny_data, tmp_path):
    """Regression: with stdout piped into a reader that quits early (| grep -m1 iter), the next log
    line raised BrokenPipeError: a traceback, and the iterations since the last checkpoint were lost.
    Now it stops as on a signal: a checkpoint, a line on stderr, exit code 141 (a SIGPIPE'd process's)."""
    proc = subprocess.Popen([sys.executable, str(REPO / 'train.py'), *TINY, f'--dataset={tiny_data}',
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


@pytest.mark.slow  # a subprocess
def test_kill_during_save_leaves_a_loadable_checkpoint(tiny_data, tmp_path):
    out = tmp_path / 'out'
    proc = subprocess.Popen([sys.executable, str(REPO / 'train.py'), *TINY, f'--dataset={tiny_data}',
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
    ckpt, _ = checkpoint.load(str(out / 'ckpt.pt'))  # the previous checkpoint, whole: its checksum holds
    GPT(GPTConfig(**ckpt['model_args'])).load_state_dict(ckpt['model'])  # and its weights fit the model


def test_ctrl_c_during_a_long_evaluation_stops_at_once(trained, trained_copy, train):
    """Regression: evaluation ran its eval_iters batches to the end before a Ctrl-C was noticed (45 s
    with no output). It checks between batches; the step is saved unevaluated."""
    with signals_at('iter 61:', signal.SIGINT, delay=0.5) as sent:  # 0.5 s: well into the evaluation
        p = train(trained.data, trained_copy, '--init_from=resume', '--max_iters=1000', '--eval_interval=61',
                  '--eval_iters=100000', check=False)  # an evaluation of minutes at iter 61
    out, err = p.out, p.err
    assert p.code == 130 and len(sent) == 1 and time.time() - sent[0] < 10, err
    assert 'step 61' not in out and 'stopped by SIGINT at iter 61' in err
    ckpt = load(trained_copy / 'ckpt.pt')
    assert ckpt['iter_num'] == 61 and ckpt['evaluated'] is False


def test_non_finite_loss_stops_and_keeps_the_checkpoint(trained, trained_copy, train):
    before = (trained_copy / 'ckpt.pt').read_bytes()
    p = train(trained.data, trained_copy, '--init_from=resume', '--max_iters=100', '--learning_rate=1e12',
              '--decay_lr=False', '--grad_clip=0.0', check=False)
    assert_one_line_error(p, 'the last checkpoint was left as it was')
    assert re.search(r'loss is (nan|inf) at iter \d+', p.err)
    assert (trained_copy / 'ckpt.pt').read_bytes() == before


def test_bad_checkpoints_are_refused(trained, trained_copy, train, tmp_path):
    out, data = trained_copy, trained.data
    good = (out / 'ckpt.pt').read_bytes()
    # another shape: every differing key is named
    p = train(data, out, '--init_from=resume', '--n_layer=3', '--n_embd=64', check=False)
    assert_one_line_error(p, 'n_layer: checkpoint 2, requested 3; n_embd: checkpoint 32, requested 64')
    # regression: a shape setting given with the default's value (12) was not noticed: the 2-layer model
    # was trained, while --n_layer=3 was refused
    p = train(data, out, '--init_from=resume', '--n_layer=12', check=False)
    assert_one_line_error(p, 'n_layer: checkpoint 2, requested 12')
    # another vocabulary: the checkpoint's own is compared with the dataset's
    other = write_char_dataset(tmp_path / 'other', text='abcdefg hij\n' * 100 + 'é')
    p = train(other, out, '--init_from=resume', check=False)
    assert_one_line_error(p, f"the model's vocabulary (33 characters) is not the dataset's (13 characters in "
                             f"{other / 'meta.json'}, with 'b' 'g' 'j' 'é' that the model lacks): pick the dataset")
    # a checkpoint without its vocabulary (an older one) on a dataset whose meta.json went missing
    checkpoint.save(str(out / 'ckpt.pt'), dict(load(out / 'ckpt.pt'), tokenizer=None))
    os.remove(other / 'meta.json')
    p = train(other, out, '--init_from=resume', check=False)
    # regression: the advice was to rerun prepare.py to write a meta.pkl, which a BPE dataset never has
    assert_one_line_error(p, f"the model has 33 tokens, fewer than GPT-2's 50257, so it needs its dataset's "
                             f"meta.json, which is not at {other / 'meta.json'}")
    # truncated
    (out / 'ckpt.pt').write_bytes(good[:len(good) // 2])
    p = train(data, out, '--init_from=resume', check=False)
    assert_one_line_error(p, 'it is truncated, corrupted or not a checkpoint')
    assert (out / 'ckpt.pt').read_bytes() == good[:len(good) // 2]  # left for the user to inspect
    # regression: an empty file raised IndexError in the handler that formats the message (EOFError has none)
    (out / 'ckpt.pt').write_bytes(b'')
    p = train(data, out, '--init_from=resume', check=False)
    assert_one_line_error(p, f"cannot read {out / 'ckpt.pt'}: it is truncated, corrupted or not a checkpoint "
                             f"(EOFError)")
    # regression: the bytes of a weight overwritten went unnoticed (torch.load reads them; training went on)
    (out / 'ckpt.pt').write_bytes(good)
    overwrite_largest_tensor(out / 'ckpt.pt')
    p = train(data, out, '--init_from=resume', check=False)
    assert_one_line_error(p, f"{out / 'ckpt.pt'} is damaged: its tensors do not match the checksum")


def test_checkpoint_without_scaler_or_random_state_resumes_with_notes(trained, trained_copy, train):
    """Regression: a checkpoint without 'scaler' or 'rng' (an older one, or nanoGPT's, whose keys may
    carry torch.compile's _orig_mod. prefix) was refused as corrupted."""
    ckpt = load(trained_copy / 'ckpt.pt')
    for key in ('scaler', 'rng', 'wandb_run_id', 'evaluated', 'checksum'):
        del ckpt[key]
    ckpt['model'] = {f'_orig_mod.{k}': v for k, v in ckpt['model'].items()}
    torch.save(ckpt, trained_copy / 'ckpt.pt')
    p = train(trained.data, trained_copy, '--init_from=resume', '--max_iters=62')
    for note in ('no random state: batches and dropout start from fresh seeds',
                 'no checksum: its tensors cannot be verified'):
        assert f'note: {note}' in p.out, p.out
    assert 'GradScaler' not in p.out  # float32 has no use for one
    assert 'iter 62: loss' in p.out and load(trained_copy / 'ckpt.pt')['iter_num'] == 62


def test_a_fresh_start_does_not_overwrite_a_checkpoint(trained, trained_copy, train):
    """Regression: training from scratch into an out_dir that held a checkpoint replaced it at the first
    evaluation, without a word."""
    before = (trained_copy / 'ckpt.pt').read_bytes()
    p = train(trained.data, trained_copy, check=False)
    assert_one_line_error(p, f"{trained_copy} already holds ckpt.pt of an earlier run; continue it with "
                             f"--init_from=resume, or start afresh over it with --overwrite=True")
    assert (trained_copy / 'ckpt.pt').read_bytes() == before
    train(trained.data, trained_copy, '--overwrite=True', '--max_iters=2')
    assert load(trained_copy / 'ckpt.pt')['iter_num'] == 2


@pytest.mark.parametrize('args, message', [
    (['--batch_size=0'], 'batch_size=0 must be positive'),
    (['--block_size=-4'], 'block_size=-4 must be positive'),
    (['--n_embd=30', '--n_head=4'], 'n_embd=30 is not divisible by n_head=4'),
    (['--device=cuda'], 'CUDA is not available here; use --device=cpu'),
    (['--device=gpu'], "device='gpu': use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"),
    (['--dtype=float8'], "dtype='float8': use"),
    (['--block_size=600'], 'fewer than block_size + 1 = 601'),
    (['--init_from=gpt3'], "init_from='gpt3': use"),
    (['--init_from=resume'], '--init_from=resume but'),
    # regressions: AdamW's own ValueErrors came out as tracebacks
    (['--learning_rate=-1'], 'Invalid learning rate: -1.0; check learning_rate, beta1, beta2 and weight_decay'),
    (['--beta1=2'], 'Invalid beta parameter at index 0: 2.0; check'),
    # regressions: a negative grad_clip turned clipping off, a negative peak_flops gave a negative MFU
    (['--grad_clip=-1'], 'grad_clip=-1.0 must be >= 0'),
    (['--peak_flops=-1'], 'peak_flops=-1.0 must be >= 0'),
    (['--sample_tokens=-3'], 'sample_tokens=-3 must be >= 0'),
    # regression: a dataset that does not exist was sent to 'python data/nosuch/prepare.py', which neither does
    (['--dataset=nosuch'], "no dataset 'nosuch': data/ has addition, chat, images, openwebtext, shakespeare, shakespeare_char, spelling; or give"),
])
def test_bad_settings(tiny_data, tmp_path, train, args, message):
    if args == ['--device=cuda'] and torch.cuda.is_available():
        pytest.skip('CUDA is available here')
    p = train(tiny_data, tmp_path / 'out', *args, check=False)
    assert_one_line_error(p, message)


def test_missing_dataset_files_and_unwritable_out_dir(tmp_path, train, script):
    (tmp_path / 'unprepared').mkdir()
    (tmp_path / 'unprepared' / 'prepare.py').write_text('')
    p = train(tmp_path / 'unprepared', tmp_path / 'out', check=False)
    assert_one_line_error(p, f"{tmp_path / 'unprepared' / 'train.bin'} not found: run  python ")
    assert p.err.strip().endswith(f"{os.path.relpath(tmp_path / 'unprepared' / 'prepare.py')}  (or train with "
                                  f"--prepare=True)")
    # regression: a folder path that does not exist was sent to 'python data//tmp/.../prepare.py'
    p = script('train.py', *TINY, f'--dataset={tmp_path / "nowhere"}', check=False)
    assert_one_line_error(p, f"dataset='{tmp_path / 'nowhere'}' is not a folder; give a folder holding")
    data = write_char_dataset(tmp_path / 'd')
    (tmp_path / 'file').write_text('x')
    p = train(data, tmp_path / 'file' / 'out', check=False)
    assert_one_line_error(p, 'cannot create out_dir')


def test_float16_trains_with_a_grad_scaler_on_every_device(trained, trained_copy, train):
    """Regression: --dtype=float16 on CPU (or MPS) trained without a GradScaler, though the settings say
    float16 uses one (bench.py enabled it everywhere). Resuming a float32 checkpoint, saved with a disabled
    scaler ({}), with an enabled one also used to fail ('The source state dict is empty')."""
    assert load(trained_copy / 'ckpt.pt')['scaler'] == {}
    p = train(trained.data, trained_copy, '--init_from=resume', '--max_iters=62', '--dtype=float16')
    assert 'iter 62: loss' in p.out and 'dtype float16' in p.out
    assert 'note: no GradScaler state in the checkpoint: it starts afresh' in p.out
    assert load(trained_copy / 'ckpt.pt')['scaler']['scale'] == 65536.0  # an enabled scaler's state, saved


def test_at_most_one_host_sync_per_log_interval(tiny_data, tmp_path, train, monkeypatch):
    """Regression: every iteration read (and under DDP all-reduced) the loss and the stop flag with
    .item(), which stalls the CPU until a GPU has caught up. 20 iterations logged every 10, evaluated at
    0 and 20: each evaluation reads 2 values per split, each log step 1 (loss, grad norm, stop flag)."""
    reads = []

    def spy(original, name):
        def read(self, *args):
            if sys._getframe(1).f_code.co_filename == str(REPO / 'train.py'):  # not torch's own reads
                reads.append(name)
            return original(self, *args)
        return read
    for name in ('item', 'tolist', '__bool__', '__float__', '__int__'):
        monkeypatch.setattr(torch.Tensor, name, spy(getattr(torch.Tensor, name), name))
    train(tiny_data, tmp_path / 'out', '--max_iters=20', '--log_interval=10', '--eval_interval=1000',
          '--eval_iters=3', '--lr_decay_iters=20')
    assert len(reads) <= 2 * 4 + 2, reads


def test_single_gpu_setup_gets_past_device_selection(tiny_data, tmp_path, monkeypatch, capsys):
    """Regression: train.py called torch.cuda.set_device('cuda'), which raises 'Expected a torch.device
    with a specified index' on every single-GPU run. CUDA is faked here (in this process) so the run goes
    through the CUDA setup path; it fails later, at the first real CUDA tensor."""
    import torch
    from torch._utils import _get_device_index
    current = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda *a, **k: (9, 0))
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setattr(torch.cuda, 'set_device', lambda d: current.append(_get_device_index(torch.device(d))))
    precision = torch.get_float32_matmul_precision()  # the CUDA path sets TF32, for the whole process
    args = [a for a in TINY if not a.startswith(('--device', '--dtype'))]
    try:
        for device in ('cuda', 'cuda:1'):
            monkeypatch.setattr(sys, 'argv', ['train.py', *args, f'--dataset={tiny_data}',
                                              f'--out_dir={tmp_path / "out"}', f'--device={device}'])
            with pytest.raises((AssertionError, RuntimeError), match='CUDA|cuda'):  # no GPU behind it
                _run_here('train.py')
            assert f'device {device}, dtype bfloat16, 1 process(es)' in capsys.readouterr().out
            # regression: with --device=cuda:1 the current GPU stayed 0, so the CUDA random state was saved
            # and restored on GPU 0 (torch.cuda.get_rng_state's default), and a context was made there
            assert current == ([] if device == 'cuda' else [1])
    finally:
        torch.set_float32_matmul_precision(precision)


def test_wandb_offline_and_resume_continues_the_run(tiny_data, tmp_path, train, monkeypatch):
    pytest.importorskip('wandb')
    monkeypatch.chdir(tmp_path)  # wandb writes its runs to ./wandb
    monkeypatch.setenv('WANDB_MODE', 'offline')
    train(tiny_data, tmp_path / 'out', '--wandb_log=True', '--max_iters=5')
    run_id = load(tmp_path / 'out' / 'ckpt.pt')['wandb_run_id']
    assert run_id and list((tmp_path / 'wandb').glob(f'offline-run-*-{run_id}'))
    train(tiny_data, tmp_path / 'out', '--wandb_log=True', '--max_iters=8', '--init_from=resume')
    assert load(tmp_path / 'out' / 'ckpt.pt')['wandb_run_id'] == run_id


def test_sigterm_after_sigint_still_saves(stopped):
    """Regression: a SIGTERM that follows a Ctrl-C (a launcher passing the stop on) counted as a second
    Ctrl-C and killed the run without a checkpoint. Only a repeated SIGINT quits at once."""
    assert stopped.code == 130, stopped.err
    assert load(stopped.out_dir / 'ckpt.pt')['iter_num'] >= 5


def test_no_improvement_without_always_save_is_reported(tiny_data, tmp_path, train):
    """Regression: with always_save_checkpoint=False and a val loss that never beat the first
    evaluation, a run ended with exit code 0 and an empty out_dir, without a word."""
    p = train(tiny_data, tmp_path / 'out', '--always_save_checkpoint=False', '--learning_rate=0',
              '--decay_lr=False', '--max_iters=2', '--eval_interval=1')
    assert not (tmp_path / 'out' / 'ckpt.pt').exists()
    assert re.search(r"warning: no checkpoint was written: the val loss never went below \d\.\d{4}, and "
                     r"always_save_checkpoint is False", p.err), p.err


def test_failed_save_is_one_line_and_leaves_no_temp_file(trained, trained_copy, train):
    """Regression: an error while writing the checkpoint (a full disk, here a folder in the way of the
    temp file) ended in a traceback."""
    good = (trained_copy / 'ckpt.pt').read_bytes()
    (trained_copy / 'ckpt.pt.tmp').mkdir()
    p = train(trained.data, trained_copy, '--init_from=resume', '--max_iters=61', '--eval_interval=1', check=False)
    assert_one_line_error(p, f"cannot write {trained_copy / 'ckpt.pt'} (")
    assert 'the previous checkpoint is unchanged' in p.err
    assert (trained_copy / 'ckpt.pt').read_bytes() == good


def test_resuming_an_unevaluated_checkpoint_keeps_its_best_weights(tiny_data, tmp_path, train):
    """Regression: a stop at an evaluation step saved interrupted.pt unevaluated; resuming evaluated it,
    but never saved at the start iteration, so an improved val loss was recorded and its weights lost."""
    out = tmp_path / 'out'
    train(tiny_data, out, '--max_iters=6', '--eval_interval=3', '--always_save_checkpoint=False')
    ckpt = dict(torch.load(out / 'ckpt.pt', weights_only=True), best_val_loss=99.0)  # at iter 6
    checkpoint.save(str(out / 'interrupted.pt'), dict(ckpt, evaluated=False))  # as a stop at iter 6 leaves it
    checkpoint.save(str(out / 'ckpt.pt'), dict(ckpt, iter_num=3))  # an older best
    p = train(tiny_data, out, '--init_from=resume', '--max_iters=6', '--always_save_checkpoint=False')
    assert 'step 6: train loss' in p.out and f"saved checkpoint to {out / 'ckpt.pt'} (iter 6)" in p.out
    assert load(out / 'ckpt.pt')['iter_num'] == 6 and not (out / 'interrupted.pt').exists()


def test_a_stop_before_the_first_step_says_nothing_was_saved(tiny_data, tmp_path, train, monkeypatch):
    """Regression: a Ctrl-C during the first evaluation said 'continue with --init_from=resume', which
    then found no checkpoint."""
    import runtime
    monkeypatch.setattr(runtime, 'catch_stop_signals', lambda: setattr(runtime, 'stop_signal', signal.SIGINT))
    p = train(tiny_data, tmp_path / 'out', check=False)
    assert p.code == 130 and 'stopped by SIGINT at iter 0; nothing was trained yet, so nothing was saved' in p.err
    assert not (tmp_path / 'out' / 'ckpt.pt').exists()


def test_a_stop_between_log_steps_still_checks_the_loss(trained, trained_copy, train, monkeypatch):
    """Regression: one process stopped at once on a signal between log steps, without the NaN check of
    the log step, and saved weights that had blown up over the last good checkpoint."""
    import runtime
    fetched, windows = [], corpus.windows

    def stop_at_the_third_batch(*args):
        fetched.append(1)
        if len(fetched) == 3:
            runtime.stop_signal = signal.SIGINT
        return windows(*args)
    monkeypatch.setattr(corpus, 'windows', stop_at_the_third_batch)
    before = (trained_copy / 'ckpt.pt').read_bytes()
    p = train(trained.data, trained_copy, '--init_from=resume', '--max_iters=1000', '--log_interval=100',
              '--learning_rate=1e12', '--decay_lr=False', '--grad_clip=0.0', check=False)
    assert_one_line_error(p, 'at iter 62; stopping, the last checkpoint was left as it was')
    assert (trained_copy / 'ckpt.pt').read_bytes() == before


def test_overwrite_removes_the_earlier_runs_checkpoints(trained, trained_copy, train):
    """Regression: --overwrite=True left the earlier run's interrupted.pt, which a later --init_from=resume
    took up if the new run died before its first checkpoint."""
    (trained_copy / 'interrupted.pt').write_bytes((trained_copy / 'ckpt.pt').read_bytes())
    p = train(trained.data, trained_copy, '--overwrite=True', '--learning_rate=1e12', '--decay_lr=False',
              '--grad_clip=0.0', '--max_iters=100', check=False)  # dies at the first non-finite loss
    assert_one_line_error(p, 'the last checkpoint was left as it was')
    assert sorted(os.listdir(trained_copy)) == []


def test_fresh_random_state_does_not_replay_the_first_batches(tiny_data, trained, trained_copy, train, monkeypatch):
    """Regression: a resume that could not restore the random state (an older checkpoint, another number
    of processes) left the generators at their start, so it drew the run's first batches again."""
    windows = corpus.windows

    def first_training_batch(*args):
        drawn = []
        monkeypatch.setattr(corpus, 'windows', lambda d, split, ix, *a: drawn.append((split, ix.tolist())) or
                            windows(d, split, ix, *a))
        train(*args)
        return next(ix for split, ix in drawn if split == 'train')
    checkpoint.save(str(trained_copy / 'ckpt.pt'), dict(load(trained_copy / 'ckpt.pt'), rng=None))
    resumed = first_training_batch(trained.data, trained_copy, '--init_from=resume', '--max_iters=61')
    assert resumed != first_training_batch(tiny_data, trained_copy.parent / 'fresh', '--max_iters=1')


def test_the_logged_time_covers_the_devices_work(tiny_data, tmp_path, train, monkeypatch):
    """Regression: the clock stopped before the log step's sync, so on a GPU the time (and tok/s, MFU)
    covered the kernel launches only. A slow sync stands in here for a GPU's queued work."""
    def slow(read):
        def sync(self):
            caller = sys._getframe(1).f_code
            # the evaluations' reads are not timed: they need no sleep (8 of them, 2.4 s)
            if caller.co_filename == str(REPO / 'train.py') and caller.co_name != 'estimate_loss':
                time.sleep(0.3)
            return read(self)
        return sync
    for name in ('item', 'tolist'):
        monkeypatch.setattr(torch.Tensor, name, slow(getattr(torch.Tensor, name)))
    p = train(tiny_data, tmp_path / 'out', '--max_iters=2', '--log_interval=2', '--eval_interval=1000')
    assert float(re.search(r'^iter 2: .*time ([\d.]+)ms', p.out, re.M).group(1)) >= 150, p.out


def test_resuming_a_finished_run_says_how_to_go_on(trained, trained_copy, train):
    """Regression: resuming a run that had reached max_iters did nothing, exit code 0, without a word."""
    before = (trained_copy / 'ckpt.pt').read_bytes()
    p = train(trained.data, trained_copy, '--init_from=resume', *TRAINED)
    assert 'note: max_iters=60 is reached already: raise it to train on' in p.out
    assert (trained_copy / 'ckpt.pt').read_bytes() == before


def test_samples_at_each_evaluation_leave_training_as_it_was(tiny_data, tmp_path, train):
    with_samples = train(tiny_data, tmp_path / 'a', '--sample_tokens=20')
    without = train(tiny_data, tmp_path / 'b')
    assert losses(with_samples.out) == losses(without.out)  # the sampling draws from its own random state
    lines = re.findall(r'^sample (\d+): (.*)$', with_samples.out, re.M)
    assert [int(i) for i, _ in lines] == [0, 5, 10]
    assert all(len(ast.literal_eval(text)) == 20 for _, text in lines)  # 20 characters, as a Python string


def test_prepare_runs_a_missing_dataset_first(tmp_path, train):
    """prepare=True (the quick start's config) runs the dataset's prepare.py when train.bin is missing;
    prepare_input gives it the text (offline)."""
    folder = tmp_path / 'new_char'
    folder.mkdir()
    (folder / 'prepare.py').write_text(  # the shakespeare_char script, run from this folder
        f"import sys\nsys.path.insert(0, {str(REPO)!r})\nfrom data.shakespeare_char.prepare import main, prepare\n"
        f"main(prepare, __file__)\n")
    text = tmp_path / 'text.txt'
    text.write_text("To be, or not to be, that is the question.\n" * 50)
    p = train(folder, tmp_path / 'out', '--prepare=True', f'--prepare_input={text}', '--max_iters=2')
    assert f"{folder}/train.bin is missing: running" in p.out and 'iter 2: loss' in p.out
    assert chars_of(folder) == sorted(set(text.read_text()))
    p = train(folder, tmp_path / 'out2', '--prepare=True', f'--prepare_input={tmp_path / "nope.txt"}',
              '--max_iters=2')  # prepared already: nothing runs
    assert 'is missing' not in p.out
    (folder / 'train.bin').unlink()
    p = train(folder, tmp_path / 'out3', '--prepare=True', f'--prepare_input={tmp_path / "nope.txt"}', check=False)
    assert_one_line_error(p, "prepare.py failed (its error is above); fix that and rerun")
