"""FSDP (--fsdp=True): train.py under torchrun on CPU (gloo), sharded checkpoints, and their readers.
Run: python -m pytest -q tests/test_fsdp.py"""
import os
import re
import shutil
import signal
from types import SimpleNamespace

import pytest
import torch

import checkpoint
import sharding
from conftest import DDP_RUN, REPO, TINY, assert_one_line_error, chars_of, in_process, torchrun

FSDP = ['--fsdp=True', '--gradient_accumulation_steps=4', '--eval_iters=3']  # 2 micro-steps per process
LONG = ['--max_iters=30', '--lr_decay_iters=30']  # long enough for a Ctrl-C to land before the end


def lines(out):
    """The loss lines of a log, without their timings."""
    return [re.sub(r'time \S+ms( \([^)]*\))?, mfu \S+, tok/s [\d,]+, ', '', line) for line in out.splitlines()
            if line.startswith(('iter ', 'step '))]


def state(path):
    """A checkpoint's weights and optimizer state as one flat dict of tensors (a sharded one gathered)."""
    ckpt, _ = checkpoint.load(str(path))
    flat = {f'model.{k}': v for k, v in ckpt['model'].items()}
    flat.update({f'optim.{i}.{k}': v for i, s in ckpt['optimizer']['state'].items() for k, v in s.items()})
    return flat, ckpt


def assert_same(a, b, tol=0.0):
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert worst <= tol, worst


@pytest.fixture(scope='module')
def runs(ddp_run, tmp_path_factory):
    """FSDP, 2 processes, 30 iterations, beside the shared DDP run of conftest.py: the same data and
    settings (DDP_RUN, which are LONG and FSDP here less --fsdp). SimpleNamespace(data, ddp, fsdp: the two
    out_dirs, log: {'ddp': stdout, 'fsdp': stdout}); FSDP's checkpoint feeds the tests, which copy it."""
    fsdp = tmp_path_factory.mktemp('fsdp') / 'out'
    p = torchrun('train.py', *TINY, *DDP_RUN, '--fsdp=True', f'--dataset={ddp_run.data}', f'--out_dir={fsdp}')
    assert p.returncode == 0, p.stderr[-3000:]
    return SimpleNamespace(data=ddp_run.data, ddp=ddp_run.out, fsdp=fsdp, log={'ddp': ddp_run.stdout, 'fsdp': p.stdout})


@pytest.mark.slow
def test_fsdp_equals_ddp(runs):
    assert 'saved sharded checkpoint to' in runs.log['fsdp'] and 'parameters identical' not in runs.log['fsdp']
    assert sorted(os.listdir(runs.fsdp)) == ['ckpt.dcp']
    assert sorted(os.listdir(runs.fsdp / 'ckpt.dcp')) == ['.metadata', '__0_0.distcp', '__1_0.distcp', 'meta.pt']
    # the same batches and the same sums: reduce-scatter adds the 2 processes' gradients as all-reduce
    # does, so on this CPU FSDP's losses, weights and AdamW moments come out as DDP's to the bit (the
    # tolerances leave room for another CPU's reduction order)
    def numbers(out):  # DDP's eval task (after ';') left out: FSDP runs none
        return [float(v) for line in lines(out) for v in re.findall(r'\d+\.\d+(?:e-\d+)?', line.split(';')[0])]
    ddp_log, fsdp_log = runs.log['ddp'], runs.log['fsdp']
    assert len(lines(ddp_log)) == 37 and numbers(fsdp_log) == pytest.approx(numbers(ddp_log), abs=2e-4)
    ddp, _ = state(runs.ddp / 'ckpt.pt')
    fsdp, ckpt = state(runs.fsdp / 'ckpt.dcp')
    assert ckpt['iter_num'] == 30 and len(ckpt['rng']) == 2
    assert_same(fsdp, ddp, tol=1e-6)  # measured: 0.0


