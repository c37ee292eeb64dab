"""Train a GPT: from scratch, from GPT-2 weights, or resumed from out_dir.

One GPU, or a laptop (device and dtype are picked automatically; see README for a small CPU recipe):
$ python train.py config/train_shakespeare_char.py
$ python train.py config/train_shakespeare_char.py --device=cpu --compile=False --max_iters=2000
DDP on one node with 8 GPUs (or 2 CPU processes with --device=cpu, over gloo); FSDP with --fsdp=True:
$ torchrun --standalone --nproc_per_node=8 train.py
DDP on 2 nodes of 8 GPUs each (add NCCL_IB_DISABLE=1 without InfiniBand):
$ torchrun --nproc_per_node=8 --nnodes=2 --node_rank=0 --master_addr=10.0.0.1 --master_port=1234 train.py
$ torchrun --nproc_per_node=8 --nnodes=2 --node_rank=1 --master_addr=10.0.0.1 --master_port=1234 train.py
Ctrl-C or SIGTERM: the current step (under torchrun: up to the next log step) or evaluation ends, a
checkpoint is saved, exit code 130 (143 for SIGTERM); the same when the reader of a piped log quits
(141). A mistake in the settings or files: one line, exit code 2.
"""
import math
import os
import signal
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import checkpoint
import runtime
import sharding
import tasks
from configurator import configure, fail, make_dir
from metrics import Metrics, Stopwatch
from model import GPT, GPTConfig

# -----------------------------------------------------------------------------
# defaults: GPT-2 124M on OpenWebText
# I/O
out_dir = 'out'              # checkpoints are written here (ckpt.pt)
eval_interval = 2000         # evaluate, and maybe checkpoint, every this many iterations
log_interval = 1             # a log line (the loop's one host sync) every this many iterations
eval_iters = 200             # batches per split in each evaluation
eval_only = False            # evaluate once, then exit without writing anything
always_save_checkpoint = True  # else ckpt.pt keeps the best val loss, and a stop writes interrupted.pt
init_from = 'scratch'        # 'scratch' | 'resume' | 'gpt2*' | a local Hugging Face GPT-2 directory
sample_tokens = 0            # print a sample of this many tokens at each evaluation; 0: none
eval_tasks = ''              # eval.py's tasks to also run at each evaluation: val, train, hellaswag, wikitext
overwrite = False            # a fresh start may replace the checkpoints already in out_dir
# TensorBoard and wandb (the checkpoint keeps every logged figure too: python eval.py --task=history)
tensorboard_log = False      # write TensorBoard event files to out_dir/tensorboard: tensorboard --logdir=OUT_DIR
wandb_log = False            # log to Weights & Biases (WANDB_MODE=offline works without an account)
wandb_project = 'owt'        # wandb's project and run names
wandb_run_name = 'gpt2'
# data
dataset = 'openwebtext'      # data/<dataset>/, or a path to a folder with train.bin, val.bin
prepare = False              # run data/<dataset>/prepare.py first when its train.bin is missing
prepare_input = ''           # that prepare.py's --input: a local copy of its text instead of the download
gradient_accumulation_steps = 5 * 8  # global: divided by the number of DDP processes
batch_size = 12              # micro-batch size per process
block_size = 1024            # context length, in tokens
# model
n_layer = 12                 # transformer blocks
n_head = 12                  # attention heads
n_embd = 768                 # width: channels of the residual stream
dropout = 0.0                # 0 for pretraining, try 0.1+ for finetuning
bias = False                 # bias in Linear and LayerNorm layers
# AdamW
learning_rate = 6e-4         # max learning rate
max_iters = 600000           # optimizer steps in total
weight_decay = 1e-1          # AdamW's, on matrices and embeddings only
beta1 = 0.9                  # AdamW's betas
beta2 = 0.95
grad_clip = 1.0              # clip gradients at this norm; 0.0 disables
# learning rate schedule
decay_lr = True              # warmup then cosine decay; False keeps learning_rate constant
warmup_iters = 2000
lr_decay_iters = 600000      # ~= max_iters per Chinchilla
min_lr = 6e-5                # ~= learning_rate / 10 per Chinchilla
# DDP and FSDP (README: "Bigger models")
backend = ''                 # '' picks 'nccl' on CUDA, 'gloo' otherwise
fsdp = False                 # under torchrun: shard parameters, gradients and AdamW state over the processes
activation_checkpointing = False  # recompute each Block's activations in the backward pass: less memory
# system
device = 'auto'              # 'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'mps'
dtype = 'auto'               # 'auto' | 'float32' | 'bfloat16' | 'float16' (float16: with a GradScaler)
compile = True               # torch.compile the model where it is supported (CUDA)
seed = 1337                  # the same seed and settings give the same losses (bitwise on a CPU)
peak_flops = 0.0             # device peak FLOP/s for MFU; 0 looks the GPU up in runtime.PEAK_FLOPS
_positive = ('batch_size', 'block_size', 'gradient_accumulation_steps', 'eval_interval', 'eval_iters',
             'log_interval', 'n_layer', 'n_head', 'n_embd')
