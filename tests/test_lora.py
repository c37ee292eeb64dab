"""LoRA through peft (lora.py): what trains, exact resume, the merge and its exports, sample.py and eval.py
on a LoRA checkpoint, the memory bench.py reports, and mistakes in one line. Tiny models, CPU, offline;
the base is a tiny random transformers GPT-2 saved to a folder. Run: python -m pytest -q tests/test_lora.py"""
import json
import re
import shutil
import sys
from types import SimpleNamespace

import pytest
import torch

import checkpoint
import loading
import lora
from configurator import UserError
from conftest import TINY, assert_one_line_error, chars_of, in_process
from model import GPT, GPTConfig

transformers = pytest.importorskip('transformers')
pytest.importorskip('peft')

SHAPE_FLAGS = ('--n_layer', '--n_head', '--n_embd', '--block_size')
# the shape comes from the base's weights; adapters of rank 4 with dropout, at a learning rate that moves them
LORA = [a for a in TINY if not a.startswith(SHAPE_FLAGS)] + [
    '--block_size=32', '--lora_rank=4', '--lora_alpha=8', '--lora_dropout=0.1', '--learning_rate=1e-2',
    '--gradient_accumulation_steps=2', '--lr_decay_iters=8', '--eval_interval=4']


def lines(out):
    """The loss lines of a log, without their timings: what must repeat exactly."""
    return [re.sub(r'time \S+ms( \([^)]*\))?, mfu \S+, tok/s [\d,]+, ', '', line) for line in out.splitlines()
            if line.startswith(('iter ', 'step '))]


def tiny_gpt(bias=True):
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=33, bias=bias))


def spec(rank=4, targets=('c_attn', 'c_proj', 'c_fc')):
    return {'rank': rank, 'alpha': 8.0, 'dropout': 0.0, 'targets': list(targets), 'base': 'test'}


@pytest.fixture(scope='module')
def runs(tiny_data, tmp_path_factory):
    """A tiny random GPT-2 folder (the base) and LoRA runs on it, in this process: 8 iterations in one go
    (whole), and 4 with activation checkpointing then 4 more resumed (parts)."""
    tmp = tmp_path_factory.mktemp('lora')
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=len(chars_of(tiny_data)), n_positions=64)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():  # every weight random, biases and LayerNorms too
        for p in hf.parameters():
            p.normal_(0, 0.1 if p.dim() == 1 else 0.02)
    hf.save_pretrained(tmp / 'base')
    r = SimpleNamespace(data=tiny_data, base=tmp / 'base', whole=tmp / 'whole', parts=tmp / 'parts')
    train = lambda out, *args: in_process('train.py', *LORA, f'--dataset={tiny_data}', f'--out_dir={out}',
                                          f'--init_from={r.base}', *args)
    r.whole_log = train(r.whole, '--max_iters=8')
    r.first = train(r.parts, '--max_iters=4', '--activation_checkpointing=True')
    r.second = in_process('train.py', *LORA, f'--dataset={tiny_data}', f'--out_dir={r.parts}', '--max_iters=8',
                          '--init_from=resume')  # the LoRA settings given again, as the same command would
    return r


def test_only_adapters_train_and_the_frozen_weights_stay_bitwise():
    model = lora.attach(tiny_gpt(), spec())
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trains = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trains and all('.lora_A.' in n or '.lora_B.' in n for n in trains)
    assert len(frozen) == len(GPT(model.config).state_dict()) - 1  # every weight of the GPT (wte is lm_head)
    opt = model.configure_optimizers(0.1, 1e-2, (0.9, 0.95), 'cpu', verbose=False)  # with weight decay
    x = torch.randint(33, (4, 32), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        model(x[:, :-1], x[:, 1:])[1].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert sum(len(s) for s in opt.state.values()) == 3 * len(trains)  # AdamW state for adapters alone
    assert all(p.abs().sum() > 0 for n, p in model.named_parameters() if '.lora_B.' in n)  # B left zero


def test_half_precision_base_keeps_float32_adapters_and_state():
    """dtype bfloat16 (a recent GPU's default) or float16: the frozen weights are stored in it, the adapters
    and AdamW's state stay float32, and a step under autocast (CPU here, bfloat16) trains them."""
    half = lora.attach(tiny_gpt(), spec(), dtype='float16')
    assert {p.dtype for p in half.parameters() if not p.requires_grad} == {torch.float16}
    dtype = 'bfloat16'
    model = lora.attach(tiny_gpt(), spec(), dtype=dtype)
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {getattr(torch, dtype)}
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    opt = model.configure_optimizers(0.1, 1e-2, (0.9, 0.95), 'cpu', verbose=False)
    x = torch.randint(33, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.autocast('cpu', dtype=getattr(torch, dtype)):
        loss = model(x, x)[1]
    loss.backward()
    opt.step()
    assert all(v.dtype == torch.float32 for s in opt.state.values() for v in s.values() if v.dim())
    # B starts at zero, so the first step moves B alone
    assert torch.isfinite(loss) and all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if '.lora_B.' in n)


@pytest.mark.parametrize('targets, per_block', [(('c_attn', 'c_proj', 'c_fc'), (32 + 96) + (32 + 32) + (32 + 128)
                                                 + (128 + 32)), (('c_attn',), 32 + 96), (('mlp.c_proj',), 128 + 32)])
def test_trainable_count_is_r_times_in_plus_out(targets, per_block):
    """A is (r, in), B is (out, r): r (in + out) per adapted layer; c_proj names both projections."""
    model = lora.attach(tiny_gpt(bias=True), spec(rank=3, targets=targets))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 3 * per_block * 2  # 2 Blocks


def test_resume_is_bitwise_and_activation_checkpointing_changes_nothing(runs):
    """8 iterations in one go log the losses of 4 (activation checkpointing on) and then 4 resumed."""
    assert 'LoRA rank 4 (alpha 8) on c_attn,c_proj,c_fc: 4,096 of 31,648 parameters train' in runs.whole_log.out
    assert len(lines(runs.whole_log.out)) == 8 + 3  # evaluations at 0, 4, 8
    assert lines(runs.whole_log.out) == lines(runs.first.out) + lines(runs.second.out)
    a, b = (checkpoint.load(str(d / 'ckpt.pt'))[0] for d in (runs.whole, runs.parts))
    assert a['model'].keys() == b['model'].keys() and all('.lora_' in k for k in a['model'])
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])
    assert a['lora'] == {'rank': 4, 'alpha': 8.0, 'dropout': 0.1, 'targets': ['c_attn', 'c_proj', 'c_fc'],
                         'base': str(runs.base)}


