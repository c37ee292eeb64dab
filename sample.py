r"""Sample from a model trained with train.py, or from OpenAI's GPT-2 weights.

    python sample.py --out_dir=out-shakespeare-char
    python sample.py --init_from=gpt2-xl --start="What is the answer to life?" --num_samples=5 --max_new_tokens=100
    python sample.py --out_dir=out-shakespeare-char --start=FILE:prompt.txt --stop='\n\n' --temperature=0
    python sample.py --out_dir=out-addition --start=23+45=       # an addition model: 23+45=68
    python sample.py --out_dir=out-images --png=samples.png      # an image model: a grid of its images
    python sample.py --out_dir=out-chat --chat=True              # talk to a chat model (README: Chat)

Samples are drawn one at a time and printed token by token as they come, or with --batch=True all at
once (faster, printed when all are done); each is followed by a line of dashes. A sample ends early, just
before the stop text, when that text appears in what the model wrote (the prompt is not searched).
In --start and --stop the escapes \n, \t and \\ stand for a newline, a tab and a backslash (any other
backslash is kept as it is); a FILE: prompt is read verbatim.
"""
import codecs
import os
import re
import sys
from contextlib import redirect_stdout

import numpy as np
import torch

import corpus
import decoding
import loading
import runtime
import sampling
import vocabulary
from configurator import configure, drop_stdout, fail, oneline

# -----------------------------------------------------------------------------
init_from = 'resume'  # 'resume' (out_dir/ckpt.pt), a .pt file, a GPT-2 name ('gpt2' ... 'gpt2-xl') or a HF folder
out_dir = 'out'       # where train.py wrote ckpt.pt
vocab_path = ''       # a checkpoint without its vocabulary (nanoGPT's): the meta.json or meta.pkl to read it from
start = "\n"          # the prompt, or "FILE:path" to read it from a file; GPT-2 also takes '<|endoftext|>'
num_samples = 10
max_new_tokens = 500  # tokens generated per sample
temperature = 0.8     # 1.0 samples the model's distribution, lower is more conservative, 0 is greedy
top_k = 200           # keep only the top_k most likely tokens; None keeps all
top_p = None          # nucleus sampling: keep the most likely tokens up to this much probability; None keeps all
stop = ''             # end a sample where this text appears in it ('\n\n', '<|endoftext|>'); '' never stops early
seed = 1337
device = 'auto'       # 'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'        # 'auto' (bfloat16 on GPUs that have it, float32 on CPU), 'float32', 'bfloat16', 'float16'
batch = False         # draw all num_samples at once: faster, but each is printed only when all are done
compile = False       # torch.compile the forward (a graph for the prompt, one for the steps); slower on CPU
decode_form = 'auto'  # one-row matmuls at batch 1: 'auto' (the faster on this CPU, timed), 'plain', 'split'
png = ''              # an image model: write num_samples images, and completions of held-out ones, to this PNG
chat = False          # talk to a chat model: a user turn per line of input (a pipe works); Ctrl-C ends an answer,
                      # Ctrl-D (end of input) the talk; max_new_tokens is per answer
system = ''           # with --chat: the system message that starts the conversation
_optional = ('top_k', 'top_p')  # settings that --key=None may turn off
_positive = ('num_samples', 'top_k')
_non_negative = ('max_new_tokens', 'temperature')
# -----------------------------------------------------------------------------
with redirect_stdout(sys.stderr):  # the configurator's messages; stdout carries only the samples
    configure(globals())
# -----------------------------------------------------------------------------
if top_p is not None and not (type(top_p) in (int, float) and 0 < top_p <= 1):
    fail(f"top_p={top_p!r} must be in (0, 1], or None")
if decode_form not in decoding.FORMS:
    fail(f"decode_form={decode_form!r}: use {', '.join(map(repr, decoding.FORMS))}")


def unescape(s):
    return re.sub(r'\\([nt\\])', lambda m: {'n': '\n', 't': '\t', '\\': '\\'}[m[1]], s)