_non_negative = ('max_iters', 'grad_clip', 'peak_flops', 'warmup_iters', 'lr_decay_iters', 'sample_tokens')
# -----------------------------------------------------------------------------
config, given = configure(globals())  # config files, then --key=value: every final value, and those given
# -----------------------------------------------------------------------------

# DDP, device and the run's checkpoint ------------------------------------------
ddp, rank, local_rank, world_size = runtime.ranks()  # ddp: launched by torchrun
master_process = rank == 0
if gradient_accumulation_steps % world_size:  # checked by every process before any collective: no hang
    fail(f"gradient_accumulation_steps={gradient_accumulation_steps} is not divisible by the {world_size} "
         f"processes; make it a multiple of {world_size}")
gradient_accumulation_steps //= world_size
device, device_type, dtype, ctx = runtime.setup_device(device, dtype, local_rank if ddp else None, not fsdp)
sharding.check(fsdp, ddp, device_type, dtype, eval_tasks)  # FSDP: its own mixed precision in place of autocast (ctx)
ckpt = ckpt_file = None
if init_from == 'resume':  # the checkpoint fixes the model's shape
    ckpt, ckpt_file, notes = checkpoint.for_resume(out_dir, given, sharded=fsdp)
    block_size = ckpt['model_args']['block_size']
elif not (eval_only or overwrite):
    checkpoint.refuse_overwrite(out_dir)
if ddp:
    runtime.init_distributed(backend, device_type)
torch.manual_seed(seed)  # every process builds the same initial weights (FSDP's shards must fit together)
tokens_per_iter = gradient_accumulation_steps * world_size * batch_size * block_size
if master_process:
    print(f"device {device}, dtype {dtype}, {world_size} process(es), tokens per iteration {tokens_per_iter:,}")

# data ---------------------------------------------------------------------------
# prepare: for cheap datasets, and not under DDP, whose processes would all prepare at once
data_dir = runtime.dataset_dir(dataset, prepare=prepare and not ddp, prepare_input=prepare_input)
config['dataset'] = data_dir if os.path.isdir(dataset) else dataset  # a folder absolute: sample.py finds it anywhere
data_vocab = runtime.read_vocab(data_dir) or runtime.GPT2  # {'chars': [...]}; no meta.json: GPT-2 BPE
n_tokens = {split: runtime.split_tokens(data_dir, split, block_size, data_vocab) for split in ('train', 'val')}
batch_gen = torch.Generator().manual_seed(seed + rank)  # training batches: a stream of their own, checkpointed
eval_gen = torch.Generator().manual_seed(seed)  # evaluation sees the same windows every time
eval_ix = {s: runtime.starts(n_tokens[s], block_size, (eval_iters, batch_size), eval_gen, data_vocab)
           for s in ('train', 'val')}


def get_batch(split, ix):
    return runtime.windows(data_dir, split, ix, block_size, device, data_vocab)  # x, y: (len(ix), block_size)


def next_train_ix():
    return runtime.starts(n_tokens['train'], block_size, (batch_size,), batch_gen, data_vocab)