# one process, DDP and FSDP on the same global batches, through the functions train.py uses
SAME_BATCH = r'''
import os, sys
sys.path.insert(0, os.environ['REPO'])
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
import runtime, sharding
from model import GPT, GPTConfig
dist.init_process_group('gloo')
rank, world = dist.get_rank(), dist.get_world_size()
X = torch.randint(0, 65, (8, 32), generator=torch.Generator().manual_seed(0))  # 8 rows, learned by heart

compile_block, compiled = torch.nn.Module.compile, []  # train.py compiles on CUDA only; here dynamo alone

def count_and_compile(self, **kwargs):
    compiled.append(type(self).__name__)
    compile_block(self, backend='aot_eager')

torch.nn.Module.compile = count_and_compile

def train(mode, ac=False, compile=False):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=31, vocab_size=65, dropout=0.0, bias=False))
    model = sharding.place(model, 'cpu', 'float32', mode == 'fsdp', ac, compile)
    opt = model.configure_optimizers(0.1, 1e-2, (0.9, 0.95), 'cpu', verbose=False)
    wrapped = DDP(model) if mode == 'ddp' else model
    rows = range(8) if mode == 'one' else range(rank * 4, rank * 4 + 4)
    losses = []
    for step in range(6):
        total = torch.zeros(())
        for micro in range(2):  # 2 micro-steps, the gradients synced on the second
            if mode != 'one':
                runtime.sync_gradients(wrapped, micro == 1)
            x = X[list(rows)[micro::2]]
            _, loss = wrapped(x[:, :-1], x[:, 1:])
            (loss / 2).backward()
            total += loss.detach() / 2
        norm = sharding.full_tensor(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5))
        opt.step()
        opt.zero_grad(set_to_none=True)
        if mode != 'one':
            dist.all_reduce(total)
            total /= world
        losses.append((total.item(), norm.item()))
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)) \
        if mode == 'fsdp' else model.state_dict()
    return losses, weights

results = {m: train(m) for m in ('one', 'ddp', 'fsdp')}
results['fsdp+ac'] = train('fsdp', ac=True)
results['one+ac'] = train('one', ac=True)
results['fsdp+ac+compile'] = train('fsdp', ac=True, compile=True)
results['one+ac+compile'] = train('one', ac=True, compile=True)
results['compiled'] = compiled
if rank == 0:
    torch.save(results, os.environ['RESULT'])
dist.destroy_process_group()
'''


@pytest.mark.slow
def test_one_process_ddp_and_fsdp_agree_on_the_same_global_batch(tmp_path):
    (tmp_path / 'same.py').write_text(SAME_BATCH)
    p = torchrun(tmp_path / 'same.py', env={'REPO': str(REPO), 'RESULT': str(tmp_path / 'r.pt')})
    if not (tmp_path / 'r.pt').exists():
        assert p.returncode == 0, p.stderr[-3000:]
    r = torch.load(tmp_path / 'r.pt', weights_only=True)
    one, ddp, fsdp = (torch.tensor(r[m][0]) for m in ('one', 'ddp', 'fsdp'))
    assert one[-1, 0] < one[0, 0] - 0.1  # it learns
    # the losses agree to float32 rounding: one process sums 8 rows per micro-step, the others 4 and
    # then add the two halves, so the last bits differ; DDP and FSDP add in the same order
    assert (ddp - one).abs().max() < 1e-5 and (fsdp - ddp).abs().max() < 1e-6
    for a, b in [(r['one'][1], r['ddp'][1]), (r['fsdp'][1], r['ddp'][1])]:
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    # activation checkpointing recomputes the same numbers; compiled Blocks (traced by dynamo through
    # FSDP's and the recompute's hooks) compute them too
    assert torch.equal(torch.tensor(r['fsdp+ac'][0]), fsdp) and torch.equal(torch.tensor(r['one+ac'][0]), one)
    # (regression: without FSDP, train.py's whole-model compile with activation checkpointing failed the
    # recompute's check; now place() compiles each Block there too, and train.py leaves the model be)
    assert r['compiled'] == ['Block'] * 4 and sharding.compiles_blocks(False, True)
    assert (torch.tensor(r['fsdp+ac+compile'][0]) - fsdp).abs().max() < 1e-6
    assert (torch.tensor(r['one+ac+compile'][0]) - one).abs().max() < 1e-6


