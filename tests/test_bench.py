"""bench.py on a tiny shape, on the CPU, in this process:  python -m pytest -q tests/test_bench.py"""
import json

import numpy as np
import pytest

from conftest import assert_one_line_error, chars_of, needs_gpt2_bpe

TINY_BENCH = ['--device=cpu', '--compile=False', '--dtype=float32', '--n_layer=2', '--n_head=2', '--n_embd=32',
              '--block_size=32', '--batch_size=2', '--steps=3', '--warmup=1', '--json=True']


@pytest.fixture
def bench(script, tmp_path, monkeypatch):
    """bench(*args, check=True) -> (exit code, stdout, stderr, the JSON result or None), run in tmp_path."""
    monkeypatch.chdir(tmp_path)

    def go(*args, check=True):
        p = script('bench.py', *args, check=check)
        p.result = json.loads(p.out.strip().splitlines()[-1]) if p.code == 0 else None
        return p
    return go


def test_train_step_figures(bench):
    r = bench(*TINY_BENCH, '--vocab_size=96', '--peak_flops=1e12').result
    assert r['mode'] == 'train' and r['device'] == 'cpu' and r['batch_size'] == 2 and r['block_size'] == 32
    assert 0 < r['ms_min'] <= r['ms_median'] <= r['ms_max']
    assert r['tokens_per_s'] == pytest.approx(2 * 32 / (r['ms_median'] / 1000)) and r['peak_mem_mb'] > 0
    assert 0 < r['mfu'] < 1  # a peak was given, so MFU is computed even on a CPU
    # regression: bench.py compiled on any device, train.py on CUDA only; now both follow one rule
    p = bench(*TINY_BENCH, '--compile=True')
    assert 'compile=True ignored on cpu: torch.compile is used on CUDA only' in p.out and p.result['compile'] is False


def test_muon_step(bench):
    """--optimizer=muon times train.py's Muon step: one momentum buffer per block matrix (2 x 4 of them,
    24,576 weights), AdamW's two moments for the other 4,256 parameters, in float32."""
    r = bench(*TINY_BENCH, '--vocab_size=96', '--optimizer=muon').result
    assert r['optimizer'] == 'muon' and r['ms_median'] > 0
    assert r['state_mb']['optimizer'] * 2**20 == pytest.approx(4 * (24_576 + 2 * 4_256), abs=64)  # + AdamW's steps


def test_real_data_with_profile(bench, tmp_path, char_dataset):
    trace_dir = tmp_path / 'trace'
    p = bench(*TINY_BENCH, f'--dataset={char_dataset}', '--real_data=True', '--profile=True',
              f'--profile_dir={trace_dir}')
    assert p.result['vocab_size'] == len(chars_of(char_dataset))  # the dataset's, as in train.py
    assert p.result['mfu'] is None and 'mfu n/a' in p.out  # no known peak for a CPU
    assert p.result['tokens_per_s'] == pytest.approx(2 * 32 / (p.result['ms_median'] / 1000))
    assert list(trace_dir.glob('*.pt.trace.json')), f"no trace in {trace_dir}: {list(trace_dir.iterdir())}"


def test_sample_mode(bench):
    p = bench(*TINY_BENCH, '--mode=sample', '--max_new_tokens=8', '--batch_size=1')
    r = p.result
    for name in ('cached', 'uncached'):
        s = r[name]
        assert 0 < s['ms_min'] <= s['ms_median'] <= s['ms_max'], s
        assert s['tokens_per_s'] == pytest.approx(1 * 8 / (s['ms_median'] / 1000)), s  # batch x new tokens
    # the speedup is the ratio of the two median times, as printed
    assert r['cache_speedup'] == pytest.approx(r['uncached']['ms_median'] / r['cached']['ms_median'])
    assert f"KV cache speedup: {r['cache_speedup']:.2f}x" in p.out
    assert r['decode_form'] in ('plain', 'split') and f"decode form: {r['decode_form']} (chosen in" in p.out