# model init ---------------------------------------------------------------------
iter_num, best_val_loss, model_vocab = 0, float('inf'), None  # model_vocab: what its weights were trained on
if init_from == 'scratch':
    try:  # a character or image dataset's own vocabulary; BPE: GPT-2's 50257, padded to a multiple of 64
        model = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=bias,
                              vocab_size=runtime.vocab_size_of(data_vocab) or 50304, dropout=dropout))
    except ValueError as e:
        fail(e)
elif init_from == 'resume':
    model = checkpoint.build_model(ckpt, ckpt_file, dropout=dropout)
    iter_num, best_val_loss, model_vocab = ckpt['iter_num'], ckpt['best_val_loss'], ckpt['tokenizer']
elif init_from.startswith('gpt2') or os.path.isdir(init_from):  # under FSDP rank 0 alone reads the weights
    model, model_vocab = runtime.pretrained(init_from, dropout, block_size, fsdp and sharding.pretrained)
else:
    fail(f"init_from={init_from!r}: use 'scratch', 'resume', a gpt2* name or a Hugging Face model directory"
         + (" (a .pt file from export.py is for sample.py)" if init_from.endswith('.pt') else ""))
vocab = runtime.check_vocab(model.config.vocab_size, model_vocab, runtime.vocab_file(data_dir), data_vocab)
config.update({k: getattr(model.config, k) for k in checkpoint.SHAPE})  # the weights decide the shape
torch.manual_seed(seed + rank)  # dropout masks differ across processes
compiling = runtime.use_compile(compile, device_type, master_process)
model = sharding.place(model, device, dtype, fsdp, activation_checkpointing, compiling,
                       from_rank0=init_from not in ('scratch', 'resume'))  # moved to the device, or sharded
if master_process:
    print(f"vocab_size {model.config.vocab_size}: " + ("characters" if 'chars' in vocab else "GPT-2 BPE"))
    if not eval_only:  # eval_only writes nothing; every setting has been checked by now
        make_dir(out_dir)
        if overwrite and init_from != 'resume':
            checkpoint.remove(out_dir, checkpoint.CKPT, checkpoint.INTERRUPTED, *checkpoint.SHARDED)  # earlier run's

# optimizer, GradScaler, compile, DDP -------------------------------------------
scaler = runtime.grad_scaler(device_type, dtype)
try:
    optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type, master_process)
except ValueError as e:  # torch's checks, e.g. "Invalid beta parameter at index 0: 2.0"
    fail(f"{e}; check learning_rate, beta1, beta2 and weight_decay")
if ckpt is not None:  # under FSDP: sharded across the processes (from a sharded checkpoint, the weights too)
    notes.append(checkpoint.restore(ckpt, ckpt_file, optimizer, scaler, sharded_model=fsdp and model))
    notes.append(checkpoint.restore_rng(ckpt['rng'], batch_gen, device, seed + rank + 1009 * iter_num))
    notes.append(f"max_iters={max_iters} is reached already: raise it to train on" if iter_num >= max_iters else None)
    if master_process:
        print(checkpoint.resume_report(ckpt, ckpt_file, config, notes))
raw_model = model  # unwrapped and uncompiled: what checkpoints store (FSDP: sharded)
if compiling and not sharding.compiles_blocks(fsdp, activation_checkpointing):  # else place() did, per Block
    model = torch.compile(model)
eval_model = model  # evaluation never goes through the DDP wrapper (its forward may sync)
if ddp and not fsdp:
    model = DDP(model, device_ids=[local_rank] if device_type == 'cuda' else None)