def test_a_resume_may_change_lora_dropout_alone(runs):
    """Regression: a changed lora_dropout was saved, but the resumed model was built with the old one."""
    ckpt, _ = checkpoint.load(str(runs.whole / 'ckpt.pt'))
    config = {'lora_rank': 0, 'lora_alpha': 16.0, 'lora_dropout': 0.0, 'lora_targets': 'c_attn,c_proj,c_fc'}
    settings = lora.settings(config, {'lora_dropout': 0.0}, 'resume', False, ckpt, 'ckpt.pt')
    assert settings['dropout'] == 0.0 and config['lora_rank'] == 4 and config['lora_alpha'] == 8.0
    model, _ = loading.build(ckpt, 'ckpt.pt')
    assert isinstance(model.transformer.h[0].attn.c_attn.lora_dropout['default'], torch.nn.Identity)  # p = 0
    with pytest.raises(UserError, match='LoRA is not sharded here'):  # resumed under FSDP too
        lora.settings(config, {}, 'resume', True, ckpt, 'ckpt.pt')


def test_merge_equals_adapters_and_exports_need_no_peft(runs, tmp_path, script):
    ckpt, _ = checkpoint.load(str(runs.whole / 'ckpt.pt'))
    adapted, _ = loading.build(ckpt, 'ckpt.pt')
    merged, _ = loading.build(ckpt, 'ckpt.pt', merge=True)
    base = GPT.from_pretrained(str(runs.base))
    base.crop_block_size(32)
    assert type(merged) is GPT and not any('lora' in k or 'base_layer' in k for k in merged.state_dict())
    x = torch.randint(len(chars_of(runs.data)), (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = adapted.eval()(x, x)[0]
        assert (ours - base.eval()(x, x)[0]).abs().max() > 1e-2  # the adapters changed the model
        torch.testing.assert_close(merged(x, x)[0], ours, atol=1e-5, rtol=0)
    p = script('export.py', f'--out_dir={runs.whole}', f'--hf_dir={tmp_path / "hf"}')
    assert f'merged the LoRA adapters of {runs.whole / "ckpt.pt"} (rank 4)' in p.out
    assert not (tmp_path / 'hf' / 'adapter_config.json').exists()
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / 'hf').eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours, atol=1e-5, rtol=0)


def test_sample_and_eval_read_a_lora_checkpoint(runs, tmp_path, script):
    shutil.copytree(runs.whole, tmp_path / 'out')
    p = script('sample.py', f'--out_dir={tmp_path / "out"}', '--num_samples=1', '--max_new_tokens=8', '--device=cpu')
    assert p.out.count('---------------') == 1
    p = script('eval.py', f'--out_dir={tmp_path / "out"}', '--device=cpu', '--json=True')
    script('export.py', f'--out_dir={tmp_path / "out"}', f'--weights={tmp_path / "w.pt"}')
    w = torch.load(tmp_path / 'w.pt', weights_only=True)
    assert 'lora' not in w and not any('lora' in k or 'base_layer' in k for k in w['model'])  # a plain GPT's
    q = script('eval.py', f'--init_from={tmp_path / "w.pt"}', f'--dataset={runs.data}', '--device=cpu', '--json=True')
    loss = lambda r: json.loads(r.out.strip().splitlines()[-1])['val']['loss']
    assert loss(p) == pytest.approx(loss(q), abs=1e-5)  # the merged weights' figure
    # a LoRA run on the weights of a LoRA checkpoint: its adapters merged first
    r = script('train.py', *LORA, f'--dataset={runs.data}', f'--out_dir={tmp_path / "again"}', '--max_iters=1',
               f'--init_from={tmp_path / "out" / "ckpt.pt"}', '--eval_iters=1')
    assert checkpoint.load(str(tmp_path / 'again' / 'ckpt.pt'))[0]['lora']['base'] == str(tmp_path / 'out' / 'ckpt.pt')
    assert 'iter 1: loss' in r.out


