"""Train a GPT: from scratch, from GPT-2 weights, or resumed from out_dir/ckpt.pt.

One GPU, or a laptop (device and dtype are picked automatically; see README for a small CPU recipe):
$ python train.py config/train_shakespeare_char.py
$ python train.py config/train_shakespeare_char.py --device=cpu --compile=False --max_iters=2000
DDP on one node with 8 GPUs (or 2 CPU processes with --device=cpu, over gloo):
$ torchrun --standalone --nproc_per_node=8 train.py
DDP on 2 nodes of 8 GPUs each (add NCCL_IB_DISABLE=1 without InfiniBand):
$ torchrun --nproc_per_node=8 --nnodes=2 --node_rank=0 --master_addr=10.0.0.1 --master_port=1234 train.py
$ torchrun --nproc_per_node=8 --nnodes=2 --node_rank=1 --master_addr=10.0.0.1 --master_port=1234 train.py
Ctrl-C or SIGTERM: the current iteration ends, a checkpoint is saved, exit code 130 (143 for SIGTERM);
the same when the reader of a piped log quits (exit code 141).
"""
import atexit
import hashlib
import math
import os
import pickle
import signal
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from configurator import configure, drop_stdout
from model import GPT, GPTConfig, get_lr, resolve_device, resolve_dtype

# -----------------------------------------------------------------------------
# defaults: GPT-2 124M on OpenWebText
# I/O
out_dir = 'out'
eval_interval = 2000
log_interval = 1
eval_iters = 200             # batches per split in each evaluation
eval_only = False            # evaluate once, then exit without writing anything
always_save_checkpoint = True  # else only when val loss improves
init_from = 'scratch'        # 'scratch' | 'resume' | 'gpt2*' | a local Hugging Face GPT-2 directory
# wandb
wandb_log = False
wandb_project = 'owt'
wandb_run_name = 'gpt2'
# data
dataset = 'openwebtext'      # data/<dataset>/, or a path to a folder with train.bin, val.bin
gradient_accumulation_steps = 5 * 8  # global: divided by the number of DDP processes
batch_size = 12              # micro-batch size per process
block_size = 1024
# model
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0                # 0 for pretraining, try 0.1+ for finetuning
bias = False                 # bias in Linear and LayerNorm layers
# AdamW
learning_rate = 6e-4         # max learning rate
max_iters = 600000           # optimizer steps in total
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0              # clip gradients at this norm; 0.0 disables
# learning rate schedule
decay_lr = True              # warmup then cosine decay; False keeps learning_rate constant
warmup_iters = 2000
lr_decay_iters = 600000      # ~= max_iters per Chinchilla
min_lr = 6e-5                # ~= learning_rate / 10 per Chinchilla
# DDP
backend = ''                 # '' picks 'nccl' on CUDA, 'gloo' otherwise
# system
device = 'auto'              # 'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'mps'
dtype = 'auto'               # 'auto' | 'float32' | 'bfloat16' | 'float16' (float16 uses a GradScaler)
compile = True               # torch.compile the model where it is supported (CUDA)
seed = 1337
peak_flops = 0.0             # device peak FLOP/s for MFU; 0 looks the GPU up in model.PEAK_FLOPS
# -----------------------------------------------------------------------------
_shape_defaults = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=bias)
config = configure(globals())  # config files, then --key=value; the final values, for logging
# -----------------------------------------------------------------------------