RESHARD = r'''
import os, sys
sys.path.insert(0, os.environ['REPO'])
import torch, torch.distributed as dist
import checkpoint, sharding
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
dist.init_process_group('gloo')
for i, path in enumerate(os.environ['CKPTS'].split(os.pathsep)):
    ckpt, _ = checkpoint.read_meta(path) if os.path.isdir(path) else checkpoint.load(path, mmap=True)  # as train.py
    model = sharding.place(checkpoint.build_model(ckpt, path), 'cpu', 'float32', True)
    opt = model.configure_optimizers(0.0, 0.0, (0.9, 0.95), 'cpu', verbose=False)
    checkpoint.restore(ckpt, path, opt, torch.amp.GradScaler("cpu", enabled=False), sharded_model=model)
    weights, moments = get_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() == 0:
        torch.save({'model': weights, 'optimizer': moments}, f"{os.environ['RESULT']}.{i}")
dist.destroy_process_group()
'''


def sharded_then_gathered(paths, nproc, tmp_path):
    """Checkpoints loaded as train.py's FSDP resume loads them, at nproc processes, then gathered whole
    (one launch for them all) -> for each, (its state, the checkpoint's own), both flat as state() gives them."""
    (tmp_path / 'reshard.py').write_text(RESHARD)
    p = torchrun(tmp_path / 'reshard.py', nproc=nproc, env={'REPO': str(REPO), 'RESULT': str(tmp_path / 'r.pt'),
                                                           'CKPTS': os.pathsep.join(map(str, paths))})
    pairs = []
    for i, path in enumerate(paths):
        result = tmp_path / f'r.pt.{i}'
        assert result.exists(), p.stderr[-3000:]
        got = torch.load(result, weights_only=True)
        names = [n for g in got['optimizer']['param_groups'] for n in g['params']]  # position -> name
        flat = {f'model.{k}': v for k, v in got['model'].items()}
        flat.update({f'optim.{j}.{k}': v for j, n in enumerate(names) for k, v in got['optimizer']['state'][n].items()})
        pairs.append((flat, state(path)[0]))
    return pairs


@pytest.fixture(scope='module')
def one_process_resume(runs, tmp_path_factory):
    """A copy of the FSDP run resumed in one process to iter 32: its ckpt.pt replaces the shards.
    SimpleNamespace(out, log)."""
    out = tmp_path_factory.mktemp('resumed_in_one') / 'run'
    shutil.copytree(runs.fsdp, out)
    p = in_process('train.py', *TINY, f'--dataset={runs.data}', f'--out_dir={out}', '--init_from=resume',
                   '--max_iters=32', '--lr_decay_iters=30')
    return SimpleNamespace(out=out, log=p.out)


@pytest.fixture(scope='module')
def resharded(runs, one_process_resume, tmp_path_factory):
    """FSDP's 2-process shards (dcp) and the one-process ckpt.pt (pt), taken up at 3 processes (uneven shards:
    32 rows do not split in 3) as train.py's FSDP resume takes them up, in one launch: {'dcp': (gathered,
    own), 'pt': (gathered, own)}."""
    paths = [runs.fsdp / 'ckpt.dcp', one_process_resume.out / 'ckpt.pt']
    return dict(zip(('dcp', 'pt'), sharded_then_gathered(paths, 3, tmp_path_factory.mktemp('reshard'))))


