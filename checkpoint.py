"""Checkpoints: written atomically with a checksum of their tensors, read back through one set of checks.

A checkpoint is a dict of tensors and plain Python (torch.load's weights_only=True reads it):
    model, optimizer  state dicts (the model unwrapped and uncompiled; optimizer: AdamW's)
    muon              Muon's state dict, with optimizer='muon' only (optimizers.py)
    model_args        GPTConfig's fields: GPTConfig(**model_args) rebuilds the model
    tokenizer         {'chars': [...]} (token i is chars[i]) or {'encoding': 'gpt2'}: sampling needs nothing else
    iter_num, best_val_loss, config (every setting of the run)
    scaler, rng       the GradScaler's state; every process's random state, so a resumed run goes on exactly
    wandb_run_id, evaluated (False when a stop saved it before its step's evaluation)
    history           every figure the run logged: {name: (n, 2) float64 tensor of (step, value)} (metrics.py)
    checksum          sha256 of every tensor above, checked on loading
out_dir/ckpt.pt is the run's checkpoint. With always_save_checkpoint=False it holds the best val loss, and
a stop writes the state it stopped in to out_dir/interrupted.pt instead; resuming prefers that file.
An FSDP run writes the same roles as sharded folders, ckpt.dcp and interrupted.dcp (sharding.py); load()
reads those too. Writing one format's checkpoint removes the other's older one (stale()).
"""
import hashlib
import os
import shutil
import warnings

import torch
import torch.distributed as dist

from configurator import fail, make_dir, oneline
from model import GPT, GPTConfig

CKPT, INTERRUPTED = 'ckpt.pt', 'interrupted.pt'
SHARDED = ('ckpt.dcp', 'interrupted.dcp')  # FSDP's sharded checkpoints (folders, sharding.py), same roles
META = 'meta.pt'  # in a sharded checkpoint's folder: everything but the weights and optimizer state
SHAPE = ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias')  # settings a checkpoint's weights fix
FOR_SAMPLING = ('model', 'model_args')
FOR_RESUMING = FOR_SAMPLING + ('optimizer', 'iter_num', 'best_val_loss', 'config')
# keys that older checkpoints (and nanoGPT's) lack: what stands in for them, and what is lost without them
LATER = {'tokenizer': (None, None), 'scaler': ({}, None),
         'rng': (None, "no random state: batches and dropout start from fresh seeds"),
         'wandb_run_id': (None, None), 'evaluated': (True, None), 'history': ({}, None),
         'checksum': (None, "no checksum: its tensors cannot be verified")}


def digest(ckpt):
    """sha256 of every tensor in a checkpoint (its dtype, shape and bytes), in a fixed order."""
    h = hashlib.sha256()

    def walk(obj):
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(obj, (dict, list, tuple)):
            for v in (obj.values() if isinstance(obj, dict) else obj):
                walk(v)
    walk([v for k, v in ckpt.items() if k != 'checksum'])
    return h.hexdigest()


