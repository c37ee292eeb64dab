"""Where and how the scripts run: the device and its precision, DDP's processes, and the process's life
(stopping cleanly on a signal, the log, the exit). Mistakes go out through configurator.fail, as one line."""
import atexit
import os
import signal
import sys
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist

import checkpoint
from configurator import drop_stdout, fail

# Dense bf16 peak of common accelerators, matched against torch.cuda.get_device_name().
# The first match wins, so the more specific names come first.
PEAK_FLOPS = [
    ('H100 PCIe', 756e12), ('H100 NVL', 835e12), ('H100', 989e12), ('GH200', 989e12), ('H200', 989e12),
    ('B200', 2250e12), ('A100', 312e12), ('A800', 312e12), ('L40S', 362e12), ('L40', 181e12),
    ('L4', 121e12), ('A10G', 70e12), ('A10', 125e12), ('RTX 4090', 165e12), ('RTX 3090', 71e12),
    ('V100', 125e12), ('T4', 65e12),
]


def device_peak_flops(device_name):
    """Dense bf16 peak FLOP/s of a device named like torch.cuda.get_device_name(), None if unknown."""
    return next((flops for key, flops in PEAK_FLOPS if key.lower() in device_name.lower()), None)


def peak_flops(device, given=0.0):
    """The peak FLOP/s that MFU is measured against: the given one, else the GPU's; None on a CPU."""
    if given:
        return given
    return device_peak_flops(torch.cuda.get_device_name(device)) if device.startswith('cuda') else None