stop = unescape(stop)
device, device_type, dtype, ctx = runtime.setup_device(device, dtype)

# ----------------------------------------------------------------------------- model
model, vocab, where, ckpt = loading.load_model(init_from, out_dir, vocab_path)
model.eval()
model.to(device)
if compile:
    model.compile()  # in place: torch.compile(model) would wrap it, and generate would call the unwrapped model
else:
    with ctx:  # a batch-1 step's matmuls in the faster form on this CPU (decoding.py); once per process
        decoding.install(model, decode_form)
tokenizer = vocabulary.Tokenizer(vocabulary.check_vocab(model.config.vocab_size, vocab, where))

# ----------------------------------------------------------------------------- chat
def emit(text):
    sys.stdout.write(text)
    sys.stdout.flush()


if system and not chat:
    fail("--system is the system message of a chat: use it with --chat=True")
if chat:
    if not tokenizer.vocab.get('chat'):
        fail(f"--chat=True needs a chat model, finetuned on a chat dataset (data/chat/prepare.py); this one has "
             f"{vocabulary.describe(tokenizer.vocab)} and no chat tokens (README: Chat)")
    talk = sampling.Conversation(model, tokenizer, unescape(system), note=lambda t: print(t, file=sys.stderr))
    torch.manual_seed(seed)
    while True:
        if sys.stdin.isatty():
            print("> ", end='', file=sys.stderr, flush=True)
        try:
            line = sys.stdin.readline()
        except KeyboardInterrupt:  # at the prompt: a fresh prompt; Ctrl-D ends
            print(file=sys.stderr)
            continue
        if not line:
            break
        try:
            if line.strip():
                with ctx:
                    talk.reply(line.rstrip('\n'), emit, max_new_tokens, temperature, top_k, top_p)
                emit('\n')
        except BrokenPipeError:  # the reader left (| head): stop quietly, as below
            drop_stdout()
            sys.exit(141)
    sys.exit(0)

# ----------------------------------------------------------------------------- addition and image models
if 'addition' in tokenizer.vocab:  # a+b= is answered greedily, in plain digits
    n = tokenizer.vocab['addition']['digits']
    problem = re.fullmatch(rf'(\d{{1,{n}}})\+(\d{{1,{n}}})=', start)
    if not problem:
        fail(f"--start={start!r} is not an addition this model was trained on: give a+b= with a and b of 1 to {n} "
             f"digits, e.g. --start={'2' * n}+{'4' * n}=")
    a, b = int(problem[1]), int(problem[2])
    x = torch.tensor([tokenizer.encode(f"{a:0{n}d}+{b:0{n}d}=")], device=device)
    answer = tokenizer.decode(model.generate(x, n + 1, temperature=0)[0, -n - 1:].tolist())  # lowest digit first
    print(f"{a}+{b}={int(answer[::-1])}")
    sys.exit(0)
