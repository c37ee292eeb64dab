"""Evaluate a model on figures that compare across runs, models and tokenizers (see tasks.py).

    python eval.py --out_dir=out-shakespeare-char                 # the whole val split: loss, ppl, bits per byte
    python eval.py --out_dir=out-shakespeare-char --task=val,train
    python eval.py --init_from=gpt2 --task=hellaswag              # zero-shot HellaSwag (downloaded once)
    python eval.py --init_from=gpt2-large --task=wikitext --stride=512   # WikiText-2 perplexity
    python eval.py --out_dir=out-shakespeare-char --task=history --png=curves.png   # the run's logged figures
    python eval.py --init_from=gpt2 --dataset=openwebtext --task=val,hellaswag --json=True
    torchrun --standalone --nproc_per_node=8 eval.py --init_from=gpt2-xl --task=hellaswag   # the work shared out

Figures go to stdout (everything else to stderr), one line per task (history: a table); --json=True adds
one JSON object, keyed by task, as the last line.
"""
import os
import sys
from contextlib import redirect_stdout
from json import dumps

import torch

import checkpoint
import corpus
import loading
import metrics
import runtime
import tasks
import vocabulary
from configurator import configure, fail

# -----------------------------------------------------------------------------
init_from = 'resume'  # 'resume' (out_dir/ckpt.pt), a .pt file, a GPT-2 name ('gpt2' ... 'gpt2-xl') or a HF folder
out_dir = 'out'       # where train.py wrote ckpt.pt
vocab_path = ''       # a checkpoint without its vocabulary (nanoGPT's): the meta.json or meta.pkl to read it from
task = 'val'          # comma list: val, train (a whole split's loss), hellaswag, wikitext, addition, chat, history
dataset = ''          # val/train: data/<dataset> or a folder with train.bin, val.bin; '' is the checkpoint's own
stride = 0            # val/train/wikitext: a window every this many tokens (more context, more compute); 0: no overlap
hellaswag_path = ''   # a local hellaswag_val.jsonl; '' downloads it once into ~/.cache/nanogpt
wikitext_path = ''    # a local text file instead of WikiText-2's raw test set (through datasets)
png = ''              # history: also plot the loss curves into this PNG file (needs matplotlib)
batch_size = 8        # sequences per forward pass (HellaSwag: 4 to an example)
device = 'auto'       # 'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'        # 'auto' (bfloat16 on GPUs that have it, float32 on CPU), 'float32', 'bfloat16', 'float16'
compile = False       # torch.compile the model (CUDA only): pays off on long evaluations
backend = ''          # under torchrun: '' picks 'nccl' on CUDA, 'gloo' otherwise
json = False          # also print one JSON object with every figure as the last line of stdout
_positive = ('batch_size',)
_non_negative = ('stride',)
# -----------------------------------------------------------------------------
with redirect_stdout(sys.stderr):  # the configurator's messages; stdout carries only the figures
    configure(globals())
# -----------------------------------------------------------------------------
names = tasks.check_names(task, known=tasks.NAMES + ('history',))
if 'history' in names and not (init_from == 'resume' or init_from.endswith('.pt')):
    fail(f"--task=history reads a checkpoint of train.py (--out_dir or a .pt file), not {init_from!r}")
ddp, rank, local_rank, world_size = runtime.ranks()
device, device_type, dtype, ctx = runtime.setup_device(device, dtype, local_rank if ddp else None)
model, vocab, where, ckpt = loading.load_model(init_from, out_dir, vocab_path)
source = checkpoint.find(out_dir, roles=(checkpoint.CKPT,)) if init_from == 'resume' else init_from  # or ckpt.dcp
block_size = model.config.block_size
if stride > block_size:
    fail(f"stride={stride} is longer than the model's block_size of {block_size}: tokens would be skipped")
data_dir, data_vocab = None, None
if {'val', 'train', 'addition', 'chat'} & set(names):
    trained_on = ckpt['config'].get('dataset') if ckpt and isinstance(ckpt.get('config'), dict) else None
    if not (dataset or trained_on):
        fail(f"--task={task} needs a dataset: give --dataset=NAME (data/NAME) or a folder with train.bin, val.bin")
    data_dir = corpus.dataset_dir(dataset or trained_on)
    data_vocab = vocabulary.read_vocab(data_dir) or vocabulary.GPT2
    for split in {'val', 'train'} & set(names) or {'val'}:
        corpus.split_tokens(data_dir, split, block_size, data_vocab)  # there, and fits: checked before any work
where = vocabulary.vocab_file(data_dir) if data_dir else where  # a mismatch names the dataset file, as in train.py
tokenizer = vocabulary.Tokenizer(vocabulary.check_vocab(model.config.vocab_size, vocab, where, data_vocab))
if ddp:
    runtime.init_distributed(backend, device_type)
model.to(device)
if runtime.use_compile(compile, device_type, rank == 0):
    model = torch.compile(model)
if rank == 0:
    print(f"{source}: "
          f"{model.get_num_params() / 1e6:.2f}M parameters, block_size {block_size}, on {device} in {dtype}"
          + (f", {world_size} processes" if ddp else ""), file=sys.stderr)
results = {}
for name in names:
    if name == 'history':  # what the run logged, from its checkpoint
        history = metrics.read_history(ckpt, source)
        results[name] = {k: [list(p) for p in zip(*v)] for k, v in history.items()}  # [[step, value], ...]
        if rank == 0:
            print('\n'.join(metrics.history_lines(history)), flush=True)
            if png:
                metrics.plot_history(history, png, title=out_dir if init_from == "resume" else init_from)
                print(f"wrote {png}", file=sys.stderr)
        continue
    results.update(tasks.run([name], model, tokenizer, ctx, data_dir, batch_size, stride, hellaswag_path,
                             wikitext_path))
    if rank == 0:
        print(tasks.summary(name, results[name]), flush=True)
if json and rank == 0:
    print(dumps(results))
if ddp:  # as train.py ends: gloo may abort in the interpreter's teardown once all is printed
    torch.distributed.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)
