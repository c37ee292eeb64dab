"""Train a GPT: from scratch, from GPT-2 weights, or resumed from out_dir.

$ python train.py config/train_shakespeare_char.py      # one GPU (a laptop: *_cpu.py, see README)
$ torchrun --standalone --nproc_per_node=8 train.py     # DDP on 8 GPUs; --fsdp=True shards the model
$ torchrun --nproc_per_node=8 --nnodes=2 --node_rank=0 --master_addr=10.0.0.1 --master_port=1234 train.py
  (and --node_rank=1 on the second node; NCCL_IB_DISABLE=1 without InfiniBand)
Ctrl-C or SIGTERM: the step (under torchrun: up to the next log step) or evaluation ends, a checkpoint is
saved, exit code 130 (143 for SIGTERM; 141 when the log's reader quits). A mistake: one line, exit code 2.
"""
import math
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import checkpoint
import corpus
import loading
import lora
import optimizers
import runtime
import sampling
import sharding
import tasks
import vocabulary
from configurator import configure, fail
from metrics import Metrics, Stopwatch, task_figures

# -----------------------------------------------------------------------------
# defaults: GPT-2 124M on OpenWebText
# I/O
out_dir = 'out'              # checkpoints are written here (ckpt.pt)
eval_interval = 2000         # evaluate, and maybe checkpoint, every this many iterations
log_interval = 1             # a log line (the loop's one host sync) every this many iterations
eval_iters = 200             # batches per split in each evaluation
eval_only = False            # evaluate once, then exit without writing anything
stop_at_val_loss = 0.0       # > 0: stop at the first evaluation with val loss <= this, saying when
always_save_checkpoint = True  # else ckpt.pt keeps the best val; a stop writes interrupted.pt
init_from = 'scratch'        # 'scratch' | 'resume' | 'gpt2*' | a HF folder | our .pt or out_dir
sample_tokens = 0            # print a sample of this many tokens at each evaluation; 0: none
eval_tasks = ''              # eval.py's tasks to run at each evaluation: val,hellaswag,...
overwrite = False            # a fresh start may replace the checkpoints already in out_dir
# TensorBoard and wandb (a checkpoint keeps every figure too: python eval.py --task=history)
tensorboard_log = False      # TensorBoard event files in out_dir/tensorboard
wandb_log = False            # log to Weights & Biases (WANDB_MODE=offline works without an account)
wandb_project = 'owt'        # wandb's project and run names
wandb_run_name = 'gpt2'
# data
dataset = 'openwebtext'      # data/<dataset>/, or a path to a folder with train.bin, val.bin
prepare = False              # run data/<dataset>/prepare.py first when its train.bin is missing
prepare_input = ''           # that prepare.py's --input: a local copy instead of the download
gradient_accumulation_steps = 5 * 8  # global: divided by the number of DDP processes
batch_size = 12              # micro-batch size per process
block_size = 1024            # context length, in tokens
# model
n_layer = 12                 # transformer blocks
n_head = 12                  # attention heads
n_embd = 768                 # width: channels of the residual stream
dropout = 0.0                # 0 for pretraining, try 0.1+ for finetuning
bias = False                 # bias in Linear and LayerNorm layers
# AdamW, and with optimizer='muon' Muon for the blocks' weight matrices (optimizers.py)
optimizer = 'adamw'          # 'adamw' | 'muon'
learning_rate = 6e-4         # max learning rate
max_iters = 600000           # optimizer steps in total
weight_decay = 1e-1          # AdamW's, on matrices and embeddings only
beta1 = 0.9                  # AdamW's betas
beta2 = 0.95
grad_clip = 1.0              # clip gradients at this norm; 0.0 disables
muon_lr = 0.02               # Muon's peak learning rate, scaled by the schedule as learning_rate is
muon_momentum = 0.95         # Muon's (Nesterov) momentum
muon_weight_decay = 0.0      # decoupled: each step shrinks the matrices by lr * muon_weight_decay
muon_adjust_lr = 'original'  # how a matrix's shape scales muon_lr: 'original' | 'match_rms_adamw'
# learning rate schedule
decay_lr = True              # warmup then decay (lr_schedule); False keeps learning_rate constant
lr_schedule = 'cosine'       # 'cosine' | 'linear' | 'wsd': stable at learning_rate, then linear
warmdown_frac = 0.2          # wsd: the share of the way after warmup spent decaying, in (0, 1]
warmup_iters = 2000
lr_decay_iters = 600000      # ~= max_iters per Chinchilla
min_lr = 6e-5                # ~= learning_rate / 10 per Chinchilla
# DDP and FSDP (README: "Bigger models")
backend = ''                 # '' picks 'nccl' on CUDA, 'gloo' otherwise
fsdp = False                 # under torchrun: shard weights, gradients and AdamW state
activation_checkpointing = False  # recompute each Block's activations: less memory
lora_rank = 0                # LoRA (README): 0 off; r: peft's rank-r adapters, the weights frozen
lora_alpha = 16.0            # an adapter's update B A is scaled by lora_alpha / lora_rank
lora_dropout = 0.0           # dropout on the adapters' input
lora_targets = 'c_attn,c_proj,c_fc'  # the Linear layers to adapt, by name: attention and MLP
# system
device = 'auto'              # 'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'mps'
dtype = 'auto'               # 'auto' | 'float32' | 'bfloat16' | 'float16' (with a GradScaler)
compile = True               # torch.compile the model where it is supported (CUDA)
seed = 1337                  # the same seed and settings give the same losses (bitwise on a CPU)
peak_flops = 0.0             # device peak FLOP/s for MFU; 0 looks the GPU up in runtime.PEAK_FLOPS
_positive = ('batch_size', 'block_size', 'gradient_accumulation_steps', 'eval_interval', 'eval_iters',
             'log_interval', 'n_layer', 'n_head', 'n_embd')