def fail(msg):
    """A user's mistake or a failed run: one line on stderr, exit code 1, no traceback."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


for name in ('batch_size', 'block_size', 'gradient_accumulation_steps', 'eval_interval', 'eval_iters',
             'log_interval'):
    if globals()[name] <= 0:
        fail(f"{name}={globals()[name]} must be positive")
if max_iters < 0:
    fail(f"max_iters={max_iters} must be >= 0")
for name, zero in (('grad_clip', 'disables clipping'), ('peak_flops', 'looks the GPU up')):
    if globals()[name] < 0:
        fail(f"{name}={globals()[name]} must be >= 0 (0 {zero})")

# DDP and device setup -------------------------------------------------------
ddp = int(os.environ.get('RANK', -1)) != -1  # launched by torchrun?
rank, local_rank, world_size = 0, 0, 1
if ddp:
    rank, local_rank = int(os.environ['RANK']), int(os.environ['LOCAL_RANK'])
    world_size = int(os.environ['WORLD_SIZE'])
    if gradient_accumulation_steps % world_size:  # checked by every rank before any collective: no hang
        fail(f"gradient_accumulation_steps={gradient_accumulation_steps} is not divisible by the "
             f"{world_size} DDP processes; make it a multiple of {world_size}")
    gradient_accumulation_steps //= world_size
master_process = rank == 0
if ddp and device.startswith('cuda:'):
    fail(f"--device={device}: under torchrun each process takes GPU LOCAL_RANK; use --device=cuda and choose "
         f"the GPUs with CUDA_VISIBLE_DEVICES")
try:
    device = resolve_device(device)
    if ddp and device == 'cuda':
        device = f'cuda:{local_rank}'  # one GPU per process
    dtype = resolve_dtype(device, dtype)
    model_config = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=bias,
                        vocab_size=None, dropout=dropout)
    GPTConfig(**{**model_config, 'vocab_size': 1})  # shape checks (e.g. n_embd % n_head) before any work
except ValueError as e:
    fail(e)
device_type = device.split(':')[0]
if device_type == 'cuda' and ':' in device:
    # cuda:N (cuda:LOCAL_RANK under DDP) becomes the current GPU, which defaults such as the CUDA random
    # state refer to; a bare 'cuda' is the current GPU already (set_device needs an index)
    torch.cuda.set_device(device)
if ddp:
    dist.init_process_group(backend=backend or ('nccl' if device_type == 'cuda' else 'gloo'))
    atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())  # also after errors
# a resumed run takes its model's shape from the checkpoint: shape settings left at their defaults are
# filled in from it (a fine-tune's config names none), and any that were given must agree with it
iter_num, best_val_loss, checkpoint = 0, float('inf'), None
ckpt_path = os.path.join(out_dir, 'ckpt.pt')
if init_from == 'resume':
    if not os.path.exists(ckpt_path):
        fail(f"--init_from=resume but {ckpt_path} does not exist; train first or set --out_dir")
    try:  # onto the CPU first: the GPU that saved it may not be this one
        checkpoint = torch.load(ckpt_path, map_location='cpu', weights_only=True)
        missing = {'model', 'optimizer', 'model_args', 'iter_num', 'best_val_loss', 'config', 'scaler',
                   'rng'} - set(checkpoint)
        if missing:
            raise KeyError(f"no {sorted(missing)}")
        model_args = checkpoint['model_args']
        diff = [f"{k}: checkpoint {model_args[k]}, requested {config[k]}" for k, v in _shape_defaults.items()
                if config[k] != v and config[k] != model_args[k]]
        model_config['vocab_size'] = model_args['vocab_size']  # the dataset's is checked against it below
    except Exception as e:
        fail(f"{ckpt_path} is corrupted or not a checkpoint of this code ({type(e).__name__}: "
             f"{str(e).splitlines()[0][:200]}); delete it or use another --out_dir")
    if diff:
        fail(f"{ckpt_path} does not match the requested model ({'; '.join(diff)}); pass the settings it "
             f"was trained with (e.g. its config file) or another --out_dir")
    for k in _shape_defaults:
        model_config[k] = config[k] = model_args[k]
    block_size = model_config['block_size']

tokens_per_iter = gradient_accumulation_steps * world_size * batch_size * block_size
if master_process:
    print(f"device {device}, dtype {dtype}, {world_size} process(es), tokens per iteration {tokens_per_iter:,}")
    try:
        if not eval_only:  # which writes nothing
            os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        fail(f"cannot create out_dir {out_dir!r}: {e.strerror}")
    if not eval_only and not os.access(out_dir, os.W_OK):
        fail(f"out_dir {out_dir!r} is not writable; choose another with --out_dir=...")
torch.manual_seed(seed + rank)  # dropout masks differ across processes
torch.set_float32_matmul_precision('high')  # TF32 matmuls on Ampere+ GPUs
ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
ctx = nullcontext() if dtype == 'float32' else torch.autocast(device_type=device_type, dtype=ptdtype)

# data -----------------------------------------------------------------------
dataset_is_folder = os.path.isdir(dataset)
if dataset_is_folder:  # stored absolute, so sample.py finds its meta.pkl from any folder
    dataset = config['dataset'] = os.path.abspath(dataset)
elif os.sep in dataset:
    fail(f"dataset={dataset!r} is not a folder; give a folder holding train.bin and val.bin, or a name in data/")
data_dir = dataset if dataset_is_folder else os.path.join(os.path.dirname(__file__), 'data', dataset)
prepare_hint = "prepare it first" if dataset_is_folder else f"run  python data/{dataset}/prepare.py"
split_len = {}
for split in ('train', 'val'):
    path = os.path.join(data_dir, f'{split}.bin')
    if not os.path.exists(path):
        fail(f"{path} not found: {prepare_hint}")
    split_len[split] = os.path.getsize(path) // 2  # uint16 tokens
    if split_len[split] < block_size + 1:
        fail(f"{path} has {split_len[split]} tokens, fewer than block_size + 1 = {block_size + 1}; "
             f"lower --block_size or use more data")


def get_batch(split, ix):
    """Windows of block_size + 1 tokens starting at ix -> inputs x and targets y, both (len(ix), block_size)."""
    # a fresh memmap per batch: a long-lived one keeps every page it touched in memory
    data = np.memmap(os.path.join(data_dir, f'{split}.bin'), dtype=np.uint16, mode='r')
    x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix])
    if device_type == 'cuda':  # pinned memory lets the copy overlap with the GPU's work
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


batch_gen = torch.Generator().manual_seed(seed + rank)  # training batches: its own stream, checkpointed


def next_train_ix():
    return torch.randint(split_len['train'] - block_size, (batch_size,), generator=batch_gen)


# evaluation sees the same windows every time, drawn from a generator of its own
eval_gen = torch.Generator().manual_seed(seed)
eval_ix = {s: torch.randint(split_len[s] - block_size, (eval_iters, batch_size), generator=eval_gen)
           for s in ('train', 'val')}
meta_path = os.path.join(data_dir, 'meta.pkl')
meta_vocab_size = None
if os.path.exists(meta_path):
    with open(meta_path, 'rb') as f:
        meta_vocab_size = pickle.load(f)['vocab_size']
    if master_process:
        print(f"vocab_size {meta_vocab_size} (from {meta_path})")
elif master_process:
    print(f"no meta.pkl in {data_dir}: GPT-2 BPE tokens assumed")

# model init -----------------------------------------------------------------
if init_from == 'scratch':
    model_config['vocab_size'] = meta_vocab_size or 50304  # GPT-2's 50257 padded to a multiple of 64
    model = GPT(GPTConfig(**model_config))
elif init_from == 'resume':
    model = GPT(GPTConfig(**model_config))
    try:
        model.load_state_dict(checkpoint['model'])
    except RuntimeError as e:
        fail(f"{ckpt_path} does not fit the model: {str(e).splitlines()[0]}")
    iter_num, best_val_loss = checkpoint['iter_num'], checkpoint['best_val_loss']
    changed = [f"{k} {v!r} -> {config[k]!r}" for k, v in checkpoint['config'].items()
               if k in config and config[k] != v and k != 'init_from']
    if master_process:
        print(f"resuming from {ckpt_path} at iter {iter_num}" + (f"; changed: {', '.join(changed)}" if changed else ""))
elif init_from.startswith('gpt2') or os.path.isdir(init_from):
    try:
        model = GPT.from_pretrained(init_from, dict(dropout=dropout))
    except ValueError as e:
        fail(e)
    if block_size > model.config.block_size:
        fail(f"block_size={block_size} is longer than the context of {init_from} ({model.config.block_size}); "
             f"use --block_size={model.config.block_size} or less")
    if block_size < model.config.block_size:
        model.crop_block_size(block_size)  # e.g. finetune with a shorter context than GPT-2's 1024
    for k in ('n_layer', 'n_head', 'n_embd', 'bias', 'vocab_size', 'block_size'):
        model_config[k] = getattr(model.config, k)  # the weights decide the shape
else:
    fail(f"init_from={init_from!r}: use 'scratch', 'resume', a gpt2* name or a Hugging Face model directory")
if meta_vocab_size and meta_vocab_size != model.config.vocab_size:
    fail(f"the model does not fit the dataset (vocab_size: checkpoint {model.config.vocab_size}, dataset "
         f"{meta_vocab_size} in {meta_path}); train from scratch on this dataset, or pick the one it was trained on")
if not meta_vocab_size and model.config.vocab_size < 50257:
    fail(f"the model does not fit the dataset (vocab_size: checkpoint {model.config.vocab_size}, dataset: GPT-2 "
         f"BPE, as {data_dir} has no meta.pkl); pick the dataset it was trained on")
model.to(device)

# optimizer, GradScaler, compile, DDP -----------------------------------------
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16' and device_type == 'cuda'))
try:
    optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type, master_process)
except ValueError as e:  # torch's checks, e.g. "Invalid beta parameter at index 0: 2.0"
    fail(f"{e}; check learning_rate, beta1, beta2 and weight_decay")
wandb_run_id, resume_evaluated = None, True
if checkpoint is not None:
    try:
        optimizer.load_state_dict(checkpoint['optimizer'])
        if checkpoint['scaler']:  # {} from a run without float16: an enabled scaler starts afresh
            scaler.load_state_dict(checkpoint['scaler'])
        for group, wd in zip(optimizer.param_groups, (weight_decay, 0.0)):  # this run's settings, not the saved ones
            group.update(betas=(beta1, beta2), weight_decay=wd)
    except (ValueError, KeyError, RuntimeError) as e:
        fail(f"{ckpt_path}: the optimizer state does not fit the model ({e}); use another --out_dir")
    rng = checkpoint['rng'][rank] if rank < len(checkpoint['rng']) else None
    if rng is not None:  # the same world size: every process continues its own random streams
        batch_gen.set_state(rng['batch'])
        torch.set_rng_state(rng['torch'])
        if device_type == 'cuda' and rng.get('cuda') is not None:
            torch.cuda.set_rng_state(rng['cuda'], device)
    wandb_run_id = checkpoint.get('wandb_run_id')
    resume_evaluated = checkpoint.get('evaluated', True)
    checkpoint = None  # free the loaded tensors before training
raw_model = model  # unwrapped and uncompiled: what checkpoints store
if compile and device_type == 'cuda':
    if master_process:
        print("compiling the model (takes a minute)...")
    model = torch.compile(model)
elif compile and master_process:
    print(f"compile=True ignored on {device_type}: torch.compile is used on CUDA only")
eval_model = model  # rank 0 evaluates alone, so never through the DDP wrapper (its forward may sync)
if ddp:
    model = DDP(model, device_ids=[local_rank] if device_type == 'cuda' else None)


@torch.no_grad()
def estimate_loss():
    """Mean loss per split over the fixed evaluation windows, in eval mode."""
    out = {}
    eval_model.eval()
    for split in ('train', 'val'):
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            X, Y = get_batch(split, eval_ix[split][k])
            with ctx:
                _, loss = eval_model(X, Y)
            losses[k] = loss.item()
        out[split] = losses.mean().item()
    eval_model.train()
    return out


def save_checkpoint(rng_states):
    """Write ckpt.pt atomically: to a temp file, then renamed over the old one."""
    ckpt = {'model': raw_model.state_dict(), 'optimizer': optimizer.state_dict(),
            'model_args': dict(raw_model.config.__dict__), 'iter_num': iter_num,
            'best_val_loss': float(best_val_loss), 'config': config, 'scaler': scaler.state_dict(),
            'rng': rng_states, 'wandb_run_id': wandb_run_id,
            'evaluated': not stopping}  # a stop saves before its step's evaluation: the resumed run does it
    tmp_path = ckpt_path + '.tmp'
    try:
        with open(tmp_path, 'wb') as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint
        os.replace(tmp_path, ckpt_path)
    except (OSError, RuntimeError) as e:  # e.g. a full disk: torch.save raises RuntimeError
        if os.path.isfile(tmp_path):
            os.remove(tmp_path)
        fail(f"cannot write {ckpt_path} ({' '.join(str(e).split())[:200]}); the previous checkpoint is "
             f"unchanged. Free some disk space or choose another --out_dir")
    log(f"saved checkpoint to {ckpt_path} (iter {iter_num})")


def gather_rng_states(batch_state):
    """Every process's random state as it stands before the next training batch is drawn."""
    state = {'batch': batch_state, 'torch': torch.get_rng_state(),
             'cuda': torch.cuda.get_rng_state(device) if device_type == 'cuda' else None}
    if not ddp:
        return [state]
    states = [None] * world_size
    dist.all_gather_object(states, state)
    return states


