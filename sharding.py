"""FSDP: a GPT's parameters, gradients and AdamW state split over the processes (torch's fully_shard), and
its sharded checkpoints (torch.distributed.checkpoint, DCP).

A sharded checkpoint is a folder, out_dir/ckpt.dcp (or interrupted.dcp, as with ckpt.pt):
    .metadata, __<rank>_0.distcp  DCP's files: the model and optimizer state, each process writing its shard
    meta.pt                       the rest of what a ckpt.pt holds (model_args, iter_num, config, rng, ...)
                                  and the size of every DCP file; rank 0 writes it last
It is written as NAME.dcp.tmp and then renamed into place, so a crash mid-save leaves the previous one whole.
An FSDP run resumes from it at any number of processes (DCP reshards). Every reader of a ckpt.pt reads it
too, gathered whole into one process (checkpoint.load): sample.py, eval.py, export.py and a single-process
or DDP resume; python export.py --consolidate=True writes it out as out_dir/ckpt.pt.
"""
import os
import shutil

import torch
import torch.distributed as dist

import checkpoint
from configurator import fail, oneline
from model import GPT, GPTConfig

def check(fsdp, ddp, device_type, dtype, eval_tasks, optimizer='adamw'):
    """fsdp=True's one-line errors, before any collective."""
    if not fsdp:
        return
    if optimizer == 'muon':  # each process would orthogonalise its shard, not the matrix (Megatron-LM#5961)
        fail("optimizer='muon' needs every weight matrix whole, and fsdp=True shards them; use DDP "
             "(leave out --fsdp) or optimizer='adamw'")
    if device_type not in ('cuda', 'cpu'):
        fail(f"fsdp=True runs on CUDA GPUs or CPUs, not {device_type}; use --device=cpu or leave out --fsdp")
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401  (torch 2.6 made it public)
    except ImportError:
        fail(f"fsdp=True needs torch.distributed.fsdp.fully_shard, which torch {torch.__version__} lacks; "
             f"install torch 2.6 or newer")
    if dtype == 'float16':
        fail("fsdp=True computes in bfloat16 or float32, without float16's GradScaler; use --dtype=bfloat16")
    if eval_tasks:
        fail("eval_tasks needs the whole model in every process; under fsdp=True run eval.py on the "
             "checkpoint instead")
    if not ddp:
        fail("fsdp=True shards the model over processes: start it with torchrun, e.g. torchrun --standalone "
             "--nproc_per_node=2 train.py ... --fsdp=True")


def compiles_blocks(fsdp, activation_checkpointing):
    """Whether torch.compile goes Block by Block (place() does it), not over the whole model."""
    return fsdp or activation_checkpointing


def place(model, device, dtype, fsdp, activation_checkpointing=False, compile=False, from_rank0=False):
    """The model ready to train: moved to the device, or (fsdp) sharded over the processes; with
    activation checkpointing each Block's activations are recomputed in the backward pass instead of kept
    from the forward. torch's composable checkpoint hooks into each Block and leaves the parameter names
    (and so every state dict) as they are. compile, with either: torch.compile each Block, as torch's FSDP
    examples do (a whole-model compile trips over the recompute's hooks: its recomputed tensors differ
    from the saved ones); train.py compiles the whole model otherwise."""
    if activation_checkpointing:
        from torch.distributed._composable import checkpoint as recompute
        for block in model.transformer.h:
            recompute(block)
    for block in model.transformer.h if compile and compiles_blocks(fsdp, activation_checkpointing) else []:
        block.compile()
    return shard(model, device, dtype, from_rank0) if fsdp else model.to(device)


def pretrained(init_from, override_args):
    """GPT.from_pretrained in rank 0 alone; the other processes build the same shape on the meta device
    (no memory), which shard(from_rank0=True) fills from rank 0's weights."""
    model, error = None, None
    if dist.get_rank() == 0:
        try:
            model = GPT.from_pretrained(init_from, override_args)
        except ValueError as e:
            error = str(e)
        except Exception as e:  # e.g. a damaged weights file, no transformers: every process must hear of it
            error = f"cannot load GPT-2 weights from {init_from!r}: {oneline(e)}"
    shape = [error or (model and dict(vars(model.config)))]  # every process learns the shape, or the error
    dist.broadcast_object_list(shape, src=0)
    if isinstance(shape[0], str):
        raise ValueError(shape[0])  # in every process: one line, no process left waiting
    if model is None:
        with torch.device('meta'):
            model = GPT(GPTConfig(**shape[0]))
    return model