@pytest.mark.slow
def test_cross_format_resume_and_sample(runs, one_process_resume, resharded, tmp_path, script):
    data = runs.data
    # sample.py and eval.py read the sharded checkpoint, gathered into one process
    p = script('sample.py', f'--out_dir={runs.fsdp}', '--device=cpu', '--num_samples=1', '--max_new_tokens=20')
    assert len(p.out.split('---------------')[0].strip()) >= 20, p.out
    # a single-process resume takes it up and writes a ckpt.pt, which replaces the stale shards
    log, pt = one_process_resume.log, one_process_resume.out / 'ckpt.pt'
    assert f'resuming from {pt.parent / "ckpt.dcp"} at iter 30' in log and 'fsdp True -> False' in log
    assert sorted(os.listdir(pt.parent)) == ['ckpt.pt']
    # and FSDP takes up that ckpt.pt, weights and AdamW state exactly (but not an optimizer state for
    # another number of tensors: test_an_optimizer_state_of_another_model_is_refused)
    assert_same(*resharded['pt'])
    run = tmp_path / 'run'
    shutil.copytree(pt.parent, run)
    q = torchrun('train.py', *TINY, f'--dataset={data}', f'--out_dir={run}', '--init_from=resume', '--max_iters=33',
                 *FSDP)
    assert q.returncode == 0, q.stderr[-3000:]
    assert f'resuming from {run / "ckpt.pt"} at iter 32' in q.stdout and sorted(os.listdir(run)) == ['ckpt.dcp']
    assert checkpoint.load(str(run / 'ckpt.dcp'))[0]['iter_num'] == 33


