"""Watching a run: TensorBoard event files, the metric history inside the checkpoint (eval.py --task=history),
the split of the iteration's time, and eval.py's tasks run during training (eval_tasks).
Run: python -m pytest -q tests/test_metrics.py"""
import json
import os
import re
import shutil
import sys

import pytest
import torch

import checkpoint
import hellaswag
from conftest import TINY, assert_one_line_error

LOSSES = ('train/loss', 'eval/train_loss', 'eval/val_loss', 'lr', 'grad_norm')  # what repeats exactly


def history(out_dir):
    ckpt = torch.load(out_dir / 'ckpt.pt', weights_only=True)
    return {k: v.tolist() for k, v in ckpt['history'].items()}


def test_resumed_history_and_tensorboard_curves_equal_an_uninterrupted_run(resumed, tmp_path, script):
    """The shared runs of conftest.py: whole (20 iterations), parts (10, resumed to 20, then resumed from its
    checkpoint at 10 again, as if it had died after that checkpoint but had logged on to 20)."""
    event_accumulator = pytest.importorskip('tensorboard.backend.event_processing.event_accumulator')
    whole, parts = resumed.whole, resumed.parts
    p = resumed.again
    assert 'resuming from' in p.out and 'at iter 10' in p.out
    a, b = history(whole), history(parts)
    for name in LOSSES:
        assert b[name] == a[name], name  # same steps, same values
    assert [s for s, _ in b['train/loss']] == list(range(1, 21))
    assert [s for s, _ in b['eval/val_loss']] == [0, 5, 10, 15, 20]
    assert {'tokens_per_s', 'time/iter', 'time/data', 'time/fwd+bwd', 'time/optim'} <= set(b)
    # TensorBoard, read back by its own reader: one point per step, the last run's, although the event files
    # hold steps 11 to 20 twice (TensorBoard drops the first copies: the resumed run's purge_step)
    events = event_accumulator.EventAccumulator(str(parts / 'tensorboard'))
    events.Reload()
    for name in LOSSES:
        points = [(e.step, e.value) for e in events.Scalars(name)]
        steps = [s for s, _ in points]
        assert steps == sorted(set(steps)), name  # strictly increasing, no duplicates
        assert points == [(s, pytest.approx(v, rel=1e-6)) for s, v in b[name]], name
    raw = sum(1 for f in (parts / 'tensorboard').iterdir() for _ in _scalars(f, 'train/loss'))
    assert raw == 30  # 10 + 10 + 10: the purge was needed
    # a fresh start over the folder (--overwrite) drops every earlier point
    parts = tmp_path / 'parts'
    shutil.copytree(resumed.parts, parts)  # the shared folder stays as it is
    script('train.py', *TINY, f'--dataset={resumed.data}', f'--out_dir={parts}', '--tensorboard_log=True',
           '--max_iters=3', '--lr_decay_iters=20', '--overwrite=True')
    events = event_accumulator.EventAccumulator(str(parts / 'tensorboard'))
    events.Reload()
    assert [e.step for e in events.Scalars('train/loss')] == [1, 2, 3]


def _scalars(path, tag):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    for event in EventFileLoader(str(path)).Load():
        for value in event.summary.value:
            if value.tag == tag:
                yield event.step


def test_eval_only_writes_no_event_files(trained_copy, tiny_data, script):
    """Regression: eval_only, which writes nothing, wrote TensorBoard events (and a fresh model's dropped
    the run's curves)."""
    script('train.py', *TINY, f'--dataset={tiny_data}', f'--out_dir={trained_copy}', '--init_from=resume',
           '--eval_only=True', '--tensorboard_log=True')
    assert sorted(os.listdir(trained_copy)) == ['ckpt.pt']


def test_an_eval_task_that_cannot_run_stops_the_run_before_it_trains(trained_copy, tiny_data, tmp_path, script,
                                                                      monkeypatch):
    """Regression: a resumed run found out at its first evaluation, eval_interval iterations later, and lost
    them."""
    monkeypatch.setattr(hellaswag, 'CACHE', str(tmp_path / 'cache'))
    monkeypatch.setattr(hellaswag.urllib.request, 'urlopen', lambda *a, **k: (_ for _ in ()).throw(OSError('offline')))
    before = (trained_copy / 'ckpt.pt').read_bytes()
    p = script('train.py', *TINY, f'--dataset={tiny_data}', f'--out_dir={trained_copy}', '--init_from=resume',
               '--max_iters=100', '--eval_tasks=hellaswag', check=False)
    assert_one_line_error(p, "cannot download https://raw.githubusercontent.com/rowanz/hellaswag")
    assert 'iter 61' not in p.out and (trained_copy / 'ckpt.pt').read_bytes() == before