# ----------------------------------------------------------------------------- device and precision
def resolve_device(device='auto'):
    """'auto' -> 'cuda' if available, else 'mps', else 'cpu'; an unavailable device fails."""
    mps = hasattr(torch.backends, 'mps') and torch.backends.mps.is_available()
    if device == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'mps' if mps else 'cpu'
    kind = device.split(':')[0]
    if kind not in ('cpu', 'cuda', 'mps'):
        fail(f"device={device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if kind == 'cuda' and not torch.cuda.is_available():
        fail(f"device={device!r} but CUDA is not available here; use --device=cpu (or auto)")
    n = torch.cuda.device_count() if kind == 'cuda' else 0
    if kind == 'cuda' and ':' in device and not (device[5:].isdigit() and int(device[5:]) < n):
        fail(f"device={device!r}: this machine has {n} GPU(s), cuda:0 to cuda:{n - 1}")
    if kind == 'mps' and not mps:
        fail(f"device={device!r} but MPS is not available here; use --device=cpu (or auto)")
    return device


def resolve_dtype(device, dtype='auto'):
    """'auto' -> bfloat16 on CUDA where supported, else float16; bfloat16 on MPS; float32 on CPU.
    bfloat16 asked for on a GPU without it fails, rather than being swapped for float16."""
    if dtype not in ('auto', 'float32', 'bfloat16', 'float16'):
        fail(f"dtype={dtype!r}: use 'auto', 'float32', 'bfloat16' or 'float16'")
    kind = device.split(':')[0]
    # native bf16 from Ampere (compute capability 8) on; torch.cuda.is_bf16_supported() also counts the
    # slow emulation of older GPUs (V100, T4), and it asks about the current GPU, not this one
    bf16_ok = kind != 'cuda' or bool(torch.version.hip) or torch.cuda.get_device_capability(device)[0] >= 8
    if dtype == 'auto':
        return 'float32' if kind == 'cpu' else 'bfloat16' if bf16_ok else 'float16'
    if dtype == 'bfloat16' and not bf16_ok:
        fail(f"dtype=bfloat16 is not supported natively by {torch.cuda.get_device_name(device)}; use --dtype=float16")
    return dtype


def setup_device(device='auto', dtype='auto', local_rank=None, autocast=True):
    """Resolve device and dtype -> (device, device_type, dtype, autocast context; a no-op without autocast).
    Under torchrun (local_rank given) a bare 'cuda' becomes this process's GPU, cuda:LOCAL_RANK."""
    if local_rank is not None and device.startswith('cuda:'):
        fail(f"--device={device}: under torchrun each process takes GPU LOCAL_RANK; use --device=cuda and "
             f"choose the GPUs with CUDA_VISIBLE_DEVICES")
    device = resolve_device(device)
    if local_rank is not None and device == 'cuda':
        device = f'cuda:{local_rank}'
    dtype = resolve_dtype(device, dtype)
    device_type = device.split(':')[0]
    if device_type == 'cuda' and ':' in device:
        # cuda:N becomes the current GPU, which defaults such as the CUDA random state refer to; a bare
        # 'cuda' is the current GPU already (set_device needs an index)
        torch.cuda.set_device(device)
    if device_type == 'cuda':
        # TF32 matmuls on Ampere+ GPUs; on a CPU 'high' lets oneDNN compute float32 matmuls in bfloat16
        # (AMX): not float32 any more, and 2x slower for our shapes on a Xeon that has it
        torch.set_float32_matmul_precision('high')
    if device_type == 'cpu' and local_rank is None and 'OMP_NUM_THREADS' not in os.environ:
        spare_threads()
    ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
    autocasts = autocast and dtype != 'float32'
    ctx = torch.autocast(device_type=device_type, dtype=ptdtype) if autocasts else nullcontext()
    return device, device_type, dtype, ctx


def busy_cores(interval=0.1):
    """How many cores other programs keep busy now: from /proc/stat over interval seconds (this process
    sleeps meanwhile), else the 1-minute load average (macOS); None where neither is known."""
    def ticks():  # the CPU time spent so far: user nice system idle iowait irq softirq steal
        with open('/proc/stat') as f:
            return [int(t) for t in f.readline().split()[1:9]]
    try:
        before = ticks()
        time.sleep(interval)
        spent = [b - a for a, b in zip(before, ticks())]
        return (os.cpu_count() or 1) * (1 - (spent[3] + spent[4]) / sum(spent)) if sum(spent) else 0.0
    except (OSError, ValueError):
        return os.getloadavg()[0] if hasattr(os, 'getloadavg') else None


def spare_threads(busy=None):
    """On a CPU that other programs keep busy, OpenMP's waiting threads spin against them: a step took 3.5x
    as long here (README: "A busy CPU"). Then torch uses only the idle cores, at least one, and one line
    says so; a quiet machine keeps torch's default. OMP_NUM_THREADS, when set, is left as it is."""
    threads, cores = torch.get_num_threads(), os.cpu_count() or torch.get_num_threads()
    if threads == 1:
        return 1
    busy = busy_cores() if busy is None else busy
    idle = cores - busy if busy is not None else cores
    # a short spike of another program (a fraction of a core) leaves the default as it is
    fewer = max(1, round(idle)) if idle < threads - 0.75 else threads
    if fewer < threads:  # (never under torchrun: setup_device leaves its processes be)
        torch.set_num_threads(fewer)
        print(f"note: other programs keep {busy:.1f} of the {cores} cores busy: using {fewer} thread(s), "
              f"not {threads}; OMP_WAIT_POLICY=PASSIVE is faster still, OMP_NUM_THREADS=N decides",
              file=sys.stderr)
    return fewer


def grad_scaler(device_type, dtype):
    """float16 trains with a GradScaler on every device (its small range underflows small gradients);
    bfloat16 and float32 never need one."""
    return torch.amp.GradScaler(device_type, enabled=dtype == 'float16')


def use_compile(compile, device_type, verbose=True):
    """torch.compile is used on CUDA only: elsewhere it compiles for a minute and gains little."""
    if compile and verbose:
        print("compiling the model (takes a minute)..." if device_type == 'cuda' else
              f"compile=True ignored on {device_type}: torch.compile is used on CUDA only")
    return compile and device_type == 'cuda'


def ranks():
    """(ddp, rank, local_rank, world_size): ddp is whether torchrun started this process."""
    if 'RANK' not in os.environ:
        return False, 0, 0, 1
    return True, *(int(os.environ[k]) for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE'))


def per_process(gradient_accumulation_steps, world_size):
    """The micro-steps each process takes of gradient_accumulation_steps (global), which must divide.
    Every process checks it before any collective, so that a mistake leaves none of them waiting."""
    if gradient_accumulation_steps % world_size:
        fail(f"gradient_accumulation_steps={gradient_accumulation_steps} is not divisible by the {world_size} "
             f"processes; make it a multiple of {world_size}")
    return gradient_accumulation_steps // world_size


def sync_gradients(model, sync):
    """Whether the next backward pass syncs the gradients across processes: False accumulates them locally,
    as DDP's no_sync() does; under FSDP they are then also kept whole until the backward that syncs."""
    if hasattr(model, 'set_requires_gradient_sync'):  # FSDP: reduce-scatter
        model.set_requires_gradient_sync(sync)
    else:  # DDP: all-reduce; setting the flag does what no_sync() does
        model.require_backward_grad_sync = sync


def init_distributed(backend, device_type):
    """Join the torchrun job: 'nccl' on CUDA, 'gloo' otherwise, unless backend names one."""
    if backend not in ('', 'nccl', 'gloo', 'mpi'):
        fail(f"backend={backend!r}: use 'nccl', 'gloo', 'mpi' or '' (nccl on CUDA, else gloo)")
    dist.init_process_group(backend=backend or ('nccl' if device_type == 'cuda' else 'gloo'))
    atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())  # also after errors


# ----------------------------------------------------------------------------- stopping
stop_signal = None  # the signal that asked this process to stop after its current iteration, if any


def _on_signal(signum, frame):
    global stop_signal
    if stop_signal is not None:
        # a second Ctrl-C quits at once; anything else (torchrun's SIGTERM to its workers after a
        # Ctrl-C, a repeated preemption notice) waits for the checkpoint being prepared
        if signum == signal.SIGINT == stop_signal:
            print("second interrupt: exiting now without a checkpoint", file=sys.stderr)
            os._exit(128 + signum)
        return
    stop_signal = signum
    if int(os.environ.get('RANK', '0')) == 0:
        print(f"{signal.Signals(signum).name}: finishing this step, then saving a checkpoint "
              f"(interrupt again to quit at once)", file=sys.stderr)


def catch_stop_signals():
    """Ctrl-C (SIGINT) and SIGTERM set stop_signal instead of killing the process."""
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def log(msg):
    """print and flush on rank 0 (a piped log shows up at once); a reader that has quit (| grep -m1)
    stops the run as a signal does, so the iterations since the last checkpoint are kept"""
    global stop_signal
    if not msg or int(os.environ.get('RANK', '0')) != 0:
        return
    try:
        print(msg, flush=True)
    except BrokenPipeError:
        drop_stdout()
        stop_signal = stop_signal or signal.SIGPIPE


def finish(model, ddp, stopped_at=None, saved=True, check=True):
    """End the run: exit code 0, or after a stop at iteration stopped_at 128 + the signal's number (with
    a line that says how to go on: saved, whether a checkpoint holds the run). Under DDP first check
    (unless not check) that every process holds the same parameters, which DDP keeps identical."""
    # under DDP this process may not be the one that was signalled
    signum = (stop_signal or signal.SIGTERM) if stopped_at is not None else None
    if signum and int(os.environ.get('RANK', '0')) == 0:
        then = "continue with --init_from=resume" if saved else "nothing was trained yet, so nothing was saved"
        print(f"stopped by {signal.Signals(signum).name} at iter {stopped_at}; {then}", file=sys.stderr)
    exit_code = 128 + signum if signum else 0
    if ddp and check and not any(type(p).__name__ == 'DTensor' for p in model.parameters()):  # FSDP's differ
        digests = [None] * dist.get_world_size()
        dist.all_gather_object(digests, checkpoint.digest(dict(model.named_parameters())))
        if dist.get_rank() == 0:
            print(f"parameters identical on all {len(digests)} processes" if len(set(digests)) == 1 else
                  f"warning: parameters differ across processes: {digests}")
    if ddp:
        dist.destroy_process_group()
        # gloo can still abort during interpreter teardown ('terminate called without an active exception',
        # about 1 run in 10 on CPU here, after destroy_process_group); all is saved and flushed by now
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)
    sys.exit(exit_code)