stop_signal = None


def on_signal(signum, frame):
    global stop_signal
    if stop_signal is not None:
        # a second Ctrl-C quits at once; anything else (torchrun's SIGTERM to its workers after a
        # Ctrl-C, a repeated preemption notice) waits for the checkpoint being prepared
        if signum == signal.SIGINT == stop_signal:
            print("second interrupt: exiting now without a checkpoint", file=sys.stderr)
            os._exit(128 + signum)
        return
    stop_signal = signum
    if master_process:
        print(f"{signal.Signals(signum).name}: finishing this iteration, then saving a checkpoint "
              f"(interrupt again to quit at once)", file=sys.stderr)


signal.signal(signal.SIGINT, on_signal)
signal.signal(signal.SIGTERM, on_signal)


def log(msg):
    """print and flush (a piped log shows up at once); a reader that has quit (| grep -m1) stops the run
    as a signal does, so the iterations since the last checkpoint are kept"""
    global stop_signal
    try:
        print(msg, flush=True)
    except BrokenPipeError:
        drop_stdout()
        stop_signal = stop_signal or signal.SIGPIPE


if wandb_log and master_process:
    import wandb
    run = wandb.init(project=wandb_project, name=wandb_run_name, config=config, id=wandb_run_id,
                     resume='allow')
    wandb_run_id = run.id