def save(path, ckpt):
    """Write ckpt to path with its checksum: to a temp file, synced, then renamed over the old one, so a
    crash at any moment leaves the old or the new checkpoint whole."""
    tmp = path + '.tmp'
    try:
        with open(tmp, 'wb') as f:
            torch.save(dict(ckpt, checksum=digest(ckpt)), f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # e.g. a full disk: torch.save raises RuntimeError
        if os.path.isfile(tmp):
            os.remove(tmp)
        fail(f"cannot write {path} ({oneline(e)}); the previous checkpoint is unchanged. Free some disk "
             f"space or choose another --out_dir")


def write(out_dir, name, ckpt):
    """save() as out_dir/name -> a line for the log."""
    path, best = os.path.join(out_dir, name), os.path.join(out_dir, CKPT)
    save(path, ckpt)
    remove(out_dir, *stale(name))
    if name == CKPT:
        return f"saved checkpoint to {path} (iter {ckpt['iter_num']})"
    return (f"saved checkpoint to {path} (iter {ckpt['iter_num']}); " +
            (f"{best} keeps the best val loss ({ckpt['best_val_loss']:.4f})" if os.path.exists(best) else
             f"no {CKPT} yet: no evaluation since the first has improved the val loss"))


def load(path, keys=FOR_RESUMING, mmap=False):
    """Read a checkpoint -> (checkpoint, notes). It fails in one line if the file cannot be read, lacks
    one of keys or does not match its checksum; keys that older checkpoints lack are filled in, with a
    note for each that matters. mmap: tensors stay in the file, mapped (copy on write), so that the
    processes of one machine share one copy (FSDP's, which keep a shard each)."""
    if is_sharded(path):  # an FSDP run's, gathered whole here
        return gather(path, with_optimizer='optimizer' in keys)
    if os.path.isdir(path):
        fail(f"{path} is a folder, not a checkpoint file")
    try:  # onto the CPU first: the GPU that saved it may not be this one
        ckpt = torch.load(path, map_location='cpu', weights_only=True, mmap=mmap)
    except Exception as e:  # truncated, empty, not torch.save output: torch raises many types
        fail(f"cannot read {path}: it is truncated, corrupted or not a checkpoint ({oneline(e)}); delete "
             f"it or use another --out_dir")
    missing = [k for k in keys if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        fail(f"{path} is not a checkpoint of this code: it has no {', '.join(missing)}")
    try:
        GPTConfig(**ckpt['model_args'])
    except (TypeError, ValueError) as e:
        fail(f"{path} does not match this model.py: {oneline(e)}")
    if ckpt.get('checksum') is not None and digest(ckpt) != ckpt['checksum']:
        fail(f"{path} is damaged: its tensors do not match the checksum written with them; use an "
             f"earlier copy or another --out_dir")
    notes = [note for k, (_, note) in LATER.items() if k not in ckpt and note]
    for k, (default, _) in LATER.items():
        ckpt.setdefault(k, default)
    return ckpt, notes


def build_model(ckpt, path, **overrides):
    """The GPT whose weights ckpt holds (overrides: e.g. another dropout); fails in one line if they do
    not fit this model.py. A sharded checkpoint's meta.pt has no weights: the model is built on the meta
    device, for restore() to fill once it is sharded."""
    try:
        with torch.device('cpu' if 'model' in ckpt else 'meta'):
            model = GPT(GPTConfig(**{**ckpt['model_args'], **overrides}))
        # nanoGPT saved a compiled model's state dict, whose keys carry torch.compile's prefix
        if 'model' in ckpt:
            model.load_state_dict({k.removeprefix('_orig_mod.'): v for k, v in ckpt['model'].items()})
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        fail(f"{path} does not match this model.py: {oneline(e)}")
    return model


def is_sharded(path):
    """Whether path is a sharded checkpoint's folder (ckpt.dcp, interrupted.dcp, or a save's .old)."""
    return os.path.isdir(path) and path.rstrip(os.sep).endswith(('.dcp', '.dcp.old'))


def find(out_dir, sharded=False, roles=(INTERRUPTED, CKPT)):
    """The checkpoint in out_dir to continue from: a stop's interrupted.pt if there is one, else ckpt.pt,
    each a file or (an FSDP run's) a sharded folder; sharded: the folder first. None if there is none."""
    for name in roles:
        pair = (SHARDED[(CKPT, INTERRUPTED).index(name)], name)
        for path in (os.path.join(out_dir, n) for n in (pair if sharded else pair[::-1])):
            if os.path.exists(path):
                return path
            if path.endswith('.dcp') and os.path.isdir(path + '.old'):  # a save stopped between its renames
                return path + '.old'
    return None


def for_resume(out_dir, given, max_iters, sharded=False):
    """The checkpoint --init_from=resume continues -> (checkpoint, its path, notes), see find(); sharded
    (an FSDP run) reads a folder's meta.pt alone. Every shape setting the user gave must match it."""
    path = find(out_dir, sharded)
    if path is None:
        fail(f"--init_from=resume but {os.path.join(out_dir, CKPT)} does not exist; train first or set --out_dir")
    if sharded and is_sharded(path):
        ckpt, notes = read_meta(path)
    else:
        ckpt, notes = load(path, mmap=sharded)
    args = ckpt['model_args']
    clash = [f"{k}: checkpoint {args[k]}, requested {given[k]}" for k in SHAPE if k in given and given[k] != args[k]]
    if clash:
        fail(f"{path} does not match the requested model ({'; '.join(clash)}); pass the settings it was "
             f"trained with (e.g. its config file) or another --out_dir")
    if ckpt['iter_num'] >= max_iters:
        notes.append(f"max_iters={max_iters} is reached already: raise it to train on")
    return ckpt, path, notes


def remove(out_dir, *names):
    """Delete the named checkpoints in out_dir that exist (files, or sharded folders with what a stopped
    save of them left: NAME.old, NAME.tmp)."""
    names = [n + suffix for n in names for suffix in (('', '.old', '.tmp') if n.endswith('.dcp') else ('',))]
    for path in (os.path.join(out_dir, name) for name in names):
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def stale(name):
    """What writing checkpoint `name` leaves behind the run, to be removed: a ckpt.pt or ckpt.dcp makes
    every interrupted one and the other ckpt stale (resume would read it again), an interrupted one the
    other interrupted one."""
    names = [CKPT, INTERRUPTED, *SHARDED]
    other = names[names.index(name) ^ 2]
    return [other] + ([INTERRUPTED, SHARDED[1]] if name in (CKPT, SHARDED[0]) else [])


def make_out_dir(out_dir, clear=False):
    """Create out_dir; clear: remove the checkpoints an earlier run left there (--overwrite=True)."""
    make_dir(out_dir)
    if clear:
        remove(out_dir, CKPT, INTERRUPTED, *SHARDED)


def refuse_overwrite(out_dir):
    """A fresh start must not silently replace the checkpoints of an earlier run in out_dir."""
    there = [f for f in (CKPT, INTERRUPTED, *SHARDED, *(n + '.old' for n in SHARDED))
             if os.path.exists(os.path.join(out_dir, f))]
    if there:
        fail(f"{out_dir} already holds {' and '.join(there)} of an earlier run; continue it with "
             f"--init_from=resume, or start afresh over it with --overwrite=True (or another --out_dir)")


def restore(ckpt, path, optimizer, scaler, sharded_model=None):
    """Load the optimizer's and GradScaler's state; this run's AdamW settings (betas, weight decay) stay.
    sharded_model: an FSDP model (from a sharded checkpoint its weights are loaded too).
    Returns a note for the log when an enabled GradScaler finds no state to take up."""
    settings = [{k: g[k] for k in ('betas', 'weight_decay')} for g in optimizer.param_groups]
    try:
        if sharded_model:
            _restore_sharded(ckpt, path, sharded_model, optimizer)
        else:
            optimizer.load_state_dict(ckpt['optimizer'])
        if ckpt['scaler']:  # {} from a run without float16: an enabled scaler starts afresh
            scaler.load_state_dict(ckpt['scaler'])
    except (ValueError, KeyError, RuntimeError) as e:
        fail(f"{path}: the optimizer state does not fit the model ({oneline(e)}); use another --out_dir")
    for group, mine in zip(optimizer.param_groups, settings):
        group.update(mine)
    if scaler.is_enabled() and not ckpt['scaler']:  # saved by a run without float16, or an older one
        return "no GradScaler state in the checkpoint: it starts afresh"


def resume_report(ckpt, path, config, notes):
    """The log's lines on a resume: where from, the settings that differ from the checkpoint's run, notes."""
    changed = [f"{k} {v!r} -> {config[k]!r}" for k, v in ckpt['config'].items()
               if k in config and config[k] != v and k not in ('init_from', *SHAPE)]
    return '\n'.join([f"resuming from {path} at iter {ckpt['iter_num']}" +
                      (f"; changed: {', '.join(changed)}" if changed else "")] + [f"note: {n}" for n in notes if n])


def rng_states(batch_state, device):
    """Every process's random state as it stands before the next training batch is drawn; under DDP a
    collective that every process joins."""
    state = {'batch': batch_state, 'torch': torch.get_rng_state(),
             'cuda': torch.cuda.get_rng_state(device) if device.startswith('cuda') else None}
    if not dist.is_initialized():
        return [state]
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def restore_rng(states, batch_gen, device, seed, iter_num):
    """Every process takes up its own random streams, or (another number of processes) none does and all
    start afresh: a partial restore would be neither exact nor fresh. Returns a note for the log."""
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if states is None or len(states) != world_size:
        # a seed of its own for each process and iteration, not the run's first batches again; the
        # prime stride keeps the processes' seeds apart
        fresh_seed = seed + rank + 1009 * iter_num
        batch_gen.manual_seed(fresh_seed)
        torch.manual_seed(fresh_seed)
        return None if states is None else (  # an older checkpoint without one: load() has noted it
            f"random state not restored: saved by {len(states)} process(es), this run has {world_size}, so "
            f"batches and dropout start from fresh seeds")
    batch_gen.set_state(states[rank]['batch'])
    torch.set_rng_state(states[rank]['torch'])
    if device.startswith('cuda') and states[rank]['cuda'] is not None:
        torch.cuda.set_rng_state(states[rank]['cuda'], device)
    return f"random state restored for all {world_size} process(es)"


# ----------------------------------------------------------------------------- sharded checkpoints (read)
def reason(e):
    """One line for an error that DCP raised: its CheckpointException wraps each process's exception
    (with a traceback in its message), so the first of those."""
    failures = getattr(e, 'failures', None)
    if failures:
        first = next(iter(failures.values()))  # (exception, its traceback's frames) in torch 2.13
        e = first[0] if isinstance(first, tuple) else getattr(first, 'exception', first)
    return oneline(e)


def read_meta(path):
    """A sharded checkpoint's meta.pt -> (checkpoint without weights, notes); fails in one line if a file
    is missing or has another size than when it was written."""
    meta = os.path.join(path, META)
    if not os.path.isfile(meta):
        fail(f"{path} is an incomplete sharded checkpoint: it has no {META} (its save did not finish); "
             f"delete it, or resume from another --out_dir")
    ckpt, notes = load(meta, ('model_args', 'iter_num', 'best_val_loss', 'config', 'files'))
    wrong = [f for f, size in ckpt['files'].items()
             if not os.path.isfile(os.path.join(path, f)) or os.path.getsize(os.path.join(path, f)) != size]
    if wrong:
        fail(f"{path} is an incomplete sharded checkpoint: {', '.join(sorted(wrong))} missing or cut short; "
             f"copy the whole folder again, or resume from another --out_dir")
    return ckpt, notes


def _load_sharded(path, model, optimizer):
    """DCP's read of the model's (and optimizer's) state from path into their state dicts, as they are
    laid out here: sharded over this run's processes, or whole in a single process."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    model_state, optim_state = get_state_dict(model, optimizer if optimizer is not None else [])
    state = {'model': model_state, **({'optimizer': optim_state} if optimizer is not None else {})}
    try:
        with warnings.catch_warnings():  # one process reading it alone is the intent here
            warnings.filterwarnings('ignore', 'torch.distributed is disabled')
            dcp.load(state, checkpoint_id=path, no_dist=not dist.is_initialized())
        set_state_dict(model, optimizer if optimizer is not None else [], model_state_dict=model_state,
                       optim_state_dict=optim_state if optimizer is not None else {})
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # DCP's CheckpointException: a missing key, another shape
        fail(f"{path} does not fit this model ({reason(e)}); resume with the settings it was trained "
             f"with, or another --out_dir")


def _restore_sharded(ckpt, path, model, optimizer):
    """Load a checkpoint's optimizer state (and, from a sharded one, the weights too) into the sharded
    model and optimizer. From a ckpt.pt (weights already in the model before it was sharded) its
    optimizer state, keyed by position, is keyed by parameter name for torch to shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    if is_sharded(path):
        return _load_sharded(path, model, optimizer)
    names = {p: n for n, p in model.named_parameters()}
    order = [names[p] for group in optimizer.param_groups for p in group['params']]
    saved = ckpt['optimizer']
    if sorted(i for g in saved['param_groups'] for i in g['params']) != list(range(len(order))):
        raise ValueError(f"it holds the state of {sum(len(g['params']) for g in saved['param_groups'])} "
                         f"tensors, this model has {len(order)}")
    state = {'state': {order[i]: s for i, s in saved['state'].items()},
             'param_groups': [dict(g, params=[order[i] for i in g['params']]) for g in saved['param_groups']]}
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def gather(path, with_optimizer=True):
    """A sharded checkpoint gathered whole into this process -> (checkpoint in ckpt.pt's format, notes)."""
    ckpt, notes = read_meta(path)
    ckpt.pop('files')
    model = GPT(GPTConfig(**ckpt['model_args']))
    # the same parameter groups as in training; DCP restores their settings (lr, betas, weight decay)
    optimizer = model.configure_optimizers(0.0, 0.0, (0.9, 0.95), 'cpu', verbose=False) if with_optimizer else None
    _load_sharded(path, model, optimizer)
    ckpt['model'] = model.state_dict()
    if optimizer is not None:
        ckpt['optimizer'] = optimizer.state_dict()
    return ckpt, notes
