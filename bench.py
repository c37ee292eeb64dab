"""Time the core of a training step (forward, backward, optimizer step) with nothing else in the way.

    python bench.py                                   # GPT-2 124M shape, batch 12 x 1024, on a GPU
    python bench.py config/bench_cpu_tiny.py          # a tiny shape, seconds on a laptop CPU
    python bench.py --real_data=True --dataset=openwebtext   # windows of data/openwebtext/train.bin
    python bench.py --profile=True                    # torch.profiler trace of the timed steps in out-bench/
    python bench.py --mode=sample --batch_size=1      # generation tokens/s, KV cache vs full recompute
    python bench.py --mode=sample --batch_size=1 --device=cpu --steps=1   # the same in about a minute on a CPU
    python bench.py --mode=chat --device=cpu --steps=3 --max_new_tokens=32   # a chat's turn 5: cache kept or not
    python bench.py config/bench_sample_char.py --decode_form=both   # also each one-row matmul form (decoding.py)
    python bench.py --json=True                       # also one JSON object on stdout's last line
    python bench.py config/bench_cpu_tiny.py --lora_rank=8   # LoRA: what its training state saves
    torchrun --standalone --nproc_per_node=2 bench.py --fsdp=True   # DDP, or with --fsdp=True FSDP, per process

Timed steps are synchronized with the device (CUDA, MPS), so each step's time is its real duration.
The tokens/s and MFU use the median step; MFU is against the GPU's dense bf16 peak (runtime.PEAK_FLOPS)
and n/a where the peak is unknown (a CPU) unless --peak_flops is given. Under torchrun every process
steps on its own batch of batch_size (tokens/s counts them all) and the figures are rank 0's; "training
state" is what it holds of the parameters, gradients and optimizer state, from their tensors' storages
at the end of the last step (FSDP: its shards), DDP's gradient buckets not included. With --lora_rank=R
only the adapters have gradients and AdamW state; the frozen weights are bfloat16 where the step is.
"""
import os
import sys
import time
from contextlib import nullcontext
from json import dumps

import numpy as np
import torch

import chat
import corpus
import decoding
import lora
import optimizers
import runtime
import sampling
import sharding
import vocabulary
from configurator import configure, fail, make_dir
from model import GPT, GPTConfig

# -----------------------------------------------------------------------------
# what to time
mode = 'train'  # 'train': forward + backward + step; 'sample': generate, cached vs uncached; 'chat': turn 5
steps = 20 # timed steps (train) or timed generate calls per variant (sample)
warmup = 10 # untimed steps first (train): compilation, allocator and caches settle
max_new_tokens = 200 # sample mode: tokens generated per call, from a one-token prompt
temperature = 0.8 # sample mode: as sample.py's defaults
top_k = 200
decode_form = 'auto' # sample mode: one-row matmuls 'auto' (the faster here), 'plain', 'split'; 'both' times each
# data
real_data = False # windows of the dataset's train.bin; False: one batch of random tokens
dataset = 'openwebtext' # a folder holding train.bin, else data/<dataset>
batch_size = 12
block_size = 1024
# model (GPT-2 124M)
n_layer = 12
n_head = 12
n_embd = 768
vocab_size = 50304 # with real_data, a character dataset's vocabulary (meta.json) decides it, as in train.py
bias = False
dropout = 0.0
# optimizer (its cost depends on the parameter count, not on these values)
optimizer = 'adamw' # 'adamw' | 'muon': as train.py, Muon (Newton-Schulz) on the blocks' matrices, AdamW the rest
learning_rate = 6e-4
weight_decay = 0.1
grad_clip = 1.0 # 0.0 disables
# system
seed = 1337
device = 'auto' # 'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto' # 'auto', 'float32', 'bfloat16' or 'float16' (float16: with a GradScaler, as in train.py)
compile = True # torch.compile the model (train mode), on CUDA only as in train.py
fsdp = False # under torchrun: shard the model with FSDP instead of DDP (train mode), as train.py does
activation_checkpointing = False # recompute each Block's activations in the backward pass, as train.py does
lora_rank = 0 # > 0: LoRA adapters of this rank (peft) over the frozen weights, as train.py's lora_* settings
lora_alpha = 16.0
lora_targets = 'c_attn,c_proj,c_fc'
num_threads = 0 # CPU threads for torch (torch.set_num_threads); 0 keeps torch's default
peak_flops = 0.0 # device peak FLOP/s for MFU; 0.0: the CUDA device's bf16 peak from runtime.PEAK_FLOPS
# output
profile = False # trace the timed steps with torch.profiler (open in TensorBoard or Perfetto)
profile_dir = 'out-bench' # folder the trace is written to
json = False # print one JSON object with every figure as the last line of stdout
_optional = ('top_k',)  # --top_k=None keeps every token
_positive = ('steps', 'max_new_tokens', 'top_k', 'batch_size', 'block_size', 'n_layer', 'n_head', 'n_embd', 'vocab_size')
_non_negative = ('temperature', 'warmup', 'grad_clip', 'num_threads', 'peak_flops', 'lora_rank')
# -----------------------------------------------------------------------------
config, given = configure(globals())
# -----------------------------------------------------------------------------
SIZES = ('batch_size', 'block_size', 'n_layer', 'n_head', 'n_embd', 'vocab_size')
if mode not in ('train', 'sample', 'chat'):
    fail(f"mode={mode!r}: use 'train', 'sample' or 'chat'")