def test_an_optimizer_state_of_another_model_is_refused(trained, capsys):
    """FSDP's resume from a ckpt.pt keys the optimizer state by parameter name: a state for another number
    of tensors is one line (regression: an IndexError's traceback). In this process, in a process group of
    one: train.py's FSDP resume calls restore() as here (test_cross_format_resume_and_sample), and the check
    comes before any collective."""
    import torch.distributed as dist
    path = str(trained.out / 'ckpt.pt')
    ckpt, _ = checkpoint.load(path)
    gone = ckpt['optimizer']['param_groups'][1]['params'].pop()
    del ckpt['optimizer']['state'][gone]
    dist.init_process_group('gloo', store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = sharding.place(checkpoint.build_model(ckpt, path), 'cpu', 'float32', True)
        optimizer = model.configure_optimizers(0.0, 0.0, (0.9, 0.95), 'cpu', verbose=False)
        with pytest.raises(SystemExit) as stop:
            checkpoint.restore(ckpt, path, optimizer, torch.amp.GradScaler('cpu', enabled=False), sharded_model=model)
    finally:
        dist.destroy_process_group()
    assert_one_line_error(SimpleNamespace(code=stop.value.code, err=capsys.readouterr().err),
                          f'{path}: the optimizer state does not fit the model (ValueError: it holds the state of '
                          f'14 tensors, this model has 15)')


@pytest.mark.slow
def test_resume_at_another_world_size(resharded):
    # three processes take up two's shards: every weight and AdamW moment is where it was
    assert_same(*resharded['dcp'])
    # train.py's resume takes this same path (the random state then starts afresh, as under DDP: test_ddp.py)


@pytest.mark.slow
def test_consolidate_writes_the_same_state_as_ckpt_pt(runs, tmp_path, script):
    shutil.copytree(runs.fsdp, tmp_path / 'run')
    p = script('export.py', f'--out_dir={tmp_path / "run"}', '--consolidate=True')
    assert 'wrote' in p.out and '(iter 30)' in p.out, p.out
    assert sorted(os.listdir(tmp_path / 'run')) == ['ckpt.dcp', 'ckpt.pt']
    a, ca = state(tmp_path / 'run' / 'ckpt.pt')
    b, cb = state(runs.ddp / 'ckpt.pt')  # DDP's own file: the same keys and format
    assert_same(a, b, tol=1e-6)
    assert ca.keys() == cb.keys() and ca['optimizer']['param_groups'] == cb['optimizer']['param_groups']
    p = script('export.py', f'--out_dir={runs.ddp}', '--consolidate=True', check=False)
    assert_one_line_error(p, 'no sharded checkpoint')


@pytest.mark.slow
def test_crash_mid_save_leaves_the_previous_checkpoint(runs, tmp_path, script):
    """A crash between the save's two renames (the previous folder set aside as .old, no new one) is
    resumed from the .old folder: test_interrupted_by_sigint_then_resumed_is_the_same_run."""
    data = runs.data
    run = tmp_path / 'run'
    shutil.copytree(runs.fsdp, run)
    # a crash while the shards were written: a partial .tmp folder beside the whole checkpoint
    (run / 'ckpt.dcp.tmp').mkdir()
    (run / 'ckpt.dcp.tmp' / '__0_0.distcp').write_bytes(b'partial')
    p = script('sample.py', f'--out_dir={run}', '--device=cpu', '--num_samples=1', '--max_new_tokens=5')
    assert len(p.out.split('\n---')[0]) == 1 + 5, p.out  # the prompt '\n' and 5 characters
    # a save that fails on rank 0 alone (here: renaming the old folder aside): every process stops in one
    # line, the unfinished folder is gone and the previous checkpoint is as it was
    shutil.rmtree(run / 'ckpt.dcp.tmp')
    (run / 'ckpt.dcp.old').write_text('in the way')
    p = torchrun('train.py', *TINY, f'--dataset={data}', f'--out_dir={run}', '--init_from=resume', '--max_iters=31',
                 *FSDP)
    assert p.returncode != 0 and 'error: cannot write' in p.stderr and 'the previous checkpoint is unchanged' \
        in p.stderr and 'Connection closed' not in p.stderr, p.stderr[-3000:]
    assert sorted(os.listdir(run)) == ['ckpt.dcp', 'ckpt.dcp.old']
    assert checkpoint.load(str(run / 'ckpt.dcp'))[0]['iter_num'] == 30


@pytest.mark.slow
@pytest.mark.filterwarnings('ignore:torch.distributed is disabled')
def test_broken_sharded_checkpoints_fail_in_one_line(runs, tmp_path, script):
    data = runs.data
    for name, damage, text in [
            ('missing', lambda d: os.remove(d / '__1_0.distcp'), '__1_0.distcp missing or cut short'),
            ('short', lambda d: os.truncate(d / '__0_0.distcp', 100), '__0_0.distcp missing or cut short'),
            ('nometa', lambda d: os.remove(d / 'meta.pt'), 'incomplete sharded checkpoint: it has no meta.pt')]:
        run = tmp_path / name
        shutil.copytree(runs.fsdp, run)
        damage(run / 'ckpt.dcp')
        p = script('sample.py', f'--out_dir={run}', '--device=cpu', check=False)
        assert_one_line_error(p, text)
    # shards of another model (wider) under this one's meta.pt, with sizes that match: only DCP can tell
    run = tmp_path / 'other'
    shutil.copytree(runs.fsdp, run)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from model import GPT, GPTConfig
    wide = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=48, block_size=32, vocab_size=len(chars_of(data)), bias=False))
    model_state, optim_state = get_state_dict(wide, wide.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu', False))
    for f in os.listdir(run / 'ckpt.dcp'):
        if f != 'meta.pt':
            os.remove(run / 'ckpt.dcp' / f)
    dcp.save({'model': model_state, 'optimizer': optim_state}, checkpoint_id=run / 'ckpt.dcp', no_dist=True)
    ckpt, _ = checkpoint.load(str(run / 'ckpt.dcp' / 'meta.pt'), ())
    ckpt['files'] = {f: os.path.getsize(run / 'ckpt.dcp' / f) for f in os.listdir(run / 'ckpt.dcp') if f != 'meta.pt'}
    checkpoint.save(str(run / 'ckpt.dcp' / 'meta.pt'), {k: v for k, v in ckpt.items() if k != 'checksum'})
    p = script('sample.py', f'--out_dir={run}', '--device=cpu', check=False)
    assert_one_line_error(p, 'does not fit this model (ValueError: Size mismatch')
    # a shape setting that contradicts the checkpoint
    p = script('train.py', *TINY, f'--dataset={data}', f'--out_dir={runs.fsdp}', '--init_from=resume',
               '--n_layer=3', check=False)
    assert_one_line_error(p, 'does not match the requested model (n_layer: checkpoint 2, requested 3)')


def test_fsdp_setting_errors(tiny_data, tmp_path, script, monkeypatch):
    base = [*TINY, f'--dataset={tiny_data}', f'--out_dir={tmp_path / "o"}', '--fsdp=True']
    for extra, text in [([], 'fsdp=True shards the model over processes: start it with torchrun'),
                        (['--dtype=float16'], 'fsdp=True computes in bfloat16 or float32'),
                        (['--eval_tasks=val'], 'eval_tasks needs the whole model in every process')]:
        assert_one_line_error(script('train.py', *base, *extra, check=False), text)
    import torch.distributed.fsdp
    monkeypatch.delattr(torch.distributed.fsdp, 'fully_shard')  # as in a torch before 2.6
    assert_one_line_error(script('train.py', *base, check=False), 'install torch 2.6 or newer')
    assert not (tmp_path / 'o').exists()  # a world size that does not divide: test_ddp.py, the same check


@pytest.mark.slow
def test_interrupted_by_sigint_then_resumed_is_the_same_run(runs, tmp_path):
    """Ctrl-C mid-run, then --init_from=resume: the checkpoint holds every process's shards and random
    state, so the two runs together are the uninterrupted one to the bit, also when the resume finds the
    checkpoint where a crash between a save's two renames leaves it."""
    data = runs.data
    proc = torchrun('train.py', *TINY, f'--dataset={data}', f'--out_dir={tmp_path / "run"}', *LONG, *FSDP, popen=True)
    for line in proc.stdout:
        if line.startswith('iter 3:'):
            break
    proc.send_signal(signal.SIGINT)  # as after a Ctrl-C: torchrun passes it on to both processes
    out, err = proc.communicate(timeout=120)
    stopped = int(re.search(r'stopped by SIGINT at iter (\d+)', err)[1])
    assert 3 <= stopped < 30 and 'saved sharded checkpoint' in out, err[-3000:]
    # as if the next save had then crashed between its two renames: the checkpoint set aside as .old, no
    # new one, and a partial .tmp folder; the resume takes up .old and the leftovers go
    run = tmp_path / 'run'
    os.rename(run / 'ckpt.dcp', run / 'ckpt.dcp.old')
    (run / 'ckpt.dcp.tmp').mkdir()
    (run / 'ckpt.dcp.tmp' / '__0_0.distcp').write_bytes(b'partial')
    # recomputing the activations changes no bit either
    p = torchrun('train.py', *TINY, f'--dataset={data}', f'--out_dir={run}', *LONG, *FSDP,
                 '--init_from=resume', '--activation_checkpointing=True')
    assert p.returncode == 0, p.stderr[-3000:]
    assert f'resuming from {run / "ckpt.dcp.old"} at iter {stopped}' in p.stdout, p.stdout
    assert 'random state restored for all 2 process(es)' in p.stdout
    assert sorted(os.listdir(run)) == ['ckpt.dcp']
    assert_same(state(run / 'ckpt.dcp')[0], state(runs.fsdp / 'ckpt.dcp')[0])  # bit for bit


SPY = r'''
import os, runpy, sys
sys.path.insert(0, os.environ['REPO'])
import model
read = model.GPT.from_pretrained.__func__

def spy(cls, *args, **kwargs):  # note which processes read the weights
    with open(os.environ['READERS'], 'a') as f:
        f.write(os.environ['RANK'] + '\n')
    return read(cls, *args, **kwargs)

model.GPT.from_pretrained = classmethod(spy)
sys.argv[0] = os.path.join(os.environ['REPO'], 'train.py')
runpy.run_path(sys.argv[0], run_name='__main__')
'''


@pytest.mark.slow
def test_finetune_gpt2_weights_read_by_rank_0_alone(runs, tmp_path):
    transformers = pytest.importorskip('transformers')
    data = runs.data
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=len(chars_of(data)), n_positions=64)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / 'hf')
    # one step at learning rate 0 (AdamW then moves no weight, its decay included): the checkpoint holds
    # the weights as the processes received them
    args = [f'--dataset={data}', f'--init_from={tmp_path / "hf"}', '--block_size=32', '--max_iters=1',
            '--eval_interval=1', '--learning_rate=0', '--gradient_accumulation_steps=4', '--eval_iters=3']
    (tmp_path / 'spy.py').write_text(SPY)
    spied = lambda *more: torchrun(tmp_path / 'spy.py', *TINY, *args, *more,
                                   env={'REPO': str(REPO), 'READERS': str(tmp_path / 'readers')})
    fsdp = spied(f'--out_dir={tmp_path / "fsdp"}', '--fsdp=True', '--sample_tokens=12')
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    # rank 0 alone read the weights; rank 1 built the model on the meta device and took its shards from
    # rank 0's (cut to 32 positions) when sharded: together, the Hugging Face weights exactly
    assert (tmp_path / 'readers').read_text() == '0\n'
    from model import GPT
    hf = GPT.from_pretrained(str(tmp_path / 'hf'))
    hf.crop_block_size(32)
    ckpt, _ = checkpoint.load(str(tmp_path / 'fsdp' / 'ckpt.dcp'))
    assert ckpt['model'].keys() == hf.state_dict().keys()
    assert all(torch.equal(v, ckpt['model'][k]) for k, v in hf.state_dict().items())
    # every process computes the sample (FSDP gathers the weights for each step), rank 0 prints it
    assert fsdp.stdout.count('sample 1: ') == 1 and fsdp.stdout.count('sample 0: ') == 1
    # weights rank 0 cannot use: every process stops with the same one line (regressions: rank 1 waited
    # in a collective and died with a gloo traceback; then only rank 0's ValueError reached the others,
    # not a damaged file's error). Weights of another activation: test_weights_rank_0_refuses_reach_all
    os.truncate(tmp_path / 'hf' / 'model.safetensors', 100)
    p = spied(f'--out_dir={tmp_path / "cut"}', '--fsdp=True')
    assert 'error: cannot load GPT-2 weights from' in p.stderr, p.stderr[-3000:]
    assert p.stderr.count('error: cannot load GPT-2 weights from') == 1, p.stderr[-3000:]
    assert 'Connection closed' not in p.stderr and 'gloo' not in p.stderr.lower(), p.stderr[-3000:]
    assert 'Traceback' not in p.stderr and not (tmp_path / 'cut').exists()


