"""What the scripts set up around the model: the device and precision, DDP, the dataset folder and its
vocabulary, batches of token windows, and stopping cleanly on a signal. Mistakes go out through
configurator.fail, as one line."""
import atexit
import json
import os
import pickle
import signal
import subprocess
import sys
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist

import checkpoint
from configurator import drop_stdout, fail, oneline
from model import GPT

REPO = os.path.dirname(os.path.abspath(__file__))
GPT2_VOCAB = 50257

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
    ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
    autocasts = autocast and dtype != 'float32'
    ctx = torch.autocast(device_type=device_type, dtype=ptdtype) if autocasts else nullcontext()
    return device, device_type, dtype, ctx


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


# ----------------------------------------------------------------------------- data
def dataset_dir(dataset, check=True, prepare=False, prepare_input=''):
    """A folder holding train.bin and val.bin, as given, else data/<dataset>; an absolute path. check:
    fail if neither exists. prepare: run the folder's prepare.py (--input=prepare_input) if train.bin is not
    there yet."""
    if os.path.isdir(dataset):
        return prepare_dataset(os.path.abspath(dataset), prepare_input) if prepare else os.path.abspath(dataset)
    folder = os.path.join(REPO, 'data', dataset)
    if check and os.sep in dataset:
        fail(f"dataset={dataset!r} is not a folder; give a folder holding train.bin and val.bin, or a name in data/")
    if check and not os.path.isdir(folder):
        known = sorted(d for d in os.listdir(os.path.dirname(folder))
                       if os.path.isdir(os.path.join(REPO, 'data', d)) and not d.startswith(('_', '.')))
        fail(f"no dataset {dataset!r}: data/ has {', '.join(known)}; or give a folder holding train.bin and val.bin")
    return prepare_dataset(folder, prepare_input) if prepare else folder


def split_tokens(data_dir, split, block_size, vocab=None):
    """The number of tokens in data_dir/split.bin, which must hold one window of block_size + 1, or (a
    dataset of fixed-length examples, as its vocab declares) whole examples that block_size fits."""
    path = os.path.join(data_dir, f'{split}.bin')
    if not os.path.isfile(path):
        hint = (f"run  python {os.path.relpath(os.path.join(data_dir, 'prepare.py'))}  (or train with --prepare=True)"
                if os.path.isfile(os.path.join(data_dir, 'prepare.py')) else "prepare it first")
        fail(f"{path} not found: {hint}")
    n = os.path.getsize(path) // 2  # uint16 tokens
    example_len = (vocab or {}).get('example_len')
    if example_len and block_size < example_len - 1:
        fail(f"block_size={block_size} does not fit the dataset's examples of {example_len} tokens: "
             f"use --block_size={example_len - 1} (an example's inputs)")
    if example_len and (n % example_len or not n):
        fail(f"{path} has {n} tokens, not a whole number of its {example_len}-token examples; rerun prepare.py")
    if n < block_size + 1 and not example_len:
        fail(f"{path} has {n} tokens, fewer than block_size + 1 = {block_size + 1}; lower --block_size or use "
             f"more data")
    return n


