"""Shared helpers: tiny datasets, tiny training runs shared by the whole session, and three ways to run
the scripts: in this process (no 2 s of start-up; exit code, stdout and stderr come back; signals too:
test_train.signals_at), as a subprocess (for what only a real process shows: pipes, SIGKILL, a fresh
process) or under torchrun.

Two tiers: `python -m pytest -q -m "not slow" tests` leaves out the tests marked slow (torchrun, long
subprocess runs), for the edit-test loop; `python -m pytest -q tests` runs them all."""
import contextlib
import io
import json
import os
import pickle
import runpy
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / 'shared'

# Every test that needs the GPT-2 BPE finds tiktoken's files the same way: through TIKTOKEN_CACHE_DIR,
# which defaults to ../shared/tiktoken_cache when that exists. Without them, those tests skip.
if 'TIKTOKEN_CACHE_DIR' not in os.environ and (SHARED / 'tiktoken_cache').is_dir():
    os.environ['TIKTOKEN_CACHE_DIR'] = str(SHARED / 'tiktoken_cache')


# One thread for torch in this process, as the scripts run here get (_run_here): tiny models gain nothing
# from more, and on a busy machine OpenMP's spinning threads stall (this process's own forwards, at
# torch's default of one thread a core, took 3x the time on a shared 2-core machine).
torch.set_num_threads(1)


def _gpt2_bpe_loads():
    if not os.environ.get('TIKTOKEN_CACHE_DIR'):
        return False
    try:
        import tiktoken
        tiktoken.get_encoding('gpt2')
        return True
    except Exception:
        return False


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: several seconds or more (torchrun, long subprocess runs); '
                                       'leave these out with -m "not slow"')


needs_gpt2_bpe = pytest.mark.skipif(not _gpt2_bpe_loads(), reason="GPT-2 BPE files not found: point "
                                    "TIKTOKEN_CACHE_DIR at a folder holding tiktoken's gpt2 cache")

# a tiny model that trains in seconds on a CPU; append --out_dir and --dataset
TINY = ['--device=cpu', '--compile=False', '--dtype=float32', '--n_layer=2', '--n_head=2', '--n_embd=32',
        '--block_size=32', '--batch_size=4', '--max_iters=10', '--dropout=0.0', '--lr_decay_iters=10',
        '--warmup_iters=2', '--gradient_accumulation_steps=1', '--eval_interval=5', '--eval_iters=2',
        '--log_interval=1', '--wandb_log=False']
# the shared run: enough iterations at a high learning rate to show that the model learns
TRAINED = ['--max_iters=60', '--lr_decay_iters=60', '--learning_rate=1e-2', '--eval_interval=20', '--eval_iters=5']

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 40


def write_char_dataset(out_dir, text=TEXT, legacy=False):
    """train.bin / val.bin / meta.json for a character-level dataset, 90/10 split; legacy: a meta.pkl
    instead, as prepare.py wrote before."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    n = int(0.9 * len(ids))
    ids[:n].tofile(out_dir / 'train.bin')
    ids[n:].tofile(out_dir / 'val.bin')
    if legacy:
        (out_dir / 'meta.pkl').write_bytes(pickle.dumps({'vocab_size': len(chars), 'stoi': stoi,
                                                         'itos': dict(enumerate(chars))}))
    else:
        (out_dir / 'meta.json').write_text(json.dumps({'vocab_size': len(chars), 'chars': chars}), encoding='utf-8')
    return out_dir


def chars_of(folder):
    """The characters of a dataset folder's meta.json: token i is chars[i]."""
    return json.loads((Path(folder) / 'meta.json').read_text(encoding='utf-8'))['chars']


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory):
    """A tiny character-level dataset folder shared by the session (pass it as --dataset=<path>); tests
    must not change it."""
    return write_char_dataset(tmp_path_factory.mktemp('shared') / 'tiny_char')


@pytest.fixture
def char_dataset(tmp_path):
    """A tiny character-level dataset folder of this test's own."""
    return write_char_dataset(tmp_path / 'data' / 'tiny_char')