def test_weights_rank_0_refuses_reach_all(tmp_path):
    """sharding.pretrained passes the ValueError of weights that rank 0 refuses on, as it is (a process
    group of one in this process: the sharing itself is what the finetune test above checks)."""
    import torch.distributed as dist
    transformers = pytest.importorskip('transformers')
    cfg = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=40, n_positions=16,
                                  activation_function='relu')
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / 'relu')
    dist.init_process_group('gloo', store=dist.HashStore(), rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match=r"activation 'relu' is not GPT-2's tanh GELU"):
            sharding.pretrained(str(tmp_path / 'relu'), {'dropout': 0.0})
    finally:
        dist.destroy_process_group()


def test_stale_sharded_leftovers_go_with_their_checkpoint(tmp_path):
    """What a stopped save leaves (NAME.dcp.old, NAME.dcp.tmp) goes when the run moves past NAME: a stale
    interrupted.dcp.old would otherwise be resumed from again and again (regression)."""
    for name in ('interrupted.dcp', 'interrupted.dcp.old', 'interrupted.dcp.tmp', 'ckpt.pt'):
        (tmp_path / name).mkdir()
    (tmp_path / 'ckpt.dcp').mkdir()
    assert checkpoint.find(str(tmp_path), sharded=True) == str(tmp_path / 'interrupted.dcp')
    checkpoint.remove(str(tmp_path), *checkpoint.stale('ckpt.dcp'))
    assert sorted(os.listdir(tmp_path)) == ['ckpt.dcp']
    os.rename(tmp_path / 'ckpt.dcp', tmp_path / 'ckpt.dcp.old')  # a save that stopped between its renames
    assert checkpoint.find(str(tmp_path)) == str(tmp_path / 'ckpt.dcp.old')