_non_negative = ('max_iters', 'grad_clip', 'peak_flops', 'warmup_iters', 'lr_decay_iters', 'sample_tokens')
# -----------------------------------------------------------------------------
config, given = configure(globals())  # config files, then --key=value: all values, and those given
# -----------------------------------------------------------------------------

# DDP, device and the run's checkpoint ------------------------------------------
ddp, rank, local_rank, world_size = runtime.ranks()  # ddp: launched by torchrun
master_process = rank == 0
gradient_accumulation_steps = runtime.per_process(gradient_accumulation_steps, world_size)
device, device_type, dtype, ctx = runtime.setup_device(device, dtype, local_rank if ddp else None,
                                                       autocast=not fsdp)  # FSDP: its own precision
sharding.check(fsdp, ddp, device_type, dtype, eval_tasks, optimizer)
ckpt = ckpt_file = None
if init_from == 'resume':  # the checkpoint fixes the model's shape
    ckpt, ckpt_file, notes = checkpoint.for_resume(out_dir, given, max_iters, sharded=fsdp)
    block_size = ckpt['model_args']['block_size']
elif not (eval_only or overwrite):
    checkpoint.refuse_overwrite(out_dir)
lora_settings = lora.settings(config, given, init_from, fsdp, ckpt, ckpt_file)  # None: no LoRA
if ddp:
    runtime.init_distributed(backend, device_type)
torch.manual_seed(seed)  # every process builds the same initial weights: FSDP's shards fit together
tokens_per_iter = gradient_accumulation_steps * world_size * batch_size * block_size
runtime.log(f"device {device}, dtype {dtype}, {world_size} process(es), "
            f"tokens per iteration {tokens_per_iter:,}")

# data ---------------------------------------------------------------------------
# prepare: for cheap datasets, and not under DDP, whose processes would all prepare at once
data_dir = corpus.dataset_dir(dataset, prepare=prepare and not ddp, prepare_input=prepare_input)
config['dataset'] = data_dir if os.path.isdir(dataset) else dataset  # sample.py finds it anywhere
data_vocab = vocabulary.read_vocab(data_dir) or vocabulary.GPT2  # no meta.json: GPT-2 BPE
n_tokens, examples = corpus.splits(data_dir, block_size, data_vocab)  # examples: starts, or None
batch_gen = torch.Generator().manual_seed(seed + rank)  # training batches, checkpointed
eval_gen = torch.Generator().manual_seed(seed)  # evaluation sees the same windows every time
eval_ix = {s: corpus.starts(n, block_size, (eval_iters, batch_size), eval_gen, examples[s])
           for s, n in n_tokens.items()}