if decode_form not in decoding.FORMS + ('both',):
    fail(f"decode_form={decode_form!r}: use 'auto', 'plain', 'split' or 'both'")
if profile:
    make_dir(profile_dir, 'profile_dir')
ddp, rank, local_rank, world_size = runtime.ranks()  # launched by torchrun
if ddp and mode != 'train':
    fail("under torchrun bench.py times training steps only: leave out --mode=sample")
device, device_type, dtype, ctx = runtime.setup_device(device, dtype, local_rank if ddp else None, not fsdp)
sharding.check(fsdp, ddp, device_type, dtype, '', optimizer)
if ddp:
    runtime.init_distributed('', device_type)
if rank:  # one process reports
    sys.stdout = open(os.devnull, 'w')
if device_type == 'cpu' and mode != 'chat' and not any(k in given for k in SIZES):  # chat: one row
    fail("bench.py's defaults are GPT-2 124M at batch 12 x 1024, a GPU's size (~15 GB and minutes a step on a "
         "CPU); on a CPU run  python bench.py config/bench_cpu_tiny.py, or give the sizes (--batch_size, ...)")
if num_threads > 0:
    torch.set_num_threads(num_threads)
torch.manual_seed(seed)


def sync():
    """Wait for the queued device work, so that a clock read covers it (a CPU runs eagerly)."""
    if device_type == 'cuda':
        torch.cuda.synchronize(device)
    elif device_type == 'mps':
        torch.mps.synchronize()


def peak_memory_mb():
    """Peak tensor memory on CUDA, else the process's peak resident set size (includes Python and torch)."""
    if device_type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2**20, 'cuda max_memory_allocated'
    import resource  # Unix only
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return maxrss / (2**20 if sys.platform == 'darwin' else 2**10), 'max RSS'


# ---------------------------------------------------------------------------- data
if real_data:
    data_dir = corpus.dataset_dir(dataset)
    n_tokens = corpus.split_tokens(data_dir, 'train', block_size)
    vocab = vocabulary.read_vocab(data_dir)
    vocab_size = len(vocab['chars']) if vocab and 'chars' in vocab else vocab_size
    vocabulary.check_vocab(vocab_size, None, vocabulary.vocab_file(data_dir), vocab)
else:
    xy = torch.randint(vocab_size, (batch_size, block_size + 1), device=device)
    X, Y = xy[:, :-1], xy[:, 1:]  # (B, T) each: the same batch every step

# ---------------------------------------------------------------------------- model
try:
    model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head,
                          n_embd=n_embd, bias=bias, dropout=dropout))
except ValueError as e:  # e.g. n_embd not divisible by n_head
    fail(e)
if lora_rank:  # over random weights: the same bytes as over GPT-2's
    if fsdp:
        fail("LoRA is not sharded here: leave out --fsdp")
    model = lora.attach(model, {'rank': lora_rank, 'alpha': lora_alpha, 'dropout': 0.0, 'base': 'random',
                                'targets': lora_targets.split(',')}, dtype=dtype, verbose=True)
n_params = model.get_num_params()
# a busy CPU (load above its core count) slows a multi-threaded step many times over: record both
load = round(os.getloadavg()[0], 2) if hasattr(os, 'getloadavg') else None
cpu_env = {k: os.environ[k] for k in ('OMP_NUM_THREADS', 'OMP_WAIT_POLICY', 'GLIBC_TUNABLES') if k in os.environ}
print(f"device {device}, dtype {dtype}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
      f"load {load}{f' {cpu_env}' if cpu_env else ''}; {n_params / 1e6:.2f}M parameters, "
      f"batch {batch_size} x {block_size}")
