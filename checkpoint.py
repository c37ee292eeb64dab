"""Checkpoints: written atomically with a checksum of their tensors, read back through one set of checks.

A checkpoint is a dict of tensors and plain Python (torch.load's weights_only=True reads it):
    model, optimizer  state dicts (the model unwrapped and uncompiled)
    model_args        GPTConfig's fields: GPTConfig(**model_args) rebuilds the model
    tokenizer         {'chars': [...]} (token i is chars[i]) or {'encoding': 'gpt2'}: sampling needs nothing else
    iter_num, best_val_loss, config (every setting of the run)
    scaler, rng       the GradScaler's state; every process's random state, so a resumed run goes on exactly
    wandb_run_id, evaluated (False when a stop saved it before its step's evaluation)
    history           every figure the run logged: {name: (n, 2) float64 tensor of (step, value)} (metrics.py)
    checksum          sha256 of every tensor above, checked on loading
out_dir/ckpt.pt is the run's checkpoint. With always_save_checkpoint=False it holds the best val loss, and
a stop writes the state it stopped in to out_dir/interrupted.pt instead; resuming prefers that file.
"""
import hashlib
import os

import torch
import torch.distributed as dist

from configurator import fail, oneline
from model import GPT, GPTConfig

CKPT, INTERRUPTED = 'ckpt.pt', 'interrupted.pt'
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
    """save() as out_dir/name -> a line for the log. Writing ckpt.pt makes an interrupted.pt stale."""
    path, best = os.path.join(out_dir, name), os.path.join(out_dir, CKPT)
    save(path, ckpt)
    if name == CKPT:
        remove(out_dir, INTERRUPTED)  # older than this: resume reads ckpt.pt again
        return f"saved checkpoint to {path} (iter {ckpt['iter_num']})"
    return (f"saved checkpoint to {path} (iter {ckpt['iter_num']}); " +
            (f"{best} keeps the best val loss ({ckpt['best_val_loss']:.4f})" if os.path.exists(best) else
             f"no {CKPT} yet: no evaluation since the first has improved the val loss"))


def load(path, keys=FOR_RESUMING):
    """Read a checkpoint -> (checkpoint, notes). It fails in one line if the file cannot be read, lacks
    one of keys or does not match its checksum; keys that older checkpoints lack are filled in, with a
    note for each that matters."""
    try:  # onto the CPU first: the GPU that saved it may not be this one
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
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
    not fit this model.py."""
    try:
        model = GPT(GPTConfig(**{**ckpt['model_args'], **overrides}))
        # nanoGPT saved a compiled model's state dict, whose keys carry torch.compile's prefix
        model.load_state_dict({k.removeprefix('_orig_mod.'): v for k, v in ckpt['model'].items()})
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        fail(f"{path} does not match this model.py: {oneline(e)}")
    return model


def for_resume(out_dir, given):
    """The checkpoint --init_from=resume continues -> (checkpoint, its path, notes): a stop's
    interrupted.pt if there is one, else ckpt.pt. Every shape setting the user gave must match it."""
    path = os.path.join(out_dir, INTERRUPTED)
    path = path if os.path.exists(path) else os.path.join(out_dir, CKPT)
    if not os.path.exists(path):
        fail(f"--init_from=resume but {path} does not exist; train first or set --out_dir")
    ckpt, notes = load(path)
    args = ckpt['model_args']
    clash = [f"{k}: checkpoint {args[k]}, requested {given[k]}" for k in SHAPE if k in given and given[k] != args[k]]
    if clash:
        fail(f"{path} does not match the requested model ({'; '.join(clash)}); pass the settings it was "
             f"trained with (e.g. its config file) or another --out_dir")
    return ckpt, path, notes


def remove(out_dir, *names):
    """Delete the named checkpoints in out_dir that exist."""
    for name in names:
        if os.path.exists(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))


def refuse_overwrite(out_dir):
    """A fresh start must not silently replace the checkpoints of an earlier run in out_dir."""
    there = [f for f in (CKPT, INTERRUPTED) if os.path.exists(os.path.join(out_dir, f))]
    if there:
        fail(f"{out_dir} already holds {' and '.join(there)} of an earlier run; continue it with "
             f"--init_from=resume, or start afresh over it with --overwrite=True (or another --out_dir)")


def restore(ckpt, path, optimizer, scaler):
    """Load the optimizer's and GradScaler's state; this run's AdamW settings (betas, weight decay) stay.
    Returns a note for the log when an enabled GradScaler finds no state to take up."""
    settings = [{k: g[k] for k in ('betas', 'weight_decay')} for g in optimizer.param_groups]
    try:
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


def restore_rng(states, batch_gen, device, fresh_seed):
    """Every process takes up its own random streams, or (another number of processes) none does and all
    start from fresh_seed: a partial restore would be neither exact nor fresh. Returns a note for the log."""
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if states is None or len(states) != world_size:  # fresh: not the first batches of the run again
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