def starts(n_tokens, block_size, shape, generator, vocab=None):
    """Random window starts of the given shape in a split of n_tokens: anywhere in a stream, at an example's
    first token in a dataset of fixed-length examples."""
    example_len = (vocab or {}).get('example_len')
    if example_len:
        return torch.randint(n_tokens // example_len, shape, generator=generator) * example_len
    return torch.randint(n_tokens - block_size, shape, generator=generator)


def windows(data_dir, split, ix, block_size, device, vocab=None):
    """Windows of block_size + 1 tokens of split.bin starting at ix -> inputs x, targets y (len(ix), block_size).
    In a dataset of examples (vocab's example_len) a window is one example, and its targets before the
    vocab's loss_from are -1, which the loss ignores."""
    # a fresh memmap per batch: a long-lived one keeps every page it touched in memory
    return token_windows(np.memmap(os.path.join(data_dir, f'{split}.bin'), dtype=np.uint16, mode='r'), ix,
                         block_size, device, vocab)


def token_windows(data, ix, block_size, device, vocab=None):
    """windows() of an array of token ids."""
    length = vocab['example_len'] - 1 if vocab and vocab.get('example_len') else block_size
    xy = torch.from_numpy(np.stack([data[i:i + length + 1] for i in ix.tolist()]).astype(np.int64))
    x, y = xy[:, :-1].contiguous(), xy[:, 1:].contiguous()
    y[:, :(vocab or {}).get('loss_from', 0)] = -1
    if device.startswith('cuda'):  # pinned memory lets the copy overlap with the GPU's work
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


# ----------------------------------------------------------------------------- vocabulary
GPT2 = {'encoding': 'gpt2'}  # the tokenizer of GPT-2's weights and of the BPE datasets
# what a vocabulary may declare besides its tokens: fixed-length examples (example_len tokens, whose targets
# count from position loss_from on), and what the examples are, for sample.py and eval.py
EXAMPLES = ('example_len', 'loss_from', 'addition')


def vocab_file(folder):
    """The file read_vocab reads in folder: meta.json, else a legacy meta.pkl; meta.json if neither is there."""
    legacy = os.path.join(folder, 'meta.pkl')
    return legacy if os.path.isfile(legacy) and not os.path.isfile(os.path.join(folder, 'meta.json')) else \
        os.path.join(folder, 'meta.json')


def read_vocab(folder):
    """The vocabulary of a dataset folder (or of an export) as checkpoints store it: {'chars': [...]}
    (token i is chars[i]), {'image': {'size': S, 'palette': [[r, g, b], ...]}} (token i is colour i, then a
    start token) or {'encoding': 'gpt2'}, with the EXAMPLES keys it declares, from its meta.json. A legacy
    meta.pkl is read only when there is no meta.json, with a warning; None when it has neither (nanoGPT's
    BPE datasets)."""
    path = vocab_file(folder)
    if not os.path.isfile(path):
        return None
    try:
        if path.endswith('.json'):
            with open(path, encoding='utf-8') as f:
                meta = json.load(f)
            kind = 'chars' if 'chars' in meta else 'image' if 'image' in meta else 'encoding'
            vocab = {kind: meta[kind], **{k: meta[k] for k in EXAMPLES if k in meta}}
            example_len, loss_from = vocab.get('example_len'), vocab.get('loss_from', 0)
            if example_len is not None and not (type(example_len) is int and type(loss_from) is int
                                                and 0 <= loss_from < example_len - 1):
                raise ValueError("'example_len' must be an integer >= 2 and 'loss_from' one in [0, example_len - 1)")
            image = vocab.get('image')
            if image is not None and not (isinstance(image, dict) and type(image.get('size')) is int
                                          and isinstance(image.get('palette'), list) and image['palette']):
                raise ValueError("'image' must hold a 'size' and a 'palette' of [r, g, b] colours")
            chars = vocab.get('chars')
            if chars is not None and not (isinstance(chars, list) and chars and len(set(chars)) == len(chars)
                                          and all(isinstance(c, str) and len(c) == 1 for c in chars)):
                raise ValueError("'chars' must list distinct single characters")
            if kind == 'encoding' and vocab['encoding'] != 'gpt2':
                raise ValueError(f"encoding {vocab['encoding']!r}: only 'gpt2' is known")
            return vocab
        if int(os.environ.get('RANK', '0')) == 0:
            print(f"warning: {path} is a pickle, which runs any code it holds; rerun the dataset's prepare.py "
                  f"to write meta.json instead", file=sys.stderr)
        with open(path, 'rb') as f:
            meta = pickle.load(f)
        return {'chars': [meta['itos'][i] for i in range(meta['vocab_size'])]}
    except Exception as e:  # truncated, not JSON (or not a pickle), or without the vocabulary
        fail(f"cannot read a vocabulary from {path} ({oneline(e)}); rerun the dataset's prepare.py")


def checkpoint_vocab(ckpt, path):
    """A checkpoint's vocabulary -> (vocab, where it is): its own, else (a checkpoint written before they
    held one) its dataset's, if that is still there."""
    if ckpt['tokenizer'] is not None:
        return ckpt['tokenizer'], path
    dataset = ckpt['config'].get('dataset') if isinstance(ckpt.get('config'), dict) else None
    if not (isinstance(dataset, str) and dataset):
        return None, '(the checkpoint names no dataset)'
    data_dir = dataset_dir(dataset, check=False)
    return read_vocab(data_dir), vocab_file(data_dir)


def load_model(init_from, out_dir):
    """The model sample.py and eval.py read -> (model in eval mode on the CPU, its vocabulary or None, where
    that is, its checkpoint or None): out_dir/ckpt.pt or else an FSDP run's ckpt.dcp ('resume'), a .pt file
    (export.py --weights), a GPT-2 name or a Hugging Face folder."""
    if init_from == 'resume' or init_from.endswith('.pt'):
        path = init_from if init_from != 'resume' else (checkpoint.find(out_dir, roles=(checkpoint.CKPT,)) or
                                                         os.path.join(out_dir, checkpoint.CKPT))
        if os.path.isdir(path) and not checkpoint.is_sharded(path):
            fail(f"{path} is a folder, not a checkpoint file")
        if not os.path.exists(path):
            folder = os.path.dirname(path) or '.'
            there = (f"{folder} does not exist" if not os.path.isdir(folder) else
                     f"{folder} holds: {', '.join(sorted(os.listdir(folder))[:8]) or 'nothing'}")
            fail(f"no checkpoint {path} ({there}); train one first, e.g. python train.py "
                 f"config/train_shakespeare_char.py --out_dir={out_dir}")
        ckpt, _ = checkpoint.load(path, checkpoint.FOR_SAMPLING)
        model = checkpoint.build_model(ckpt, path, dropout=0.0)
        return model.eval(), *checkpoint_vocab(ckpt, path), ckpt
    if not init_from.startswith('gpt2') and not os.path.isdir(init_from):
        fail(f"init_from={init_from!r} is not 'resume', a .pt file, a gpt2* name or an existing directory")
    try:
        model = GPT.from_pretrained(init_from, dict(dropout=0.0))
    except ValueError as e:
        fail(e)
    vocab = read_vocab(init_from) if os.path.isdir(init_from) else None  # an export holds its own
    return model.eval(), vocab, os.path.join(init_from, 'meta.json'), None


def pretrained(init_from, dropout, block_size, reader=None):
    """GPT-2 weights (a gpt2* name or a Hugging Face folder) cut to block_size -> (model, the vocabulary its
    weights were trained on). reader: what reads them, GPT.from_pretrained's signature (FSDP's reads them
    in rank 0 alone)."""
    try:
        model = (reader or GPT.from_pretrained)(init_from, dict(dropout=dropout))
    except ValueError as e:
        fail(e)
    if block_size > model.config.block_size:
        fail(f"block_size={block_size} is longer than the context of {init_from} ({model.config.block_size}); "
             f"use --block_size={model.config.block_size} or less")
    if block_size < model.config.block_size:
        model.crop_block_size(block_size)  # e.g. finetune with a shorter context than GPT-2's 1024
    return model, read_vocab(init_from) if os.path.isdir(init_from) else GPT2  # an export holds its own


def vocab_size_of(vocab):
    """The number of tokens of a character or image vocabulary (None for a BPE: the model decides)."""
    if 'chars' in vocab:
        return len(vocab['chars'])
    return len(vocab['image']['palette']) + 1 if 'image' in vocab else None  # the colours, then a start token


def _describe(vocab):
    if 'image' in vocab:
        return f"{len(vocab['image']['palette'])} colours"
    return f"{len(vocab['chars'])} characters" if 'chars' in vocab else f"the {vocab['encoding']} BPE"


def check_vocab(vocab_size, vocab, where, data_vocab=None):
    """The vocabulary a model of vocab_size tokens reads and writes: vocab (its checkpoint's or export's),
    else data_vocab (its dataset's), else GPT-2 BPE. Fails in one line if they do not fit: sizes, or (with
    both) a model and a dataset of different vocabularies. where names the vocabulary file."""
    if vocab and data_vocab and vocab != data_vocab:
        extra = sorted(set(data_vocab.get('chars', [])) - set(vocab.get('chars', []))) if 'chars' in vocab else []
        fail(f"the model's vocabulary ({_describe(vocab)}) is not the dataset's ({_describe(data_vocab)} in {where}"
             + (f", with {' '.join(map(repr, extra[:10]))} that the model lacks" if extra else "")
             + "): pick the dataset the model was trained on, or train a new model on this one")
    vocab = vocab or data_vocab
    n = (vocab and vocab_size_of(vocab)) or GPT2_VOCAB
    if vocab and 'encoding' not in vocab and n != vocab_size:
        fail(f"{where} has {n} tokens but the model has {vocab_size}: the model was not trained on this "
             f"dataset; pick the one it was trained on")
    if not (vocab and 'encoding' not in vocab) and vocab_size < n:
        fail(f"the model has {vocab_size} tokens, fewer than GPT-2's {n}, so it needs its dataset's meta.json, "
             f"which is not at {where}: was the dataset moved, or is it another one?")
    return vocab or GPT2


class Tokenizer:
    """Text to token ids and back, for a vocabulary as check_vocab returns it."""

    def __init__(self, vocab):
        self.vocab = vocab
        if 'image' in vocab:
            self.start = len(vocab['image']['palette'])  # the token each image begins with
            return
        if 'chars' in vocab:
            self.chars, self.stoi = vocab['chars'], {c: i for i, c in enumerate(vocab['chars'])}
            return
        import tiktoken
        try:
            self.enc = tiktoken.get_encoding(vocab['encoding'])
        except Exception as e:  # offline without a cache it fails with whatever the download raised
            fail(f"cannot load tiktoken's {vocab['encoding']} encoding ({oneline(e)}); offline, point "
                 f"TIKTOKEN_CACHE_DIR at a folder holding its cached files")

    def encode(self, text, what='the prompt'):
        if 'image' in self.vocab:
            fail(f"an image model reads no text, so {what} cannot be encoded; sample.py --png=PATH draws its images")
        if 'chars' not in self.vocab:
            return self.enc.encode(text, allowed_special={'<|endoftext|>'})
        unknown = sorted(set(text) - set(self.stoi))
        if unknown:
            fail(f"{what} has characters that are not in the model's vocabulary: {' '.join(map(repr, unknown))}")
        return [self.stoi[c] for c in text]

    def token_bytes(self, i):
        """A token's bytes (a BPE token may be part of a character); a padding id gives U+FFFD. An image
        model's token is its number and a space."""
        if 'image' in self.vocab:
            return f"{i} ".encode()
        if 'chars' in self.vocab:
            return self.chars[i].encode() if i < len(self.chars) else '\ufffd'.encode()
        return self.enc.decode_single_token_bytes(i) if i < self.enc.n_vocab else '\ufffd'.encode()

    def byte_lengths(self, n):
        """The UTF-8 bytes of the text that each of tokens 0 .. n-1 writes: 0 for special tokens
        (<|endoftext|>) and for the padding ids past the vocabulary; none for an image model's."""
        if 'image' in self.vocab:
            return [0] * n
        if 'chars' in self.vocab:
            return [len(c.encode()) for c in self.chars] + [0] * (n - len(self.chars))
        special = {self.enc.encode_single_token(t) for t in self.enc.special_tokens_set}
        return [0 if i in special or i >= self.enc.n_vocab else len(self.enc.decode_single_token_bytes(i))
                for i in range(n)]

    def decode(self, ids):
        return b''.join(map(self.token_bytes, ids)).decode('utf-8', errors='replace')


@torch.no_grad()
def sample_text(model, vocab, n, ctx, seed):
    """n tokens from the model after a newline (BPE: after <|endoftext|>), drawn from seed (the iteration),
    leaving the random state of training as it was: a run with samples trains exactly as one without."""
    tokenizer = Tokenizer(vocab)
    start = (tokenizer.start if 'image' in vocab else tokenizer.stoi.get('\n', 0) if 'chars' in vocab
             else tokenizer.enc.eot_token)
    device = model.lm_head.weight.device
    with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []), ctx:
        torch.manual_seed(seed)
        model.eval()
        out = model.generate(torch.tensor([[start]], device=device), n, temperature=0.8, top_k=200)
        model.train()
    return tokenizer.decode(out[0, 1:].tolist())


def prepare_dataset(data_dir, input_path):
    """Run data_dir/prepare.py (with --input=input_path if given) when its train.bin is missing -> data_dir."""
    script = os.path.join(data_dir, 'prepare.py')
    if os.path.isfile(os.path.join(data_dir, 'train.bin')) or not os.path.isfile(script):
        return data_dir
    print(f"{data_dir}/train.bin is missing: running {os.path.relpath(script)} first", flush=True)
    if subprocess.run([sys.executable, script] + ([f'--input={input_path}'] if input_path else [])).returncode:
        fail(f"{os.path.relpath(script)} failed (its error is above); fix that and rerun")
    return data_dir


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
    if int(os.environ.get('RANK', '0')) != 0:
        return
    try:
        print(msg, flush=True)
    except BrokenPipeError:
        drop_stdout()
        stop_signal = stop_signal or signal.SIGPIPE


def finish(model, ddp, exit_code, check=True):
    """End the run with exit_code; under DDP first check (unless not check) that every process holds the
    same parameters, which DDP keeps identical by construction."""
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