def get_batch(split, ix=None):  # x, y: (len(ix), block_size); ix None: the next training batch
    if ix is None:
        ix = corpus.starts(n_tokens[split], block_size, (batch_size,), batch_gen, examples[split])
    return corpus.windows(data_dir, split, ix, block_size, device, data_vocab)


# model init ---------------------------------------------------------------------
iter_num, best_val_loss = 0, float('inf')  # where the run stands
model_vocab = None  # the vocabulary the weights were trained on, if they come with one
if init_from == 'scratch':  # GPT(GPTConfig(...)) of the settings' shape, the dataset's vocabulary
    model = loading.scratch(config, data_vocab)
elif init_from == 'resume':
    model, model_vocab = loading.build(ckpt, ckpt_file, dropout, dtype, verbose=master_process)
    iter_num, best_val_loss = ckpt['iter_num'], ckpt['best_val_loss']
else:  # GPT-2's (under FSDP rank 0 alone reads them), a HF folder's, or our checkpoint's weights
    reader = sharding.pretrained if fsdp else None
    model, model_vocab = loading.pretrained(init_from, dropout, block_size, reader, data_vocab)
    model = lora.attach(model, lora_settings, dtype=dtype, verbose=master_process)  # None: as it is
vocab_file = vocabulary.vocab_file(data_dir)
vocab = vocabulary.check_vocab(model.config.vocab_size, model_vocab, vocab_file, data_vocab)
config.update({k: getattr(model.config, k) for k in checkpoint.SHAPE})  # the weights fix the shape
torch.manual_seed(seed + rank)  # dropout masks differ across processes
compiling = runtime.use_compile(compile, device_type, master_process)
model = sharding.place(model, device, dtype, fsdp, activation_checkpointing, compiling,
                       from_rank0=init_from not in ('scratch', 'resume'))
runtime.log(f"vocab_size {model.config.vocab_size}: " + vocabulary.describe(vocab))

# optimizer, GradScaler, compile, DDP -------------------------------------------
scaler = runtime.grad_scaler(device_type, dtype)
optims = optimizers.build(model, config, device_type, master_process)  # [AdamW], or [AdamW, Muon]
if ckpt is not None:  # under FSDP sharded over the processes (a sharded checkpoint: the weights too)
    notes.append(optimizers.restore(ckpt, ckpt_file, optims, scaler, fsdp_model=model if fsdp else None))
    notes.append(checkpoint.restore_rng(ckpt['rng'], batch_gen, device, seed, iter_num))
    runtime.log(checkpoint.resume_report(ckpt, ckpt_file, config, notes))
if master_process and not eval_only:  # eval_only writes nothing; every setting is checked by now
    checkpoint.make_out_dir(out_dir, clear=overwrite and init_from != 'resume')
raw_model = model  # unwrapped and uncompiled: what checkpoints store (FSDP: sharded)
if compiling and not sharding.compiles_blocks(fsdp, activation_checkpointing):  # else, per Block
    model = torch.compile(model)
eval_model = model  # evaluation never goes through the DDP wrapper (its forward may sync)
if ddp and not fsdp:
    model = DDP(model, device_ids=[local_rank] if device_type == 'cuda' else None)