def test_activation_checkpointing_without_fsdp_trains_the_same(tiny_data, tmp_path, script):
    plain = script('train.py', *TINY, f'--dataset={tiny_data}', f'--out_dir={tmp_path / "a"}', '--max_iters=4')
    ac = script('train.py', *TINY, f'--dataset={tiny_data}', f'--out_dir={tmp_path / "b"}', '--max_iters=4',
                '--activation_checkpointing=True')
    assert lines(ac.out) == lines(plain.out) and len(lines(plain.out)) == 6  # recomputed, to the bit
    assert_same(state(tmp_path / 'b' / 'ckpt.pt')[0], state(tmp_path / 'a' / 'ckpt.pt')[0])


@pytest.mark.slow
def test_bench_state_per_process_halves():
    """bench.py under torchrun: each FSDP process holds half of the parameters, gradients and AdamW state."""
    p = torchrun('bench.py', '--device=cpu', '--compile=False', '--n_layer=2', '--n_head=2', '--n_embd=64',
                 '--block_size=32', '--batch_size=2', '--vocab_size=66', '--steps=2', '--warmup=1', '--fsdp=True',
                 '--json=True')
    assert '"state_mb"' in p.stdout, p.stderr[-3000:]
    import json
    held = json.loads(p.stdout.strip().splitlines()[-1])['state_mb']
    assert 'FSDP: training state per process' in p.stdout
    whole = (2 * 12 * 64 * 64 + 66 * 64 + 32 * 64 + 5 * 64) * 4 / 2**20  # fp32: matrices, embeddings, LayerNorms
    # every first dimension is even here, so the shards are exact halves (FSDP pads an odd one by a
    # row); AdamW adds a step count per tensor
    assert held['params'] == held['grads'] == pytest.approx(whole / 2, rel=1e-9)
    assert held['optimizer'] == pytest.approx(whole, rel=1e-3)


