"""optimizer='muon' (optimizers.py: torch.optim.Muon on the blocks' weight matrices, AdamW on the rest),
the schedules' and Muon's settings, and stop_at_val_loss. Run: python -m pytest -q tests/test_optimizers.py"""
import shutil
from array import array
from types import SimpleNamespace

import pytest
import torch

import optimizers
from conftest import RESUMED, TINY, assert_one_line_error, in_process
from metrics import Metrics
from model import GPT, GPTConfig
from test_train import losses

CONFIG = dict(optimizer='muon', lr_schedule='cosine', warmdown_frac=0.2, muon_lr=0.02, muon_momentum=0.95,
              muon_weight_decay=0.0, muon_adjust_lr='original', weight_decay=0.1, learning_rate=1e-3,
              beta1=0.9, beta2=0.95, min_lr=1e-4)
MUON = ['--optimizer=muon', '--lr_schedule=wsd', '--warmdown_frac=0.5']


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=65, bias=True))
    names = {id(p): n for n, p in model.named_parameters()}
    got = lambda group: sorted(names[id(p)] for p in group['params'])
    adamw, muon = optimizers.build(model, CONFIG, 'cpu', verbose=False)
    assert got(muon.param_groups[0]) == sorted(f'transformer.h.{i}.{layer}.weight' for i in range(2) for layer in
                                               ('attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj'))
    decay, no_decay = adamw.param_groups
    # the embeddings (wte is the tied lm_head) are 2-D too, but Muon suits hidden layers only
    assert model.lm_head.weight is model.transformer.wte.weight
    assert got(decay) == ['transformer.wpe.weight', 'transformer.wte.weight'] and decay['weight_decay'] == 0.1
    ones = sorted(n for n, p in model.named_parameters() if p.dim() == 1)  # biases and LayerNorm gains
    assert got(no_decay) == ones and no_decay['weight_decay'] == 0.0 and len(ones) == 2 * 8 + 2
    # optimizer='adamw' keeps nanoGPT's two groups over every parameter
    only, = optimizers.build(model, {**CONFIG, 'optimizer': 'adamw'}, 'cpu', verbose=False)
    assert sorted(got(only.param_groups[0]) + got(only.param_groups[1])) == sorted(names.values())


def test_muon_follows_the_schedule_scaled_to_its_peak():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=65))
    optims = optimizers.build(model, CONFIG, 'cpu', verbose=False)
    optimizers.set_lr(optims, 1e-4, 1e-3, 0.02)  # min_lr: a tenth of the peak
    assert optims[0].param_groups[0]['lr'] == 1e-4
    assert optims[1].param_groups[0]['lr'] == pytest.approx(0.002)


@pytest.fixture(scope='module')
def muon_resumed(tiny_data, tmp_path_factory):
    """Muon with WSD (dropout, 2 micro-steps): 20 iterations in one go, and 10 then 10 more after a resume."""
    tmp = tmp_path_factory.mktemp('muon')
    train = lambda out, *args: in_process('train.py', *TINY, *RESUMED, *MUON, '--tensorboard_log=False',
                                          f'--dataset={tiny_data}', f'--out_dir={tmp / out}', *args)
    r = SimpleNamespace(whole=train('whole', '--max_iters=20'), first=train('parts', '--max_iters=10'),
                        data=tiny_data, tmp=tmp)
    r.second = train('parts', '--max_iters=20', '--init_from=resume')
    # a shorter plan (decay from 10 to 18), stopped at 10 in its stable phase, then resumed into the 20
    r.short = train('extended', '--max_iters=10', '--lr_decay_iters=18')
    r.extended = train('extended', '--max_iters=20', '--lr_decay_iters=20', '--init_from=resume')
    return r


def test_muon_resume_is_bitwise_identical(muon_resumed):
    r = muon_resumed
    assert 'muon tensors: 8 (24,576 parameters)' in r.whole.out  # 2 blocks x 4 matrices
    assert losses(r.whole.out) == losses(r.first.out) + losses(r.second.out)
    a, b = (torch.load(r.tmp / d / 'ckpt.pt', weights_only=True) for d in ('whole', 'parts'))
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])
    bufs = lambda c: [s['momentum_buffer'] for s in c['muon']['state'].values()]
    assert len(bufs(a)) == 8 and all(torch.equal(x, y) for x, y in zip(bufs(a), bufs(b)))
    # past lr_decay_iters: min_lr for AdamW, and for Muon the same tenth of its peak
    assert a['muon']['param_groups'][0]['lr'] == pytest.approx(6e-5 / 6e-4 * 0.02)