@torch.no_grad()
def estimate_loss():
    """Mean loss per split over the fixed evaluation windows, shared out over the processes; None
    if a stop came on the way (checked between batches; not under FSDP: its processes compute as one)."""
    out = {}
    eval_model.eval()
    for split in ('train', 'val'):
        # a slot per batch, then spares (FSDP: every process takes every turn), the last a stop flag
        losses = torch.zeros(eval_iters + world_size, device=device)
        stopped = losses[-1:]
        turns = -(-eval_iters // world_size) * world_size if fsdp else eval_iters
        for k in range(rank, turns, world_size):
            if runtime.stop_signal is not None and not fsdp:
                stopped.fill_(1)
                break
            with ctx:
                losses[k] = eval_model(*get_batch(split, eval_ix[split][k % eval_iters]))[1]
        if ddp:
            dist.all_reduce(losses)
        if stopped.item():
            out = None
            break
        out[split] = losses[:eval_iters].mean().item()
    eval_model.train()
    return out


def get_lr(it):
    """Linear warmup (> 0 at step 0), lr_schedule's decay to min_lr at lr_decay_iters, then min_lr."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= lr_decay_iters:
        return min_lr
    progress = (it - warmup_iters) / (lr_decay_iters - warmup_iters)  # in [0, 1)
    if lr_schedule == 'cosine':
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (learning_rate - min_lr)
    share = warmdown_frac if lr_schedule == 'wsd' else 1.0  # the last share of it decays linearly
    return learning_rate - max(0.0, 1 - (1 - progress) / share) * (learning_rate - min_lr)


metrics = Metrics(config, ckpt, master_process and not eval_only)  # every logged figure
watch = Stopwatch(device)  # the log iteration's time, split into phases
task_names = tasks.prepare(eval_tasks, vocab, block_size, data_dir)  # their data read and checked
evaluated_iter = ckpt['iter_num'] if ckpt and ckpt['evaluated'] and not eval_only else None
ckpt = None  # free the loaded tensors before training
saves = 0  # checkpoints this run has written


def save(name, evaluated):
    """Write the training state to out_dir/name; every process takes part (its random state too).
    evaluated False: a stop came before this step's evaluation, so the resumed run does it."""
    global saves
    state = {'model_args': dict(vars(raw_model.config)), 'tokenizer': vocab, 'iter_num': iter_num,
             'best_val_loss': float(best_val_loss), 'config': config, 'scaler': scaler.state_dict(),
             'rng': checkpoint.rng_states(batch_state, device), 'evaluated': evaluated,
             **metrics.state()}
    if fsdp:  # every process writes its shards
        runtime.log(sharding.save(out_dir, sharding.name_of(name), state, raw_model, optims[0]))
    elif master_process:
        state.update(lora.model_state(raw_model, lora_settings), **optimizers.state_dicts(optims))
        runtime.log(checkpoint.write(out_dir, name, state))
    saves += 1


# training loop ------------------------------------------------------------------
runtime.catch_stop_signals()
start_iter = last_log_iter = iter_num
stopping = False  # a signal, a reader that quit, or a stop during evaluation
mfu_pct = None  # model FLOPs utilisation in %, a moving average
peak = runtime.peak_flops(device, peak_flops)  # the device's FLOP/s that MFU is measured against
train_time = 0.0  # seconds of training since the last log line
batch_state = batch_gen.get_state()  # saved with a checkpoint: resuming redraws the pending batch
X, Y = get_batch('train')
while True:
    last_step = eval_only or iter_num >= max_iters
    # a resumed run does not repeat its checkpoint's evaluation; a stop skips it, to be quick
    do_eval = (last_step or iter_num % eval_interval == 0) and iter_num != evaluated_iter and not stopping
    lr = get_lr(iter_num) if decay_lr else learning_rate
    optimizers.set_lr(optims, lr, learning_rate, muon_lr)  # Muon's follows the same schedule

    if do_eval:  # evaluate and checkpoint
        if iter_num == start_iter:  # on a CPU the first line may be a while coming: say why
            runtime.log(f"evaluating {eval_iters} batches of each split...")
        losses = estimate_loss()
        stopping = losses is None
        if losses:
            figures = tasks.run(task_names, raw_model, vocab, ctx, data_dir, batch_size)
            runtime.log(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
                        + ''.join(f"; {tasks.summary(name, f)}" for name, f in figures.items()))
            if sample_tokens and (master_process or fsdp):  # FSDP: every process computes it
                text = sampling.sample_text(raw_model, vocab, sample_tokens, ctx, seed=iter_num)
                runtime.log(f"sample {iter_num}: {text!r}")
            if not math.isfinite(losses['val']):
                fail(f"val loss is {losses['val']} at iter {iter_num}; the checkpoint was left as it was")
            metrics.log(iter_num, {f'eval/{split}_loss': v for split, v in losses.items()}
                        | task_figures(figures))
            last_step |= metrics.reached(losses['val'], stop_at_val_loss, iter_num)  # says when
            improved = losses['val'] < best_val_loss
            best_val_loss = min(best_val_loss, losses['val'])
            # at start_iter only a resumed checkpoint's postponed evaluation runs: it may be the best
            if not eval_only and (iter_num > start_iter or ckpt_file) and (improved or always_save_checkpoint):
                save(checkpoint.CKPT, evaluated=True)
    if stopping and iter_num > start_iter:  # keep the last completed step, not over the best
        save(checkpoint.CKPT if always_save_checkpoint else checkpoint.INTERRUPTED, evaluated=False)
    if last_step or stopping:
        break

    # TRAINING SECTION BEGIN: forward, backward, update --------------------------
    t0 = time.time()
    watch.start(on=(iter_num + 1) % log_interval == 0)  # times the phases of a log iteration
    loss_sum = torch.zeros((), device=device)
    for micro_step in range(gradient_accumulation_steps):
        if ddp:  # sync gradients (FSDP: reduce-scatter them) only on the last micro-step
            runtime.sync_gradients(model, micro_step == gradient_accumulation_steps - 1)
        with ctx:
            _, loss = model(X, Y)
            loss = loss / gradient_accumulation_steps  # gradients add up over micro-steps: average
        loss_sum += loss.detach()
        with watch('data'):
            batch_state = batch_gen.get_state()
            X, Y = get_batch('train')  # while the device works on this step
        scaler.scale(loss).backward()
    with watch('optim'):
        for opt in optims:  # GradScaler unscales and steps each optimizer, then updates once
            scaler.unscale_(opt)
        max_norm = grad_clip if grad_clip > 0 else float('inf')  # inf: measured, not clipped
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        for opt in optims:
            scaler.step(opt)
            opt.zero_grad(set_to_none=True)
        scaler.update()
    iter_num += 1
    # TRAINING SECTION END ---------------------------------------------------------

    # timing and logging: the loop's one host sync, every log_interval, where all processes agree on
    # the mean loss and on stopping (a signal to any of them); one process alone also on a signal
    if iter_num % log_interval and (ddp or runtime.stop_signal is None):
        train_time += time.time() - t0
        continue
    stop_vote = torch.tensor(float(runtime.stop_signal is not None), device=device)
    status = torch.stack([loss_sum, sharding.full_tensor(grad_norm).float(), stop_vote])
    if ddp:
        dist.all_reduce(status)
    # .tolist() waits for the device, so the time covers what it did, not only what was queued
    loss_value, norm, stop_votes = (v / world_size for v in status.tolist())
    train_time += time.time() - t0
    stopping = stop_votes > 0
    if not math.isfinite(loss_value):
        fail(f"loss is {loss_value} at iter {iter_num}; stopping, the last checkpoint was left as it was")
    dt = train_time / (iter_num - last_log_iter)  # per iteration, without evaluations and saves
    # per process against one device's peak (gradient_accumulation_steps is per process by now)
    mfu = raw_model.estimate_mfu(batch_size * gradient_accumulation_steps, dt, peak)  # None on a CPU
    if mfu is not None and iter_num - start_iter > 5:  # the first iterations are still warming up
        mfu_pct = 100 * mfu if mfu_pct is None else 0.9 * mfu_pct + 10 * mfu
    mfu_text = f"{mfu_pct:.2f}%" if mfu_pct is not None else "n/a"
    runtime.log(f"iter {iter_num}: loss {loss_value:.4f}, time {dt * 1000:.2f}ms{watch.split()}, mfu "
                f"{mfu_text}, tok/s {tokens_per_iter / dt:,.0f}, grad norm {norm:.4f}, lr {lr:.3e}")
    metrics.log(iter_num, {'train/loss': loss_value, 'lr': lr, 'grad_norm': norm, 'mfu': mfu_pct,
                           'tokens_per_s': tokens_per_iter / dt, 'time/iter': dt} | watch.figures())
    train_time, last_log_iter = 0.0, iter_num  # the next log line's window starts here

# teardown -----------------------------------------------------------------------
if master_process and not (eval_only or stopping):
    checkpoint.remove(out_dir, checkpoint.INTERRUPTED, checkpoint.SHARDED[1])  # the run went past it
    if not saves and not always_save_checkpoint and iter_num > start_iter:
        print(f"warning: no checkpoint was written: the val loss never went below "
              f"{best_val_loss:.4f}, and always_save_checkpoint is False", file=sys.stderr)
metrics.close()
runtime.finish(raw_model, ddp, stopped_at=iter_num if stopping else None, saved=bool(saves or ckpt_file))