@pytest.mark.slow
def test_bfloat16_mixed_precision_keeps_float32_state_and_loss(runs, tmp_path):
    """dtype=bfloat16: FSDP gathers bfloat16 weights and reduces float32 gradients; the shards, AdamW's
    moments and the loss stay float32 (regression: the loss was computed from bfloat16 logits in bfloat16,
    0.01 off at step 0)."""
    data = runs.data
    p = torchrun('train.py', *TINY, f'--dataset={data}', f'--out_dir={tmp_path / "bf16"}', *LONG, *FSDP,
                 '--dtype=bfloat16', '--max_iters=1', '--eval_interval=1')
    assert p.returncode == 0, p.stderr[-3000:]
    assert 'dtype bfloat16' in p.stdout
    ckpt, _ = checkpoint.load(str(tmp_path / 'bf16' / 'ckpt.dcp'))
    assert {v.dtype for v in ckpt['model'].values()} == {torch.float32}
    assert {s['exp_avg'].dtype for s in ckpt['optimizer']['state'].values()} == {torch.float32}
    # the same first weights and batches as the float32 run: its step 0 and iter 1 losses, to bfloat16's error
    figures = lambda out: [float(v) for v in re.findall(r'(?:train loss|val loss|^iter 1: loss) (\d+\.\d+)',
                                                         out, re.M)][:3]
    assert figures(p.stdout) == pytest.approx(figures(runs.log['fsdp']), abs=2e-3)