def test_sample_config_is_the_shakespeare_char_shape(bench):
    p = bench('config/bench_sample_char.py', '--steps=1', '--max_new_tokens=4', '--json=True', '--decode_form=both')
    r = p.result
    assert (r['mode'], r['batch_size'], r['block_size'], r['vocab_size']) == ('sample', 1, 256, 65)
    assert r['max_new_tokens'] == 4
    # each form of the cached loop is timed; 'cached' is the one the timing chose
    assert r['cached'] == r[f"cached_{r['decode_form']}"] and 'cached_plain' in r and 'cached_split' in r
    assert 'cached_split: 4 tokens x batch 1' in p.out
    assert r['cache_speedup'] == pytest.approx(r['uncached']['ms_median'] / r['cached']['ms_median'])


def test_gpu_defaults_on_a_cpu_point_to_the_cpu_config(bench):
    """Regression: `python bench.py` on a machine without a GPU built the 124M shape at batch 12 x 1024,
    grew to 15 GB and printed nothing for 90 s."""
    p = bench('--device=cpu', check=False)
    assert_one_line_error(p, "bench.py's defaults are GPT-2 124M at batch 12 x 1024, a GPU's size")
    assert 'python bench.py config/bench_cpu_tiny.py' in p.err and 'parameters' not in p.out


def test_bad_input_is_one_line(bench, tmp_path):
    (tmp_path / 'a_file').write_text('not a folder')
    assert_one_line_error(bench(*TINY_BENCH, '--device=tpu', check=False), "device='tpu'")
    # regressions: these were tracebacks (or, for a zero batch, '0 tokens/s' and a nan loss)
    for flags, message in [(['--vocab_size=0'], 'vocab_size=0 must be positive'),
                           (['--batch_size=0'], 'batch_size=0 must be positive'),
                           (['--mode=sample', '--max_new_tokens=0'], 'max_new_tokens=0 must be positive'),
                           (['--mode=sample', '--decode_form=fast'], "decode_form='fast': use 'auto', 'plain',"),
                           (['--grad_clip=-1'], 'grad_clip=-1.0 must be >= 0'),
                           (['--n_embd=31'], 'n_embd=31 is not divisible by n_head=2'),
                           (['--num_threads=-1'], 'num_threads=-1 must be >= 0'),
                           (['--profile=True', f'--profile_dir={tmp_path / "a_file" / "x"}'],  # under a file
                            f"cannot create profile_dir '{tmp_path / 'a_file' / 'x'}' (Not a directory)")]:
        p = bench(*TINY_BENCH, *flags, check=False)
        assert_one_line_error(p, message)
        assert 'steps after' not in p.out  # refused before any timing
    bpe = tmp_path / 'bpe'
    bpe.mkdir()
    np.arange(100, dtype=np.uint16).tofile(bpe / 'train.bin')  # no meta.json: GPT-2 BPE tokens
    p = bench(*TINY_BENCH, '--vocab_size=65', '--real_data=True', f'--dataset={bpe}', check=False)
    assert_one_line_error(p, f"the model has 65 tokens, fewer than GPT-2's 50257, so it needs its dataset's "
                             f"meta.json, which is not at {bpe / 'meta.json'}")
    p = bench(*TINY_BENCH, '--real_data=True', '--dataset=no_such_set', check=False)
    assert_one_line_error(p, "no dataset 'no_such_set': data/ has ")


@needs_gpt2_bpe
def test_chat_mode_times_turn_five_with_and_without_the_cache(bench):
    p = bench(*TINY_BENCH, '--mode=chat', '--block_size=512', '--max_new_tokens=4', '--steps=1')
    histories = {line.split('(history ')[1] for line in p.out.splitlines() if "turn 5's first token" in line}
    assert len(histories) == 1 and int(histories.pop().split()[0]) > 5 * (20 + 4)  # five turns, both ways
    r = p.result
    assert r['cache_speedup'] == pytest.approx(r['re-read']['ms_median'] / r['cached']['ms_median'])
    assert bench(*TINY_BENCH, '--mode=chat', '--vocab_size=96', check=False).code == 2