# training loop --------------------------------------------------------------
start_iter = iter_num
batch_state = batch_gen.get_state()  # saved with a checkpoint, so resuming redraws the pending batch
X, Y = get_batch('train', next_train_ix())
running_mfu, train_time, last_log_iter, stopping = None, 0.0, iter_num, False
while True:
    lr = get_lr(iter_num, learning_rate, warmup_iters, lr_decay_iters, min_lr) if decay_lr else learning_rate
    for group in optimizer.param_groups:
        group['lr'] = lr

    # evaluate and checkpoint; a resumed run starts where its checkpoint's evaluation left off
    finished = iter_num >= max_iters
    resumed_here = iter_num == start_iter and init_from == 'resume' and resume_evaluated
    if not stopping and (eval_only or finished or (iter_num % eval_interval == 0 and not resumed_here)):
        rng_states = None if eval_only else gather_rng_states(batch_state)
        if master_process:
            losses = estimate_loss()
            log(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            if not math.isfinite(losses['val']):
                fail(f"val loss is {losses['val']} at iter {iter_num}; the checkpoint was left as it was")
            if wandb_log:
                wandb.log({'iter': iter_num, 'train/loss': losses['train'], 'val/loss': losses['val'],
                           'lr': lr, 'mfu': (running_mfu or 0.0) * 100})
            improved = losses['val'] < best_val_loss
            best_val_loss = min(best_val_loss, losses['val'])
            if not eval_only and iter_num > start_iter and (improved or always_save_checkpoint):
                save_checkpoint(rng_states)
    if stopping and iter_num > start_iter:  # interrupted: keep the last completed iteration
        rng_states = gather_rng_states(batch_state)
        if master_process:
            save_checkpoint(rng_states)
    if finished or stopping or eval_only:
        break

    # forward, backward, update ------------------------------------------------
    t0 = time.time()
    loss_sum = torch.zeros((), device=device)
    for micro_step in range(gradient_accumulation_steps):
        if ddp:
            # sync gradients only on the last micro-step; setting the flag does what no_sync() does
            model.require_backward_grad_sync = micro_step == gradient_accumulation_steps - 1
        with ctx:
            _, loss = model(X, Y)
            loss = loss / gradient_accumulation_steps  # the gradients sum over micro-steps: average them
        loss_sum += loss.detach()
        batch_state = batch_gen.get_state()
        X, Y = get_batch('train', next_train_ix())  # fetched while the device works on this step
        scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float('inf'))
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    # one sync per iteration: all processes agree on the mean loss and on stopping (a signal, a NaN)
    status = torch.stack([loss_sum, torch.tensor(float(stop_signal is not None), device=device)])
    if ddp:
        dist.all_reduce(status)
    loss_value, stopping = status[0].item() / world_size, status[1].item() > 0
    iter_num += 1
    dt = time.time() - t0
    train_time += dt
    if not math.isfinite(loss_value):
        fail(f"loss is {loss_value} at iter {iter_num}; stopping, the last checkpoint was left as it was")

    # timing and logging -------------------------------------------------------
    if iter_num % log_interval == 0 and master_process:
        iters = iter_num - last_log_iter
        dt_avg = train_time / iters  # excludes evaluation and checkpoint time
        # per process against one device's peak (gradient_accumulation_steps is per process by now)
        mfu = raw_model.estimate_mfu(batch_size * gradient_accumulation_steps, dt_avg, peak_flops or None)
        if mfu is not None and iter_num - start_iter > 5:  # the first iterations are still warming up
            running_mfu = mfu if running_mfu is None else 0.9 * running_mfu + 0.1 * mfu
        mfu_text = f"{running_mfu * 100:.2f}%" if running_mfu is not None else "n/a"
        log(f"iter {iter_num}: loss {loss_value:.4f}, time {dt_avg * 1000:.2f}ms, mfu {mfu_text}, "
            f"tok/s {tokens_per_iter / dt_avg:,.0f}, grad norm {grad_norm.item():.4f}, lr {lr:.3e}")
        if wandb_log:
            wandb.log({'iter': iter_num, 'train/loss': loss_value, 'lr': lr, 'grad_norm': grad_norm.item()})
        train_time, last_log_iter = 0.0, iter_num