def test_tensorboard_not_installed_is_one_line(tiny_data, tmp_path, script, monkeypatch):
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', None)  # its import then fails
    p = script('train.py', *TINY, f'--dataset={tiny_data}', f'--out_dir={tmp_path / "out"}', '--tensorboard_log=True',
               check=False)
    assert_one_line_error(p, "tensorboard_log=True but tensorboard is not installed: pip install tensorboard")


def test_the_time_split_adds_up_to_the_iteration_time(trained):
    ratios = []
    for line in trained.stdout.splitlines():
        m = re.search(r'time ([\d.]+)ms \(data ([\d.]+)ms, fwd\+bwd ([\d.]+)ms, optim ([\d.]+)ms\)', line)
        if m:
            total, *split = map(float, m.groups())
            ratios.append(sum(split) / total)
    assert len(ratios) == 60  # log_interval 1: every iteration is timed, and split
    ratios.sort()
    assert 0.95 < ratios[len(ratios) // 2] <= 1.0, ratios


def test_history_prints_and_plots(trained, tmp_path, script):
    h = history(trained.out)
    png = tmp_path / 'curves.png'
    p = script('eval.py', f'--out_dir={trained.out}', '--task=history', f'--png={png}', '--json=True')
    lines = p.out.strip().splitlines()
    header = lines[0].split()
    assert header[0] == 'step' and {'train/loss', 'eval/val_loss', 'lr'} <= set(header)
    row = {int(line.split()[0]): line for line in lines[1:-1]}
    assert sorted(row) == list(range(61))  # step 0 (an evaluation), then every iteration
    val = header.index('eval/val_loss')
    assert float(row[60].split()[val]) == pytest.approx(h['eval/val_loss'][-1][1], rel=1e-5)
    assert json.loads(lines[-1])['history']['eval/val_loss'] == h['eval/val_loss']
    from PIL import Image
    with Image.open(png) as im:
        assert im.format == 'PNG' and im.size == (800, 600)
        colours = len(im.convert('RGB').getcolors(maxcolors=1 << 20))
    assert colours > 10  # curves drawn, not a blank canvas


def test_history_mistakes_are_one_line(trained_copy, tmp_path, script, monkeypatch):
    p = script('eval.py', f'--out_dir={trained_copy}', '--task=history', f'--png={tmp_path / "no" / "x.png"}', check=False)
    assert_one_line_error(p, f"cannot write {tmp_path / 'no' / 'x.png'}")
    script('eval.py', f'--out_dir={trained_copy}', '--task=history', f'--png={tmp_path / "x.xyz"}')  # regression:
    assert (tmp_path / 'x.xyz').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'  # matplotlib refused the name
    monkeypatch.setitem(sys.modules, 'matplotlib', None)
    p = script('eval.py', f'--out_dir={trained_copy}', '--task=history', f'--png={tmp_path / "x.png"}', check=False)
    assert_one_line_error(p, "--png needs matplotlib, which is not installed: pip install matplotlib")
    ckpt = torch.load(trained_copy / 'ckpt.pt', weights_only=True)
    del ckpt['history'], ckpt['checksum']  # as checkpoints were written before they kept one
    checkpoint.save(str(trained_copy / 'ckpt.pt'), ckpt)
    p = script('eval.py', f'--out_dir={trained_copy}', '--task=history', check=False)
    assert_one_line_error(p, "ckpt.pt has no metric history: it was written before checkpoints kept one")


def test_eval_tasks_run_at_each_evaluation(tiny_data, tmp_path, script):
    out = tmp_path / 'out'
    p = script('train.py', *TINY, f'--dataset={tiny_data}', f'--out_dir={out}', '--eval_tasks=val,train')
    lines = [line for line in p.out.splitlines() if line.startswith('step 10: ')]
    assert len(lines) == 1 and '; val: loss ' in lines[0], p.out
    logged = float(re.search(r'; val: loss ([\d.]+) nats/token', lines[0])[1])
    e = json.loads(script('eval.py', f'--out_dir={out}', '--json=True').out.strip().splitlines()[-1])
    assert logged == pytest.approx(e['val']['loss'], abs=1e-4)  # the checkpoint of step 10, evaluated again
    h = history(out)
    assert [s for s, _ in h['tasks/val/bpb']] == [0, 5, 10]
    assert h['tasks/val/bpb'][-1][1] == pytest.approx(e['val']['bpb'], rel=1e-5)
    # regression: the whole train split's loss went into the training loss's curve, two points a step
    assert [s for s, _ in h['train/loss']] == list(range(1, 11)) and len(h['tasks/train/loss']) == 3
    p = script('train.py', *TINY, f'--dataset={tiny_data}', f'--out_dir={out}', '--eval_tasks=val,mmlu',
               '--overwrite=True', check=False)
    assert_one_line_error(p, "eval_tasks='val,mmlu': the tasks are val, train, hellaswag, wikitext")