def test_wsd_run_extends_from_its_stable_phase(muon_resumed):
    """README: a WSD run stopped before its decay starts resumes into a longer one, as if planned so."""
    r = muon_resumed
    assert 'changed: max_iters 10 -> 20, lr_decay_iters 18 -> 20' in r.extended.out
    assert losses(r.whole.out) == losses(r.short.out) + losses(r.extended.out)


def test_resuming_with_the_other_optimizer_is_refused(muon_resumed, tmp_path, script):
    out = shutil.copytree(muon_resumed.tmp / 'whole', tmp_path / 'out')
    p = script('train.py', *TINY, f'--dataset={muon_resumed.data}', f'--out_dir={out}', '--init_from=resume',
               '--max_iters=30', check=False)
    assert_one_line_error(p, "was trained with optimizer='muon', whose state does not fit 'adamw'; resume "
                             "with --optimizer=muon")


@pytest.mark.parametrize('args, message', [
    (['--optimizer=sgd'], "optimizer='sgd': use 'adamw' or 'muon'"),
    (['--lr_schedule=step'], "lr_schedule='step': use 'cosine' or 'wsd' or 'linear'"),
    (['--warmdown_frac=1.5'], 'warmdown_frac=1.5 is outside (0, 1]'),
    (['--warmdown_frac=0'], 'warmdown_frac=0.0 is outside (0, 1]'),
    (['--optimizer=muon', '--muon_lr=-0.02'], 'muon_lr=-0.02 is negative: use a value >= 0'),
    (['--optimizer=muon', '--muon_adjust_lr=rms'], "muon_adjust_lr='rms': use 'original' or 'match_rms_adamw'"),
])
def test_bad_settings(tiny_data, tmp_path, script, args, message):
    p = script('train.py', *TINY, f'--dataset={tiny_data}', f'--out_dir={tmp_path / "out"}', *args, check=False)
    assert_one_line_error(p, message)
    assert not (tmp_path / 'out').exists()  # checked before out_dir is made


def test_fsdp_with_muon_is_refused_before_any_collective(tiny_data, tmp_path, script, monkeypatch):
    """Each process would orthogonalise its shard of a matrix, not the matrix (an open question upstream)."""
    for name, value in (('RANK', '0'), ('LOCAL_RANK', '0'), ('WORLD_SIZE', '2')):
        monkeypatch.setenv(name, value)
    p = script('train.py', *TINY, f'--dataset={tiny_data}', f'--out_dir={tmp_path / "out"}', '--fsdp=True',
               '--optimizer=muon', '--gradient_accumulation_steps=2', check=False)
    assert_one_line_error(p, "optimizer='muon' needs every weight matrix whole, and fsdp=True shards them")


def test_stop_at_val_loss_says_when_without_the_evaluations(capsys):
    metrics = Metrics({}, None, master=False)
    metrics.history['time/iter'] = array('d', [10, 0.5, 30, 0.25])  # 10 steps of 0.5 s, 20 of 0.25 s
    assert not metrics.reached(2.0, 0.0, 30)  # 0: no target
    assert not metrics.reached(2.0, 1.9, 30)
    assert metrics.reached(1.9, 1.9, 30)
    assert capsys.readouterr().out == "stop_at_val_loss=1.9 reached: val loss 1.9000 at iter 30, after 10.0s " \
                                      "of training steps\n"


def test_stop_at_val_loss_ends_the_run(tiny_data, tmp_path, script):
    p = script('train.py', *TINY, f'--dataset={tiny_data}', f'--out_dir={tmp_path / "out"}',
               '--stop_at_val_loss=99.0')  # the first evaluation reaches it, before any step
    assert 'stop_at_val_loss=99.0 reached: val loss ' in p.out and ' at iter 0, after 0.0s' in p.out
    assert 'iter 1:' not in p.out
