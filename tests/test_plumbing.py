"""runtime.py and checkpoint.py, the plumbing the scripts share: device and precision rules, peak FLOPs,
checkpoint files. Run: python -m pytest -q tests/test_plumbing.py"""
import json

import pytest
import torch

import checkpoint
import runtime
import vocabulary
from conftest import chars_of
from configurator import oneline
from model import GPT, GPTConfig


def test_peak_flops_table():
    assert runtime.device_peak_flops('NVIDIA H100 80GB HBM3') == 989e12
    assert runtime.device_peak_flops('NVIDIA H100 PCIe') == 756e12
    assert runtime.device_peak_flops('NVIDIA H100 NVL') == 835e12  # regression: matched 'H100' (989)
    assert runtime.device_peak_flops('NVIDIA A100-SXM4-40GB') == 312e12
    assert runtime.device_peak_flops('Some Unknown GPU') is None
    assert runtime.peak_flops('cpu') is None and runtime.peak_flops('cpu', 1e12) == 1e12


def test_a_cpu_run_on_a_gpu_machine_is_not_measured_against_the_gpu(monkeypatch):
    """Regression: MFU looked up the CUDA device's peak whenever CUDA was available, even for a model
    whose parameters are on the CPU."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda *a: 'NVIDIA H100 80GB HBM3')
    assert runtime.peak_flops('cpu') is None and runtime.peak_flops('cuda:0') == 989e12


def test_missing_cuda_is_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip('CUDA is available here')
    with pytest.raises(SystemExit, match='CUDA is not available') as e:
        runtime.resolve_device('cuda')
    assert e.value.code == 2 and capsys.readouterr().err.startswith("error: device='cuda' but CUDA")
    assert runtime.resolve_device('auto') in ('cpu', 'mps')


def test_a_gpu_that_is_not_there_is_one_line(monkeypatch):
    """Regression: --device=cuda:9 on a machine with 2 GPUs ended in CUDA's 'invalid device ordinal'."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    for device in ('cuda:9', 'cuda:x'):
        with pytest.raises(SystemExit, match=rf"device='{device}': this machine has 2 GPU\(s\), cuda:0 to cuda:1"):
            runtime.resolve_device(device)
    assert runtime.resolve_device('cuda:1') == 'cuda:1'


def test_bfloat16_without_support_is_refused(monkeypatch):
    """Also a regression: torch.cuda.is_bf16_supported() is True on a T4 (it counts emulation), so 'auto'
    picked a slow emulated bfloat16 there instead of float16 with a GradScaler."""
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda *a, **k: (7, 5))
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda *a, **k: 'Tesla T4')
    with pytest.raises(SystemExit, match='bfloat16 is not supported natively by Tesla T4; use --dtype=float16'):
        runtime.resolve_dtype('cuda', 'bfloat16')
    assert runtime.resolve_dtype('cuda', 'auto') == 'float16'
    assert runtime.resolve_dtype('cpu', 'auto') == 'float32'


def test_one_grad_scaler_rule():
    """float16 trains with a GradScaler on every device; bfloat16 and float32 never do."""
    assert runtime.grad_scaler('cpu', 'float16').is_enabled()
    assert not runtime.grad_scaler('cpu', 'bfloat16').is_enabled()
    assert not runtime.grad_scaler('cpu', 'float32').is_enabled()


def test_float32_on_a_cpu_is_float32():
    """Regression: setup set torch.set_float32_matmul_precision('high') on every device. On a CPU with
    AMX, oneDNN then computes float32 matmuls from bfloat16 parts: other numbers, and a training step of
    the README's CPU recipe took 65 ms instead of 33."""
    torch.set_float32_matmul_precision('highest')
    assert runtime.setup_device('cpu', 'float32')[:3] == ('cpu', 'cpu', 'float32')
    assert torch.get_float32_matmul_precision() == 'highest'


def test_oneline():
    assert oneline(EOFError()) == 'EOFError'  # regression: an empty message broke the line's formatting
    assert oneline(ValueError('a\n  b')) == 'ValueError: a b'
    assert len(oneline(ValueError('x' * 1000))) == 300


def tiny_checkpoint():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11))
    return {'model': model.state_dict(), 'optimizer': {'state': {}, 'param_groups': []},
            'model_args': dict(vars(model.config)), 'iter_num': 3, 'best_val_loss': 1.5, 'config': {}}