if 'image' in tokenizer.vocab:
    from data.images.prepare import dequantise, grid  # image models only: text never needs data/
    if not png:
        fail("an image model draws images, not text: give --png=PATH")
    palette, size = tokenizer.vocab['image']['palette'], tokenizer.vocab['image']['size']
    torch.manual_seed(seed)
    with ctx:  # num_samples images from the start token alone
        drawn = model.generate(torch.full((num_samples, 1), tokenizer.start, device=device), size * size,
                               temperature, top_k, top_p)
    images = dequantise(drawn[:, 1:].cpu(), palette, size)
    rows = [list(images[i:i + 8]) for i in range(0, num_samples, 8)]
    data_dir = corpus.dataset_dir(ckpt['config'].get('dataset', ''), check=False) if ckpt else ''
    held_out = os.path.join(data_dir, 'val.bin')
    if os.path.isfile(held_out):  # Image GPT's figure: the top halves of held-out images, finished by the model
        val = torch.from_numpy(np.fromfile(held_out, dtype=np.uint16).astype(np.int64)).view(-1, size * size + 1)[:8]
        with ctx:
            top = val[:, :1 + size * size // 2].to(device)  # the start token and the top half's rows
            finished = model.generate(top, size * size // 2, temperature, top_k, top_p)
        rows += [list(dequantise(val[:, 1:], palette, size)), list(dequantise(finished[:, 1:].cpu(), palette, size))]
    try:
        grid(rows).save(png)
    except (OSError, ValueError) as e:
        fail(f"cannot write --png={png}: {oneline(e)}")
    print(f"wrote {png}: {num_samples} samples" + (" (rows of 8), then 8 held-out images and their bottom halves "
          "drawn by the model" if os.path.isfile(held_out) else ""), file=sys.stderr)
    sys.exit(0)

# ----------------------------------------------------------------------------- prompt
if start.startswith('FILE:'):
    try:
        with open(start[5:], encoding='utf-8') as f:
            prompt = f.read()
    except (OSError, UnicodeDecodeError) as e:
        fail(f"cannot read the prompt file {start[5:]!r}: {oneline(e)}")
else:
    prompt = unescape(start)
ids = tokenizer.encode(prompt)
if not ids:
    fail("the prompt is empty; give --start=TEXT (for GPT-2, '<|endoftext|>' starts afresh)")
block_size = model.config.block_size
if len(ids) > block_size:
    print(f"warning: the prompt is {len(ids)} tokens, longer than the context of {block_size}; "
          f"keeping its last {block_size}", file=sys.stderr)
    ids = ids[-block_size:]
x = torch.tensor(ids, dtype=torch.long, device=device)[None, ...]  # (1, T)


# ----------------------------------------------------------------------------- generate
def held_back(text, stop):
    """How many characters at the end of text could be the start of stop, so must wait for more."""
    return next((n for n in range(min(len(stop) - 1, len(text)), 0, -1) if text.endswith(stop[:n])), 0)


def draw(n):
    """Draw n samples as one batch. A single sample is printed token by token, several once all are done."""
    # each sample's tokens go through one incremental UTF-8 decoder, so a character split across BPE
    # tokens is printed once it is whole, and the printed text is exactly the decoded sample
    utf8 = [codecs.getincrementaldecoder('utf-8')(errors='replace') for _ in range(n)]
    head = [d.decode(b''.join(map(tokenizer.token_bytes, ids))) for d in utf8]  # the prompt
    gen = [''] * n     # text generated so far
    ends = [None] * n  # where a sample's text ends once the stop text has appeared in it
    printed = 0        # characters of gen[0] printed so far (n == 1)
    if n == 1:
        emit(head[0])
    for idx_next in model.generate_stream(x.expand(n, -1), max_new_tokens, temperature, top_k, top_p):
        for i, token in enumerate(idx_next[:, 0].tolist()):
            if ends[i] is None:
                gen[i] += utf8[i].decode(tokenizer.token_bytes(token))
                ends[i] = gen[i].index(stop) if stop and stop in gen[i] else None
        if n == 1:
            cut = ends[0] if ends[0] is not None else len(gen[0]) - held_back(gen[0], stop)
            emit(gen[0][printed:cut])
            printed = cut
        if None not in ends:
            break
    for i in range(n):
        text = gen[i][:ends[i]] if ends[i] is not None else gen[i] + utf8[i].decode(b'', final=True)
        emit((text[printed:] if n == 1 else head[i] + text) + '\n---------------\n')


torch.manual_seed(seed)  # seeded right before sampling: the same seed and settings give the same text
try:
    with ctx:
        for _ in range(0, num_samples, num_samples if batch else 1):
            draw(num_samples if batch else 1)
except KeyboardInterrupt:
    print("\ninterrupted", file=sys.stderr)
    sys.exit(130)
except BrokenPipeError:  # the reader left early (| head): stop quietly, and so must the final flush
    drop_stdout()
    sys.exit(141)  # as a process that SIGPIPE ended, and as train.py
