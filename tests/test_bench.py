"""bench.py on a tiny shape, on the CPU, as subprocesses:  python -m pytest -q tests/test_bench.py"""
import json
import pickle

import numpy as np

from conftest import run

TINY_BENCH = ['--device=cpu', '--compile=False', '--dtype=float32', '--n_layer=2', '--n_head=2', '--n_embd=32',
              '--block_size=32', '--batch_size=2', '--steps=3', '--warmup=1', '--json=True']


def last_json(p):
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_train_step_figures(tmp_path):
    r = last_json(run('bench.py', *TINY_BENCH, '--vocab_size=96', '--peak_flops=1e12', cwd=tmp_path))
    assert r['mode'] == 'train' and r['device'] == 'cpu' and r['batch_size'] == 2 and r['block_size'] == 32
    assert 0 < r['ms_min'] <= r['ms_median'] <= r['ms_max']
    assert r['tokens_per_s'] > 0 and r['peak_mem_mb'] > 0
    assert 0 < r['mfu'] < 1  # a peak was given, so MFU is computed even on a CPU


def test_real_data_with_profile(tmp_path, char_dataset):
    trace_dir = tmp_path / 'trace'
    p = run('bench.py', *TINY_BENCH, f'--dataset={char_dataset}', '--real_data=True', '--profile=True',
            f'--profile_dir={trace_dir}', cwd=tmp_path)
    r = last_json(p)
    meta = pickle.loads((char_dataset / 'meta.pkl').read_bytes())
    assert r['vocab_size'] == meta['vocab_size']  # the dataset's, as in train.py
    assert r['mfu'] is None and 'mfu n/a' in p.stdout  # no known peak for a CPU
    assert r['tokens_per_s'] > 0
    assert list(trace_dir.glob('*.pt.trace.json')), f"no trace in {trace_dir}: {list(trace_dir.iterdir())}"


def test_sample_mode(tmp_path):
    r = last_json(run('bench.py', *TINY_BENCH, '--mode=sample', '--max_new_tokens=8', '--batch_size=1',
                      cwd=tmp_path))
    assert r['cached']['tokens_per_s'] > 0 and r['uncached']['tokens_per_s'] > 0
    assert r['cache_speedup'] > 0


def test_sample_config_is_the_shakespeare_char_shape(tmp_path):
    r = last_json(run('bench.py', 'config/bench_sample_char.py', '--steps=1', '--max_new_tokens=4', '--json=True',
                      cwd=tmp_path))
    assert (r['mode'], r['batch_size'], r['block_size'], r['vocab_size']) == ('sample', 1, 256, 65)
    assert r['max_new_tokens'] == 4 and r['cache_speedup'] > 0


def test_bad_input_is_one_line(tmp_path):
    (tmp_path / 'a_file').write_text('not a folder')
    p = run('bench.py', *TINY_BENCH, '--device=tpu', cwd=tmp_path, check=False)
    assert p.returncode != 0
    assert p.stderr.strip().count('\n') == 0 and "device='tpu'" in p.stderr, p.stderr
    # regressions: these were tracebacks (or, for a zero batch, '0 tokens/s' and a nan loss)
    for flags, message in [(['--vocab_size=0'], 'vocab_size=0 must be >= 1'),
                           (['--batch_size=0'], 'batch_size=0 must be >= 1'),
                           (['--mode=sample', '--max_new_tokens=0'], 'max_new_tokens=0 must be >= 1'),
                           (['--grad_clip=-1'], 'grad_clip=-1.0 must be >= 0'),
                           (['--n_embd=31'], 'n_embd=31 is not divisible by n_head=2'),
                           (['--num_threads=-1'], 'num_threads=-1 must be >= 0 (0 keeps torch'),
                           (['--profile=True', f'--profile_dir={tmp_path / "a_file" / "x"}'],  # under a file
                            f"cannot create profile_dir '{tmp_path / 'a_file' / 'x'}' (Not a directory)")]:
        p = run('bench.py', *TINY_BENCH, *flags, cwd=tmp_path, check=False)
        assert p.returncode != 0 and 'Traceback' not in p.stderr and message in p.stderr, p.stderr
        assert 'steps after' not in p.stdout  # refused before any timing
    bpe = tmp_path / 'bpe'
    bpe.mkdir()
    np.arange(100, dtype=np.uint16).tofile(bpe / 'train.bin')  # no meta.pkl: GPT-2 BPE tokens
    p = run('bench.py', *TINY_BENCH, '--vocab_size=65', '--real_data=True', f'--dataset={bpe}', cwd=tmp_path,
            check=False)
    assert p.returncode != 0 and 'has no meta.pkl, so it holds GPT-2 BPE tokens, but vocab_size=65' in p.stderr
    p = run('bench.py', *TINY_BENCH, '--real_data=True', '--dataset=no_such_set', cwd=tmp_path, check=False)
    assert p.returncode != 0
    assert 'not found: run  python' in p.stderr and 'no_such_set' in p.stderr and 'Traceback' not in p.stderr