def test_save_and_load_check_the_tensors(tmp_path):
    path = str(tmp_path / 'ckpt.pt')
    checkpoint.save(path, tiny_checkpoint())
    ckpt, notes = checkpoint.load(path)
    assert ckpt['checksum'] == checkpoint.digest(ckpt) and ckpt['iter_num'] == 3
    # what older checkpoints lack is filled in, with a note where something is lost
    assert (ckpt['scaler'], ckpt['rng'], ckpt['wandb_run_id'], ckpt['evaluated']) == ({}, None, None, True)
    assert notes == ['no random state: batches and dropout start from fresh seeds']
    flipped = dict(ckpt)
    flipped['model'] = dict(ckpt['model'], **{'lm_head.weight': ckpt['model']['lm_head.weight'].clone()})
    flipped['model']['lm_head.weight'][3, 4] += 1e-6
    assert checkpoint.digest(flipped) != ckpt['checksum']
    model = checkpoint.build_model(ckpt, path, dropout=0.1)
    assert model.config.dropout == 0.1 and torch.equal(model.lm_head.weight, ckpt['model']['lm_head.weight'])


def test_load_refuses_what_is_not_a_checkpoint_of_this_code(tmp_path, capsys):
    path = str(tmp_path / 'ckpt.pt')
    torch.save({'model': {}}, path)
    with pytest.raises(SystemExit, match=rf"{path} is not a checkpoint of this code: it has no model_args, "
                                         r"optimizer, iter_num, best_val_loss, config$"):
        checkpoint.load(path)
    torch.save(dict(tiny_checkpoint(), model_args={'n_layer': 1, 'n_heads': 2}), path)
    with pytest.raises(SystemExit, match=r"does not match this model.py: TypeError: .*keyword argument 'n_heads'"):
        checkpoint.load(path)


@pytest.mark.parametrize('meta, message', [
    ({'chars': 'abc'}, "'chars' must list distinct single characters"),
    ({'chars': []}, "'chars' must list distinct single characters"),
    ({'chars': ['a', 'a']}, "'chars' must list distinct single characters"),
    ({'encoding': 'cl100k_base'}, "encoding 'cl100k_base': only 'gpt2' is known"),
    ({'vocab_size': 3}, "KeyError: 'encoding'"),
])
def test_a_bad_meta_json_is_one_line(tmp_path, meta, message):
    """Regression: a string of characters, an empty list or an unknown encoding passed, and failed later."""
    (tmp_path / 'meta.json').write_text(json.dumps(meta))
    with pytest.raises(SystemExit, match=f"cannot read a vocabulary from {tmp_path / 'meta.json'} .*{message}"):
        vocabulary.read_vocab(str(tmp_path))


def test_a_busy_cpu_gets_fewer_threads_and_one_note(monkeypatch, capsys):
    """Regression: on a 2-core machine kept busy by other programs, OpenMP's spinning threads made the
    quick start 16x slower, and nothing said why. A quiet machine keeps torch's default."""
    threads, busy_cores = torch.get_num_threads(), runtime.busy_cores
    assert 0.0 <= busy_cores(interval=0.01) <= runtime.os.cpu_count()  # from /proc/stat, in 10 ms
    monkeypatch.setattr(runtime.os, 'cpu_count', lambda: 4)
    try:
        torch.set_num_threads(4)
        assert runtime.spare_threads(busy=0.3) == 4 and torch.get_num_threads() == 4
        assert capsys.readouterr().err == ''
        assert runtime.spare_threads(busy=2.6) == 1 and torch.get_num_threads() == 1  # 1.4 idle cores
        assert capsys.readouterr().err == ("note: other programs keep 2.6 of the 4 cores busy: using 1 thread(s), "
                                           "not 4; OMP_WAIT_POLICY=PASSIVE is faster still, OMP_NUM_THREADS=N decides\n")
        torch.set_num_threads(4)
        assert runtime.spare_threads(busy=7.0) == 1  # at least one
        torch.set_num_threads(4)
        monkeypatch.setattr(runtime, 'busy_cores', lambda: 3.0)
        monkeypatch.setenv('OMP_NUM_THREADS', '4')  # the user's choice is left alone
        runtime.setup_device('cpu', 'float32')
        assert torch.get_num_threads() == 4
        monkeypatch.delenv('OMP_NUM_THREADS')
        runtime.setup_device('cpu', 'float32')
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_the_first_evaluation_says_what_it_does(trained):
    """Regression: on a CPU, the step-0 evaluation of the GPU config's model took 90 s before any line
    said what was happening."""
    lines = trained.stdout.splitlines()
    assert lines.index('evaluating 5 batches of each split...') == lines.index(next(
        line for line in lines if line.startswith('step 0:'))) - 1
    assert f"vocab_size {len(chars_of(trained.data))}: {len(chars_of(trained.data))} characters" in lines