def shard(model, device, dtype, from_rank0=False):
    """fully_shard every Block, then the root (the embeddings, the tied head and ln_f): each process keeps
    1/N of every parameter and gathers a group's whole only while computing with it. With bfloat16 the
    gathered parameters are bfloat16 and the gradients are reduced in float32 (FSDP's mixed precision,
    in place of autocast); the sharded parameters and AdamW's state stay float32. A model on the meta
    device gets memory on `device` here; from_rank0 fills every process's shards from rank 0's weights."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    full = model.state_dict() if from_rank0 and dist.get_rank() == 0 else {}
    # the shards live on `device` (by default FSDP would pick any accelerator, even for --device=cpu)
    options = {'mesh': init_device_mesh(device.split(':')[0], (dist.get_world_size(),))}
    if dtype == 'bfloat16':
        options['mp_policy'] = MixedPrecisionPolicy(torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.transformer.h:
        fully_shard(block, **options)
    fully_shard(model, **options)
    if any(p.is_meta for p in model.parameters()):
        model.to_empty(device=device)  # FSDP keeps the tied embedding and head one parameter
    if from_rank0:
        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    return model


def full_tensor(t):
    """A DTensor (e.g. clip_grad_norm_'s norm of sharded gradients) as a plain tensor; others as they are.
    Every process must call it: it may reduce across them."""
    from torch.distributed.tensor import DTensor
    return t.full_tensor() if isinstance(t, DTensor) else t


def state_bytes(model, *optimizers):
    """What this process holds of the parameters, gradients and optimizers' state, in bytes, from their
    tensors' storages (of a DTensor, its local shard, padding included): {'params', 'grads', 'optimizer'}."""
    from torch.distributed.tensor import DTensor
    seen, held = set(), {}
    parts = {'params': list(model.parameters()), 'grads': [p.grad for p in model.parameters() if p.grad is not None],
             'optimizer': [v for o in optimizers for s in o.state.values() for v in s.values() if torch.is_tensor(v)]}
    for kind, tensors in parts.items():
        storages = [(t.to_local() if isinstance(t, DTensor) else t).untyped_storage() for t in tensors]
        held[kind] = sum(s.nbytes() for s in storages if not (s.data_ptr() in seen or seen.add(s.data_ptr())))
    return held


def name_of(name):
    """ckpt.pt -> ckpt.dcp: the sharded checkpoint of the same role."""
    return os.path.splitext(name)[0] + '.dcp'


def save(out_dir, name, state, model, optimizer):
    """Write the sharded checkpoint out_dir/name (ckpt.dcp): every process its shards (DCP), then rank 0
    meta.pt (state: everything but the weights) and the rename -> a line for the log. Every process calls it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    path = os.path.join(out_dir, name)
    tmp, old = path + '.tmp', path + '.old'
    rank0 = dist.get_rank() == 0

    def agree(step):
        """step() in this process, then every process learns whether any step failed: if one did, all
        stop in one line, the unfinished folder removed and the previous checkpoint as it was."""
        try:
            step()
            error = None
        except (Exception, dcp.CheckpointException) as e:  # e.g. a full disk (DCP's is a BaseException)
            error = checkpoint.reason(e)
        errors = [None] * dist.get_world_size()
        dist.all_gather_object(errors, error)  # also the barrier: every process waits for the step
        if any(errors):
            if rank0:
                shutil.rmtree(tmp, ignore_errors=True)
            fail(f"cannot write {path} ({next(e for e in errors if e)}); the previous checkpoint is unchanged. "
                 f"Free some disk space or choose another --out_dir")

    def tidy():  # what a save that stopped left
        if os.path.isdir(old) and not os.path.isdir(path):  # a crash between the two renames below
            os.replace(old, path)
        for stale in (tmp, old):
            shutil.rmtree(stale, ignore_errors=True)

    def commit():
        meta = dict(state, files={f: os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp)})
        with open(os.path.join(tmp, checkpoint.META), 'wb') as f:  # the rename below makes the whole folder current
            torch.save(dict(meta, checksum=checkpoint.digest(meta)), f)
            f.flush()
            os.fsync(f.fileno())
        if os.path.isdir(path):
            os.replace(path, old)
        os.replace(tmp, path)  # the checkpoint is whole in either folder at every moment

    model_state, optim_state = get_state_dict(model, optimizer)
    agree(tidy if rank0 else lambda: None)
    agree(lambda: dcp.save({'model': model_state, 'optimizer': optim_state}, checkpoint_id=tmp))
    agree(commit if rank0 else lambda: None)
    if rank0:  # the new checkpoint is in place: what it supersedes goes
        shutil.rmtree(old, ignore_errors=True)
        checkpoint.remove(out_dir, *checkpoint.stale(name))
    return f"saved sharded checkpoint to {path} (iter {state['iter_num']}, {dist.get_world_size()} shards)"