def run(script, *args, cwd=None, env=None, check=True, timeout=300):
    """Run REPO/script with args in a subprocess; returns the CompletedProcess. On an unexpected exit
    code the assertion message carries the tail of stderr."""
    full_env = dict(os.environ, PYTHONUNBUFFERED='1', WANDB_MODE='offline', **(env or {}))
    p = subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd or REPO,
                       env=full_env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert p.returncode == 0, f"{script} exited {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p


def torchrun(script, *args, nproc=2, popen=False, env=None, timeout=300):
    """script (a path under REPO, or an absolute one) with args in nproc processes of one thread each, as
    `torchrun --standalone --nproc_per_node=nproc` starts them -> a CompletedProcess. With popen, the
    running torchrun itself (a Popen, text, stdout and stderr piped), for tests that signal it. Without,
    the processes are started here with the environment torchrun gives them (1.2 s less per start than
    torchrun's own launcher); when one fails, the others get SIGTERM, as torchrun sends them. stdout and
    stderr hold every process's, rank by rank; returncode is the first failure's, else 0."""
    full_env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1', **(env or {})}
    if popen:
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}',
               str(REPO / script), *map(str, args)]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)
    with socket.socket() as s:  # a free port for the processes' rendezvous
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    procs, outs = [], []
    for rank in range(nproc):
        outs.append((tempfile.TemporaryFile('w+'), tempfile.TemporaryFile('w+')))
        procs.append(subprocess.Popen(
            [sys.executable, str(REPO / script), *map(str, args)], stdout=outs[-1][0], stderr=outs[-1][1],
            text=True, env={**full_env, 'RANK': str(rank), 'LOCAL_RANK': str(rank), 'WORLD_SIZE': str(nproc),
                            'LOCAL_WORLD_SIZE': str(nproc), 'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(port)}))
    deadline, code, stopped = time.time() + timeout, 0, None
    while None in [p.poll() for p in procs]:  # every process polled, every pass
        failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
        if stopped is None and (failed or time.time() > deadline):
            code, stopped = failed[0] if failed else -signal.SIGKILL, time.time()
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
        if stopped is not None and time.time() > stopped + 10:  # torchrun's grace, shorter
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.05)
    code = code or next((p.returncode for p in procs if p.returncode), 0)
    texts = []
    for f in (f for pair in zip(*outs) for f in pair):
        f.seek(0)
        texts.append(f.read())
        f.close()
    return subprocess.CompletedProcess(procs[0].args, code, ''.join(texts[:nproc]), ''.join(texts[nproc:]))


def _run_here(name):
    """Run REPO/name in this process as __main__, with sys.argv as it is -> the exit code. Signal handlers,
    runtime's stop flag and torch's thread count are as before afterwards."""
    import runtime
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models gain nothing from threads, which stall on a busy machine
    try:
        runpy.run_path(str(REPO / name), run_name='__main__')
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        runtime.stop_signal = None
        torch.set_num_threads(threads)
    return 0


@pytest.fixture
def script(monkeypatch, capsys):
    """script(name, *args, check=True) runs REPO/name in this process as `python name args` would, and
    returns SimpleNamespace(code, out, err). Anything but an exit (a traceback) fails the test."""
    def go(name, *args, check=True):
        monkeypatch.setattr(sys, 'argv', [name, *map(str, args)])
        code = _run_here(name)
        out, err = capsys.readouterr()
        if check:
            assert code == 0, f"{name} exited {code}\n{out[-2000:]}\n{err[-3000:]}"
        return SimpleNamespace(code=code, out=out, err=err)
    return go


def in_process(name, *args, check=True):
    """What the script fixture does, for session fixtures (which cannot use it): REPO/name with args in this
    process -> SimpleNamespace(code, out, err); with check, an exit code other than 0 fails."""
    argv, sys.argv = sys.argv, [name, *map(str, args)]
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = _run_here(name)
    finally:
        sys.argv = argv
    if check:
        assert code == 0, f"{name} exited {code}\n{out.getvalue()[-2000:]}\n{err.getvalue()[-3000:]}"
    return SimpleNamespace(code=code, out=out.getvalue(), err=err.getvalue())


def assert_one_line_error(p, text):
    """A user's mistake: exit code 2 and a last stderr line 'error: ...' that holds text."""
    code, err = (p.code, p.err) if hasattr(p, 'err') else (p.returncode, p.stderr)
    assert code == 2, err
    assert 'Traceback' not in err, err
    assert text in err, err
    assert err.strip().splitlines()[-1].startswith('error: '), err


@pytest.fixture(scope='session')
def trained(tiny_data, tmp_path_factory):
    """One tiny training run shared by the session: SimpleNamespace(data, out, stdout). Tests that change
    its out_dir work on a copy (trained_copy)."""
    out = tmp_path_factory.mktemp('trained') / 'out'
    p = in_process('train.py', *TINY, *TRAINED, f'--dataset={tiny_data}', f'--out_dir={out}')
    return SimpleNamespace(data=tiny_data, out=out, stdout=p.out)


@pytest.fixture
def trained_copy(trained, tmp_path):
    """A copy of the shared run's out_dir, for a test to resume, damage or overwrite."""
    return Path(shutil.copytree(trained.out, tmp_path / 'out'))


# the resumed-run comparison (test_train.py, test_metrics.py): 20 iterations in one go, and 10, then 10 more
RESUMED = ['--dropout=0.1', '--gradient_accumulation_steps=2', '--lr_decay_iters=20', '--eval_interval=5',
           '--tensorboard_log=True']


@pytest.fixture(scope='session')
def resumed(tiny_data, tmp_path_factory):
    """One run, in this process: 20 iterations in one go (out_dir whole), and 10, then 10 more after
    --init_from=resume (out_dir parts), then once more from parts' checkpoint at 10, as if the run had died
    after it but had logged on to 20. SimpleNamespace(data, whole, parts: folders; whole_log, first, second,
    again: the runs' SimpleNamespace(code, out, err); ckpt20: a copy of parts' ckpt.pt after its second run).
    Tests must not change the folders."""
    tmp = tmp_path_factory.mktemp('resumed')
    r = SimpleNamespace(data=tiny_data, whole=tmp / 'whole', parts=tmp / 'parts', ckpt20=tmp / 'ckpt20.pt')
    train = lambda out, *args: in_process('train.py', *TINY, *RESUMED, f'--dataset={tiny_data}', f'--out_dir={out}',
                                          *args)
    r.whole_log = train(r.whole, '--max_iters=20')
    r.first = train(r.parts, '--max_iters=10')
    shutil.copy(r.parts / 'ckpt.pt', tmp / 'ckpt10.pt')
    r.second = train(r.parts, '--max_iters=20', '--init_from=resume')
    shutil.copy(r.parts / 'ckpt.pt', r.ckpt20)
    shutil.copy(tmp / 'ckpt10.pt', r.parts / 'ckpt.pt')
    r.again = train(r.parts, '--max_iters=20', '--init_from=resume')
    return r


# the shared DDP run (test_ddp.py checks its log and resumes it; test_fsdp.py compares FSDP with it)
DDP_RUN = ['--max_iters=30', '--lr_decay_iters=30', '--gradient_accumulation_steps=4', '--eval_iters=3']


@pytest.fixture(scope='session')
def ddp_run(tiny_data, tmp_path_factory):
    """train.py under torchrun, 2 processes of 2 micro-steps, 30 iterations, with a peak for MFU, the val
    task at each evaluation and TensorBoard: SimpleNamespace(data, out, stdout, stderr). Tests that change
    its out_dir work on a copy."""
    out = tmp_path_factory.mktemp('ddp') / 'out'
    p = torchrun('train.py', *TINY, *DDP_RUN, f'--dataset={tiny_data}', f'--out_dir={out}', '--peak_flops=1e10',
                 '--eval_tasks=val', '--tensorboard_log=True')
    assert p.returncode == 0, p.stderr[-3000:]
    return SimpleNamespace(data=tiny_data, out=out, stdout=p.stdout, stderr=p.stderr)


def overwrite_largest_tensor(path):
    """Overwrite at random the bytes of the largest tensor in a torch.save file: a zip archive that stores
    each tensor uncompressed, in a record of its own."""
    data = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack('<HH', data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len  # after the record's local header
    path.write_bytes(data[:start] + os.urandom(info.file_size) + data[start + info.file_size:])