@torch.no_grad()
def estimate_loss():
    """Mean loss per split over the fixed evaluation windows, which the processes share out (FSDP: in turns);
    None if a stop came on the way (checked between batches, but not under FSDP, whose processes compute together)."""
    out = {}
    eval_model.eval()
    for split in ('train', 'val'):
        losses = torch.zeros(eval_iters + world_size, device=device)  # a slot per batch, spares, a stop flag
        last = -(-eval_iters // world_size) * world_size if fsdp else eval_iters  # FSDP: all take every turn
        for k in range(rank, last, world_size):
            if runtime.stop_signal is not None and not fsdp:
                losses[-1] = 1
                break
            with ctx:
                losses[k] = eval_model(*get_batch(split, eval_ix[split][k % eval_iters]))[1]
        if ddp:
            dist.all_reduce(losses)
        if losses[-1].item():
            out = None
            break
        out[split] = losses[:eval_iters].mean().item()
    eval_model.train()
    return out


def get_lr(it):
    """Linear warmup (already > 0 at step 0), cosine decay to min_lr at lr_decay_iters, min_lr after.
    lr_decay_iters <= warmup_iters means no cosine part at all."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= lr_decay_iters:
        return min_lr
    progress = (it - warmup_iters) / (lr_decay_iters - warmup_iters)  # in [0, 1)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (learning_rate - min_lr)


metrics, watch = Metrics(config, ckpt, master_process and not eval_only), Stopwatch(device)  # figures; time split
task_names = tasks.prepare(eval_tasks, vocab, block_size, data_dir)  # their data read (and checked) now
evaluated_iter = ckpt['iter_num'] if ckpt and ckpt['evaluated'] and not eval_only else None
ckpt, saves = None, 0  # free the loaded tensors before training; saves: checkpoints this run has written


def save(name, evaluated):
    """Write the training state to out_dir/name. Every process takes part (its random state is gathered)."""
    global saves
    state = {'model_args': dict(vars(raw_model.config)), 'tokenizer': vocab, 'iter_num': iter_num,
             'best_val_loss': float(best_val_loss), 'config': config, 'scaler': scaler.state_dict(),
             'rng': checkpoint.rng_states(batch_state, device), **metrics.state(),
             'evaluated': evaluated}  # False: a stop came before its step's evaluation, so the resumed run does it
    if fsdp:  # every process writes its shards
        runtime.log(sharding.save(out_dir, sharding.name_of(name), state, raw_model, optimizer))
    elif master_process:
        state.update(model=raw_model.state_dict(), optimizer=optimizer.state_dict())
        runtime.log(checkpoint.write(out_dir, name, state))
    saves += 1


# training loop ------------------------------------------------------------------
runtime.catch_stop_signals()
start_iter, stopping, running_mfu, train_time, last_log_iter = iter_num, False, None, 0.0, iter_num
batch_state = batch_gen.get_state()  # saved with a checkpoint, so resuming redraws the pending batch
X, Y = get_batch('train', next_train_ix())
while True:
    last_step = eval_only or iter_num >= max_iters
    # a resumed run does not repeat its checkpoint's evaluation; a stop skips it, to be quick
    do_eval = (last_step or iter_num % eval_interval == 0) and iter_num != evaluated_iter and not stopping
    lr = get_lr(iter_num) if decay_lr else learning_rate
    for group in optimizer.param_groups:
        group['lr'] = lr

    # evaluate and checkpoint
    if do_eval:
        losses = estimate_loss()
        stopping = losses is None
        if losses:
            figures = tasks.run(task_names, raw_model, vocab, ctx, data_dir, batch_size)
            runtime.log(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
                        + ''.join(f"; {tasks.summary(name, f)}" for name, f in figures.items()))
            if sample_tokens and (master_process or fsdp):  # FSDP: every process computes it
                text = runtime.sample_text(raw_model, vocab, sample_tokens, ctx, seed=iter_num)
                runtime.log(f"sample {iter_num}: {text!r}")
            if not math.isfinite(losses['val']):
                fail(f"val loss is {losses['val']} at iter {iter_num}; the checkpoint was left as it was")
            metrics.log(iter_num, {'eval/train_loss': losses['train'], 'eval/val_loss': losses['val'],
                                   **{f'tasks/{name}/{k}': v for name, f in figures.items() for k, v in f.items()}})
            improved, best_val_loss = losses['val'] < best_val_loss, min(best_val_loss, losses['val'])
            # at start_iter only a resumed checkpoint's postponed evaluation runs, and its weights may be the best
            if not eval_only and (iter_num > start_iter or ckpt_file) and (improved or always_save_checkpoint):
                save(checkpoint.CKPT, evaluated=True)
    if stopping and iter_num > start_iter:  # interrupted: keep the last completed step, not over the best
        save(checkpoint.CKPT if always_save_checkpoint else checkpoint.INTERRUPTED, evaluated=False)
    if last_step or stopping:
        break

    # TRAINING SECTION BEGIN: forward, backward, update --------------------------
    t0 = time.time()
    watch.start(on=(iter_num + 1) % log_interval == 0)  # the log iteration's time, split into phases
    loss_sum = torch.zeros((), device=device)
    for micro_step in range(gradient_accumulation_steps):
        if ddp:  # sync gradients (FSDP: reduce-scatter them) only on the last micro-step
            runtime.sync_gradients(model, micro_step == gradient_accumulation_steps - 1)
        with ctx:
            _, loss = model(X, Y)
            loss = loss / gradient_accumulation_steps  # the gradients sum over micro-steps: average them
        loss_sum += loss.detach()
        with watch('data'):
            batch_state = batch_gen.get_state()
            X, Y = get_batch('train', next_train_ix())  # fetched while the device works on this step
        scaler.scale(loss).backward()
    with watch('optim'):
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float('inf'))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    iter_num += 1
    # TRAINING SECTION END ---------------------------------------------------------

    # timing and logging: the loop's one host sync, every log_interval, where all processes agree on the
    # mean loss and on stopping (a signal to any of them); one process alone also comes here on a signal
    if iter_num % log_interval and (ddp or runtime.stop_signal is None):
        train_time += time.time() - t0
        continue
    stop_vote = torch.tensor(float(runtime.stop_signal is not None), device=device)
    status = torch.stack([loss_sum, sharding.full_tensor(grad_norm).float(), stop_vote])
    if ddp:
        dist.all_reduce(status)
    loss_value, norm, stop_votes = (v / world_size for v in status.tolist())  # waits for the device's work
    train_time += time.time() - t0  # so the time covers what the device did, not only what was queued
    stopping = stop_votes > 0
    if not math.isfinite(loss_value):
        fail(f"loss is {loss_value} at iter {iter_num}; stopping, the last checkpoint was left as it was")
    dt = train_time / (iter_num - last_log_iter)  # per iteration, without evaluation and checkpoints
    # per process against one device's peak (gradient_accumulation_steps is per process by now)
    mfu = raw_model.estimate_mfu(batch_size * gradient_accumulation_steps, dt, runtime.peak_flops(device, peak_flops))
    if mfu is not None and iter_num - start_iter > 5:  # the first iterations are still warming up
        running_mfu = mfu if running_mfu is None else 0.9 * running_mfu + 0.1 * mfu
    runtime.log(f"iter {iter_num}: loss {loss_value:.4f}, time {dt * 1000:.2f}ms{watch.split()}, mfu "
                f"{f'{running_mfu * 100:.2f}%' if running_mfu is not None else 'n/a'}, tok/s "
                f"{tokens_per_iter / dt:,.0f}, grad norm {norm:.4f}, lr {lr:.3e}")
    metrics.log(iter_num, {'train/loss': loss_value, 'lr': lr, 'grad_norm': norm, 'tokens_per_s': tokens_per_iter / dt,
                           'mfu': running_mfu and running_mfu * 100, 'time/iter': dt,  # mfu in %, as printed
                           **{f'time/{k}': v for k, v in watch.spent.items()}})
    train_time, last_log_iter = 0.0, iter_num

# teardown -----------------------------------------------------------------------
if master_process and not (eval_only or stopping):
    checkpoint.remove(out_dir, checkpoint.INTERRUPTED, checkpoint.SHARDED[1])  # the run has gone past it
    if not saves and not always_save_checkpoint and iter_num > start_iter:
        print(f"warning: no checkpoint was written: the val loss never went below {best_val_loss:.4f}, "
              f"and always_save_checkpoint is False", file=sys.stderr)
signum = (runtime.stop_signal or signal.SIGTERM) if stopping else None  # this process may not have been signalled
if signum and master_process:
    print(f"stopped by {signal.Signals(signum).name} at iter {iter_num}; " + ("continue with --init_from=resume"
          if saves or ckpt_file else "nothing was trained yet, so nothing was saved"), file=sys.stderr)
metrics.close()
runtime.finish(raw_model, ddp, 128 + signum if signum else 0)