if master_process and not (eval_only or stopping) and iter_num > start_iter and not os.path.exists(ckpt_path):
    print(f"warning: no checkpoint was written: the val loss never went below {best_val_loss:.4f}, the "
          f"first evaluation's, and always_save_checkpoint is False", file=sys.stderr)
exit_code = 0
if stopping:
    signum = stop_signal or signal.SIGTERM  # this process may not have been signalled itself
    exit_code = 128 + signum
    if master_process:
        print(f"stopped by {signal.Signals(signum).name} at iter {iter_num}; continue with "
              f"--init_from=resume", file=sys.stderr)
if wandb_log and master_process:
    wandb.finish()
if ddp:  # DDP keeps the replicas identical by construction: verify it once, at the end
    digest = hashlib.sha256(b''.join(p.detach().cpu().numpy().tobytes() for p in raw_model.parameters()))
    digests = [None] * world_size
    dist.all_gather_object(digests, digest.hexdigest())
    if master_process:
        print(f"parameters identical on all {world_size} processes" if len(set(digests)) == 1 else
              f"warning: parameters differ across processes: {digests}")
    dist.destroy_process_group()
    # gloo can still abort during interpreter teardown ('terminate called without an active
    # exception', about 1 run in 10 on CPU here, after destroy_process_group); all is saved and
    # flushed by now, so leave without that teardown
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
sys.exit(exit_code)