result = {'mode': mode, 'device': device, 'dtype': dtype, 'torch': torch.__version__,
          'threads': torch.get_num_threads(), 'load': load, 'cpu_env': cpu_env, 'n_params': n_params,
          'batch_size': batch_size, 'block_size': block_size, 'n_layer': n_layer, 'n_head': n_head,
          'n_embd': n_embd, 'vocab_size': vocab_size}


def summary(times):
    """Median, min and max of a list of durations in seconds, in ms."""
    ms = np.array(times) * 1000
    return {'ms_median': float(np.median(ms)), 'ms_min': float(ms.min()), 'ms_max': float(ms.max())}


if mode == 'sample':
    # ------------------------------------------------------------------------ generation
    # the cache makes a step cost one position; without it every step re-encodes the whole sequence
    if max_new_tokens >= block_size:
        fail(f"max_new_tokens={max_new_tokens} must be < block_size={block_size}")
    model.to(device).eval()
    t0 = time.perf_counter()
    with ctx:  # the form batch-1 decoding uses; 'auto' times both forms once (decoding.py)
        form = decoding.install(model, 'auto' if decode_form == 'both' else decode_form)
    how = f"chosen in {(time.perf_counter() - t0) * 1000:.0f} ms" if decode_form in ('auto', 'both') else 'forced'
    print(f"decode form: {form} ({how}; the split acts at batch 1 only)")
    result['decode_form'] = form
    # name: (use_cache, form); the uncached loop is nanoGPT's generate, each step re-encoding the sequence
    variants = {'cached': (True, form)} if decode_form != 'both' else {'cached_plain': (True, 'plain'),
                                                                        'cached_split': (True, 'split')}
    variants['uncached'] = (False, 'plain')
    prompt = torch.zeros((batch_size, 1), dtype=torch.long, device=device)

    def sample(variant, n):
        use_cache, vform = variants[variant]
        decoding.use(model, vform)
        with ctx:
            model.generate(prompt, n, temperature, top_k, use_cache=use_cache)

    for variant in variants:
        sample(variant, 8)  # burn-in: allocator and kernels settle
    times = {variant: [] for variant in variants}
    for _ in range(steps):  # interleaved, so a change in machine load hits every variant alike
        for variant in variants:
            sync()
            t0 = time.perf_counter()
            sample(variant, max_new_tokens)
            sync()
            times[variant].append(time.perf_counter() - t0)
    for name in variants:
        s = summary(times[name])
        s['tokens_per_s'] = batch_size * max_new_tokens / (s['ms_median'] / 1000)
        result[name] = s
        print(f"{name:>12}: {max_new_tokens} tokens x batch {batch_size} in {s['ms_median']:.1f} ms "
              f"(min {s['ms_min']:.1f}, max {s['ms_max']:.1f}), {s['tokens_per_s']:,.1f} tokens/s")
    result['cached'] = result.get('cached') or result[f'cached_{form}']
    result['max_new_tokens'] = max_new_tokens
    result['cache_speedup'] = result['cached']['tokens_per_s'] / result['uncached']['tokens_per_s']
    print(f"KV cache speedup: {result['cache_speedup']:.2f}x")
elif mode == 'chat':
    # ------------------------------------------------------------------------ a chat's fifth turn
    # the time to its first token, the KV cache kept between turns (sample.py --chat) against re-reading the
    # history; GPT-2 BPE with the chat tokens, greedy answers of max_new_tokens (random weights do not stop)
    if vocab_size < vocabulary.GPT2_VOCAB + len(chat.SPECIAL):
        fail(f"mode=chat: vocab_size={vocab_size} has no rows for GPT-2's BPE and the chat tokens; use 50304")
    model.to(device).eval()
    tokenizer = vocabulary.Tokenizer(chat.with_chat(vocabulary.GPT2))
    question = "Tell me about the history of this city and its people, in a few sentences, with dates."
    times = {True: [], False: []}
    for _ in range(steps):  # interleaved, so a change in machine load hits both alike
        for reuse in (True, False):
            talk = sampling.Conversation(model, tokenizer, reuse=reuse, note=lambda text: None)
            for turn in range(5):
                t0, first = time.perf_counter(), []
                with ctx:  # the first piece comes after the token's .item(): the device is done with it
                    talk.reply(question, lambda text: first or first.append(time.perf_counter() - t0),
                               max_new_tokens, temperature=0)
            times[reuse].append(first[0])
    for reuse, name in ((True, 'cached'), (False, 're-read')):
        result[name] = summary(times[reuse])
        print(f"{name:>8}: turn 5's first token after {result[name]['ms_median']:.1f} ms (history "
              f"{len(talk.cached)} tokens)")
    result['cache_speedup'] = result['re-read']['ms_median'] / result['cached']['ms_median']
    print(f"KV cache kept between turns: {result['cache_speedup']:.2f}x sooner")