def test_bench_counts_adapter_state_only(script, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ['bench.py', '--device=cpu', '--compile=False', '--dtype=float32', '--n_layer=2', '--n_head=2',
            '--n_embd=32', '--block_size=32', '--batch_size=2', '--vocab_size=33', '--steps=1', '--warmup=1',
            '--json=True']
    state = lambda *a: json.loads(script(*args, *a).out.strip().splitlines()[-1])['state_mb']
    full, adapted = state(), state('--lora_rank=4')
    adapters = 4 * 16 * 32 * 2 * 4 / 2**20  # r (in + out) per layer, 16 n_embd per Block, float32
    assert adapted['params'] == pytest.approx(full['params'] + adapters, rel=1e-9)
    assert adapted['grads'] == pytest.approx(adapters, rel=1e-9)
    assert adapted['optimizer'] == pytest.approx(2 * adapters, rel=1e-2)  # AdamW's two moments (+ step counts)


def test_mistakes_are_one_line(runs, trained, trained_copy, tmp_path, script, monkeypatch):
    train = lambda *args: script('train.py', *LORA, f'--dataset={runs.data}', *args, check=False)
    out = f'--out_dir={tmp_path / "x"}'
    assert_one_line_error(train(out, f'--init_from={runs.base}', '--lora_rank=-1'), 'lora_rank=-1 must be >= 0')
    assert_one_line_error(train(out, f'--init_from={runs.base}', '--lora_targets=c_attn,q_proj'),
                          "lora_targets: 'q_proj' names no Linear layer of the model; a Block's are attn.c_attn")
    assert_one_line_error(train(out, '--init_from=scratch'), 'lora_rank > 0 adapts pretrained weights')
    assert_one_line_error(train(out, f'--init_from={runs.base}', '--optimizer=muon'),
                          "optimizer='muon' is for the blocks' full weight matrices: use --optimizer=adamw with LoRA")
    # LoRA asked for on a checkpoint without it, and none on one with it
    assert_one_line_error(train(f'--out_dir={trained_copy}', '--init_from=resume'),
                          'was trained without LoRA, so it cannot resume with lora_rank=4')
    shutil.copytree(runs.whole, tmp_path / 'lora')
    assert_one_line_error(train(f'--out_dir={tmp_path / "lora"}', '--init_from=resume', '--lora_rank=0',
                                '--max_iters=30'), "lora_rank: checkpoint 4, requested 0")
    with pytest.raises(UserError, match='LoRA is not sharded here: leave out --fsdp'):
        lora.settings({'lora_rank': 4, 'lora_alpha': 8.0, 'lora_dropout': 0.0, 'lora_targets': 'c_fc'}, {},
                      'gpt2', fsdp=True)
    # the base gone from where the run took it: whatever reads the checkpoint names it
    base = shutil.move(runs.base, tmp_path / 'moved')
    try:
        assert_one_line_error(script('sample.py', f'--out_dir={tmp_path / "lora"}', check=False),
                              f'holds LoRA adapters for the weights in {runs.base}, which is not there any more')
    finally:
        shutil.move(base, runs.base)
    monkeypatch.setitem(sys.modules, 'peft', None)  # as if it were not installed: import raises ImportError
    assert_one_line_error(train(out, f'--init_from={runs.base}'), 'lora_rank > 0 needs Hugging Face peft')


def test_ddp_takes_a_lora_model_and_syncs_its_adapters(tmp_path):
    """DDP (one gloo process here; train.py under torchrun was run by hand, README) over a LoRA model: it
    syncs the adapters alone, and two micro-steps synced on the second give the unwrapped model's gradients."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    import runtime
    x = torch.randint(33, (4, 32), generator=torch.Generator().manual_seed(0))
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "store"}', rank=0, world_size=1)
    try:
        models = [lora.attach(tiny_gpt(), spec()) for _ in range(2)]
        ddp = DDP(models[0])
        for micro in range(2):
            runtime.sync_gradients(ddp, micro == 1)
            ddp(x[micro::2], x[micro::2])[1].backward()
            models[1](x[micro::2], x[micro::2])[1].backward()
    finally:
        dist.destroy_process_group()
    synced = [p for p in ddp.module.parameters() if p.requires_grad]
    assert synced and all(p.grad is None for p in ddp.module.parameters() if not p.requires_grad)
    for a, b in zip(synced, (p for p in models[1].parameters() if p.requires_grad)):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-7, rtol=0)