else:
    # ------------------------------------------------------------------------ training step
    compile = runtime.use_compile(compile, device_type)
    model = raw_model = sharding.place(model, device, dtype, fsdp, activation_checkpointing, compile)
    optims = optimizers.build(model, {**optimizers.DEFAULTS, **config}, device_type)  # [AdamW] or [AdamW, Muon]
    scaler = runtime.grad_scaler(device_type, dtype)
    if compile and not sharding.compiles_blocks(fsdp, activation_checkpointing):  # else place() did, per Block
        model = torch.compile(model)
    if ddp and not fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[local_rank] if device_type == 'cuda' else None)

    def train_step(x, y):
        for opt in optims:
            opt.zero_grad(set_to_none=True)  # here, so that the last step's gradients are there to count
        with ctx:
            _, loss = model(x, y)
        scaler.scale(loss).backward()
        if grad_clip != 0.0:
            for opt in optims:
                scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        for opt in optims:
            scaler.step(opt)
        scaler.update()
        return loss

    if profile:
        # burn-in steps are the profiler's warmup (traced, then dropped); the timed steps are kept
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device_type == 'cuda':
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        prof = torch.profiler.profile(
            activities=activities, schedule=torch.profiler.schedule(wait=0, warmup=warmup, active=steps, repeat=1),
            on_trace_ready=torch.profiler.tensorboard_trace_handler(profile_dir), record_shapes=True)
    else:
        prof = nullcontext()
    if device_type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with prof:
        for it in range(warmup + steps):
            if real_data:  # fetched outside the clock: only the step is timed
                X, Y = corpus.windows(data_dir, 'train', torch.randint(n_tokens - block_size, (batch_size,)),
                                       block_size, device)
            sync()
            t0 = time.perf_counter()
            loss = train_step(X, Y)
            sync()
            times.append(time.perf_counter() - t0)
            if profile:
                prof.step()
    s = summary(times[warmup:])
    dt = s['ms_median'] / 1000
    s['first_step_ms'] = times[0] * 1000  # includes compilation with compile=True
    s['tokens_per_s'] = world_size * batch_size * block_size / dt
    s['mfu'] = raw_model.estimate_mfu(batch_size, dt, runtime.peak_flops(device, peak_flops))
    s['peak_mem_mb'], s['mem_kind'] = peak_memory_mb()
    s['loss'] = loss.item()
    s['state_mb'] = {k: v / 2**20 for k, v in sharding.state_bytes(raw_model, *optims).items()}
    result.update(s, optimizer=optimizer, compile=compile, real_data=real_data, steps=steps, warmup=warmup,
                  processes=world_size, fsdp=fsdp, activation_checkpointing=activation_checkpointing,
                  lora_rank=lora_rank)
    mfu = f"{s['mfu'] * 100:.2f}%" if s['mfu'] is not None else 'n/a'
    print(f"{steps} {optimizer} steps after {warmup} burn-in: {s['ms_median']:.2f} ms/iter median "
          f"(min {s['ms_min']:.2f}, max {s['ms_max']:.2f}), {s['tokens_per_s']:,.0f} tokens/s, mfu {mfu}, "
          f"peak memory {s['peak_mem_mb']:,.0f} MiB ({s['mem_kind']}); first step {s['first_step_ms']:.0f} ms, "
          f"loss {s['loss']:.4f}")
    print(f"{world_size} process(es), {'FSDP' if fsdp else 'DDP' if ddp else 'no DDP'}: training state per process "
          f"{sum(s['state_mb'].values()):,.1f} MiB (" + ', '.join(f"{k} {v:,.1f}" for k, v in s['state_mb'].items())
          + ")")
    if profile:
        print(f"profiler trace written to {profile_dir}/ (tensorboard --logdir={profile_dir}, or load the "
              f".json in ui.perfetto.dev)")

if json:
    print(dumps(result))
if ddp:
    runtime.finish(raw_model, True, check=False)  # the JSON stays the last line
