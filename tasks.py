"""Evaluation tasks, run by eval.py and, with eval_tasks, by train.py at each evaluation. Each returns a dict
of figures; under torchrun the processes share the work out and every one of them gets the same figures.

    val, train  the loss over the whole split, each token predicted once: nats per token, perplexity, and
                bits per byte (which compares models of different tokenizers)
    hellaswag   zero-shot accuracy on HellaSwag's validation set: acc (lowest total loss of the ending)
                and acc_norm (lowest mean loss per token of the ending)
    wikitext    perplexity on WikiText-2's raw test text, in the model's own tokenizer
    addition    exact-match accuracy of a model trained on data/addition on its held-out problems (val.bin)
"""
import http.client
import json
import math
import os
import urllib.request

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

import corpus
import vocabulary
from configurator import fail, oneline

NAMES = ('val', 'train', 'hellaswag', 'wikitext', 'addition')
HELLASWAG_URL = 'https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl'
CACHE = os.path.join(os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'nanogpt')


def check_names(names, setting='task', known=NAMES):
    """A comma list of task names -> [name, ...]; an unknown one fails."""
    names = [n.strip() for n in names.split(',') if n.strip()]
    if not names or set(names) - set(known):
        fail(f"{setting}={','.join(names)!r}: the tasks are {', '.join(known)} (a comma list runs several)")
    return names


def _mine(n):
    """The items of range(n) this process takes: every world_size-th one, from its rank."""
    return range(dist.get_rank(), n, dist.get_world_size()) if dist.is_initialized() else range(n)


def _gathered(rows):
    """rows, of which each process filled its own (zeros elsewhere), summed over the processes: every one
    then holds all of them exactly, as one process alone would."""
    if dist.is_initialized():
        dist.all_reduce(rows)
    return rows


def _bar(total, desc, progress):
    """A progress bar on rank 0's terminal (none when stderr is a file or a pipe)."""
    off = not progress or int(os.environ.get('RANK', '0')) != 0
    return tqdm(total=total, desc=desc, disable=True if off else None, dynamic_ncols=True, leave=False)


def token_losses(model, x, y, ctx):
    """The cross-entropy of every target of y (B, T) in float32, 0 where the target is -1."""
    with ctx:
        logits, _ = model(x, y)
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-1,
                           reduction='none').view(y.shape)


# ----------------------------------------------------------------------------- the loss over a split
def split_windows(n, block_size, stride):
    """Windows of block_size inputs over a split of n tokens that predict each of its tokens but the first
    exactly once -> [(start, first)]: inputs are tokens start .. start + block_size - 1, and targets count
    from position first on. A window starts every stride tokens and counts the targets its predecessor did
    not; the last one is moved back to end where the split ends, so every window is whole."""
    assert 0 < stride <= block_size < n
    windows, done, start = [], 0, 0  # done: the targets up to token done are counted
    while done < n - 1:
        end = min(start + block_size, n - 1)
        windows.append((end - block_size, done - (end - block_size)))
        done, start = end, start + stride
    return windows


@torch.no_grad()
def stream_loss(model, tokenizer, tokens, ctx, batch_size=8, stride=0, progress=True, desc='tokens'):
    """The model's loss over a stream of token ids (an array), each token but the first predicted once ->
    {'loss' (nats/token), 'ppl', 'bpb', 'tokens'}. stride 0 (block_size) gives non-overlapping windows; a
    smaller stride gives each token more context, at more compute. Bits per byte: the total loss in bits
    over the UTF-8 bytes of the tokens counted (special tokens such as <|endoftext|> have none; None where
    no token has any, as in an image). A dataset of fixed-length examples (the vocabulary's example_len) is
    evaluated example by example, counting the targets from loss_from on, as training does."""
    T, device, vocab = model.config.block_size, model.lm_head.weight.device, tokenizer.vocab
    if vocab.get('example_len'):
        T = vocab['example_len'] - 1
        windows = [(start, vocab.get('loss_from', 0)) for start in range(0, len(tokens), T + 1)]
    else:
        windows = split_windows(len(tokens), T, stride or T)
    nbytes = torch.tensor(tokenizer.byte_lengths(model.config.vocab_size), dtype=torch.float64, device=device)
    sums = torch.zeros(len(windows), 3, dtype=torch.float64, device=device)  # nats, tokens, bytes
    mine = _mine(len(windows))
    with _bar(len(mine), desc, progress) as bar:
        for i in range(0, len(mine), batch_size):
            rows = list(mine[i:i + batch_size])
            x, y = corpus.token_windows(tokens, torch.tensor([windows[r][0] for r in rows]), T, str(device))
            first = torch.tensor([windows[r][1] for r in rows], device=device)
            counted = torch.arange(T, device=device) >= first[:, None]  # (B, T)
            losses = token_losses(model, x, y.masked_fill(~counted, -1), ctx).double()
            sums[rows] = torch.stack([losses.sum(1), counted.sum(1).double(), (nbytes[y] * counted).sum(1)], 1)
            bar.update(len(rows))
    nats, count, n_bytes = _gathered(sums).sum(0).tolist()
    return {'loss': nats / count, 'ppl': math.exp(nats / count),
            'bpb': nats / math.log(2) / n_bytes if n_bytes else None, 'tokens': int(count)}


def split_loss(model, tokenizer, data_dir, split, ctx, batch_size=8, stride=0, progress=True):
    """stream_loss over the whole of data_dir/split.bin."""
    corpus.split_tokens(data_dir, split, model.config.block_size, tokenizer.vocab)  # there, and long enough
    tokens = np.memmap(os.path.join(data_dir, f'{split}.bin'), dtype=np.uint16, mode='r')
    return stream_loss(model, tokenizer, tokens, ctx, batch_size, stride, progress, f'{split} split')


# ----------------------------------------------------------------------------- WikiText
def wikitext_text(path=''):
    """The raw text of WikiText-2's test set: path (a text file) if given, else through datasets (downloaded
    once into its cache), its lines joined with blank lines as transformers' perplexity guide does."""
    if path:
        try:
            with open(path, encoding='utf-8') as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as e:
            fail(f"cannot read wikitext_path={path!r}: {oneline(e)}")
    try:
        from datasets import load_dataset
        return '\n\n'.join(load_dataset('Salesforce/wikitext', 'wikitext-2-raw-v1', split='test')['text'])
    except Exception as e:  # offline, or the hub unreachable: datasets raises many types
        fail(f"cannot load WikiText-2 through datasets ({oneline(e)}); pass a local copy of its raw test text "
             f"as --wikitext_path=FILE")


def wikitext_tokens(tokenizer, block_size, path=''):
    """WikiText-2's test text in the tokenizer's ids (an array), read once."""
    key = ('wikitext', path, json.dumps(tokenizer.vocab, sort_keys=True))
    if key not in _loaded:
        _loaded[key] = np.array(tokenizer.encode(wikitext_text(path), 'the WikiText text'), dtype=np.int64)
    if len(_loaded[key]) <= block_size:
        fail(f"the WikiText text is {len(_loaded[key])} tokens, not longer than the model's block_size of "
             f"{block_size}; give a longer text")
    return _loaded[key]


def wikitext(model, tokenizer, ctx, batch_size=8, stride=0, path='', progress=True):
    """Perplexity (and loss, bits per byte) on WikiText-2's raw test text, in the model's own tokenizer."""
    tokens = wikitext_tokens(tokenizer, model.config.block_size, path)
    return stream_loss(model, tokenizer, tokens, ctx, batch_size, stride, progress, 'wikitext')


def prepare(names, vocab, block_size, data_dir, setting='eval_tasks'):
    """train.py's eval_tasks (a comma list) -> [name, ...], with each task's data read and checked now, so
    that a problem (a file, a download, characters the vocabulary lacks) stops the run before it trains."""
    names = check_names(names, setting) if names else []
    tokenizer = vocabulary.Tokenizer(vocab) if names else None
    for name in names:
        if name == 'hellaswag':
            hellaswag_data(tokenizer, block_size)
        elif name == 'wikitext':
            wikitext_tokens(tokenizer, block_size)
        elif name == 'addition' and 'addition' not in vocab:
            fail(f"{setting}=addition is for a dataset made by data/addition/prepare.py; this one is not")
    return names


# ----------------------------------------------------------------------------- HellaSwag
def hellaswag_file(path=''):
    """path if given, else HellaSwag's validation jsonl, downloaded once into CACHE."""
    if path:
        if not os.path.isfile(path):
            fail(f"hellaswag_path={path!r} is not a file; give a local copy of hellaswag_val.jsonl, or '' to "
                 f"download it")
        return path
    cached = os.path.join(CACHE, 'hellaswag_val.jsonl')
    if not os.path.isfile(cached):
        tmp = f'{cached}.{os.getpid()}.tmp'  # each process its own: the rename makes the file whole at once
        try:
            os.makedirs(CACHE, exist_ok=True)
            with urllib.request.urlopen(HELLASWAG_URL, timeout=60) as r, open(tmp, 'wb') as f, \
                    _bar(int(r.headers.get('Content-Length') or 0), 'hellaswag download', True) as bar:
                while chunk := r.read(1 << 20):
                    bar.update(f.write(chunk))
            os.replace(tmp, cached)
        except (OSError, http.client.HTTPException) as e:  # a connection lost midway: IncompleteRead
            if os.path.exists(tmp):
                os.remove(tmp)
            fail(f"cannot download {HELLASWAG_URL} ({oneline(e)}); download it yourself and pass "
                 f"--hellaswag_path=FILE")
    return cached


def read_hellaswag(path):
    """A HellaSwag jsonl file -> [(ctx, [4 endings], label)]; a line that is not an example fails, named."""
    try:
        with open(path, encoding='utf-8') as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        fail(f"cannot read {path}: {oneline(e)}")
    examples = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            ex = json.loads(line)
            ctx, endings, label = ex['ctx'], ex['endings'], ex['label']
            label = int(label) if isinstance(label, str) and label.isdigit() else label  # datasets' copy: '2'
            if not (isinstance(ctx, str) and ctx and isinstance(endings, list) and len(endings) == 4
                    and all(isinstance(e, str) for e in endings) and type(label) is int and 0 <= label < 4):
                raise ValueError("'ctx' must be a text, 'endings' 4 texts and 'label' an integer 0 to 3")
        except (ValueError, KeyError, TypeError) as e:
            why = f"it has no {e}" if isinstance(e, KeyError) else oneline(e)
            fail(f"{path} line {i} is not a HellaSwag example ({why}); each line must be a JSON object "
                 f"with 'ctx', 'endings' and 'label'")
        examples.append((ctx, endings, label))
    if not examples:
        fail(f"{path} holds no HellaSwag examples")
    return examples


def hellaswag_tokens(tokenizer, examples, block_size, path='HellaSwag'):
    """Each example -> (context tokens, [the tokens of ' ' + ending, for each ending]). An example the
    vocabulary cannot write, or longer than the context, fails before any is evaluated."""
    out = []
    for i, (ctx, endings, _) in enumerate(examples):
        what = f"{path} example {i + 1}"
        tokenizer.encode(' '.join([ctx, *endings]), what)  # a character model names all it lacks at once
        context, ends = tokenizer.encode(ctx, what), [tokenizer.encode(' ' + e, what) for e in endings]
        longest = len(context) + max(map(len, ends)) - 1  # the last token is only a target
        if longest > block_size:
            fail(f"{what} needs a context of {longest} tokens, longer than the model's block_size of "
                 f"{block_size}; evaluate a model with a longer context")
        out.append((context, ends))
    return out


@torch.no_grad()
def hellaswag_scores(model, encoded, ctx, batch_size=8, progress=True):
    """The loss of each ending given its context -> (examples, 4, 2) float64: the total over the ending's
    tokens and its mean per token. Each example is 4 rows (context + ending), batch_size // 4 examples to a
    forward pass, padded at the end; the padding is not scored, and being causal the model cannot see it."""
    device = model.lm_head.weight.device
    per_batch = max(1, batch_size // 4)
    scores = torch.zeros(len(encoded), 4, 2, dtype=torch.float64, device=device)
    mine = _mine(len(encoded))
    with _bar(len(mine), 'hellaswag', progress) as bar:
        for i in range(0, len(mine), per_batch):
            batch = list(mine[i:i + per_batch])
            rows = [(encoded[b][0], end) for b in batch for end in encoded[b][1]]
            width = max(len(c) + len(e) for c, e in rows) - 1
            x = torch.zeros(len(rows), width, dtype=torch.long)
            y = torch.full((len(rows), width), -1, dtype=torch.long)
            for r, (c, e) in enumerate(rows):
                seq = torch.tensor(c + e)
                x[r, :len(seq) - 1] = seq[:-1]
                y[r, len(c) - 1:len(seq) - 1] = seq[len(c):]  # only the ending's tokens are targets
            losses = token_losses(model, x.to(device), y.to(device), ctx).double()
            total, count = losses.sum(1), (y != -1).sum(1).to(device)
            scores[batch] = torch.stack([total, total / count], 1).view(len(batch), 4, 2)
            bar.update(len(batch))
    return _gathered(scores)


_loaded = {}  # each task's data, read and tokenized once (train.py evaluates again and again)


def hellaswag_data(tokenizer, block_size, path=''):
    """HellaSwag's examples, tokenized and checked -> (encoded, labels)."""
    key = ('hellaswag', path, json.dumps(tokenizer.vocab, sort_keys=True), block_size)
    if key not in _loaded:
        file = hellaswag_file(path)
        examples = read_hellaswag(file)
        _loaded[key] = hellaswag_tokens(tokenizer, examples, block_size, file), [label for _, _, label in examples]
    return _loaded[key]


def hellaswag(model, tokenizer, ctx, batch_size=8, path='', progress=True):
    """Zero-shot HellaSwag -> {'acc', 'acc_norm', 'n'}: acc picks the ending of lowest total loss,
    acc_norm the lowest mean loss per token (build-nanogpt's convention; lm-evaluation-harness's acc_norm
    divides by the ending's bytes instead)."""
    encoded, labels = hellaswag_data(tokenizer, model.config.block_size, path)
    scores = hellaswag_scores(model, encoded, ctx, batch_size, progress)
    labels = torch.tensor(labels, device=scores.device)
    acc, acc_norm = ((scores[:, :, k].argmin(1) == labels).double().mean().item() for k in (0, 1))
    return {'acc': acc, 'acc_norm': acc_norm, 'n': len(labels)}


# ----------------------------------------------------------------------------- addition
@torch.no_grad()
def addition(model, tokenizer, data_dir, ctx, batch_size=8, progress=True):
    """Exact-match accuracy on the held-out problems (val.bin), greedy, batched -> {'acc', 'correct', 'n'}."""
    vocab = tokenizer.vocab
    if 'addition' not in vocab:
        fail("--task=addition is for a model trained on data/addition (its meta.json declares 'addition'); "
             "this one was not")
    corpus.split_tokens(data_dir, 'val', model.config.block_size, vocab)
    L, prompt = vocab['example_len'], vocab['loss_from'] + 1  # the prompt: 'a+b=', then the answer's digits
    problems = torch.from_numpy(np.fromfile(os.path.join(data_dir, 'val.bin'), dtype=np.uint16).astype(np.int64))
    problems = problems.view(-1, L)
    device = model.lm_head.weight.device
    right = torch.zeros(len(problems), dtype=torch.float64, device=device)
    mine = _mine(len(problems))
    with _bar(len(mine), 'addition', progress) as bar, ctx:
        for i in range(0, len(mine), batch_size):
            rows = list(mine[i:i + batch_size])
            batch = problems[rows].to(device)
            out = model.generate(batch[:, :prompt], L - prompt, temperature=0)
            right[rows] = (out[:, prompt:] == batch[:, prompt:]).all(1).double()
            bar.update(len(rows))
    correct = int(_gathered(right).sum().item())
    return {'acc': correct / len(problems), 'correct': correct, 'n': len(problems)}


def run(names, model, tokenizer, ctx, data_dir=None, batch_size=8, stride=0, hellaswag_path='', wikitext_path='',
        progress=True):
    """Run the named tasks -> {name: figures}. The model evaluates in eval mode, then returns to its mode.
    tokenizer: a vocabulary.Tokenizer, or the vocabulary to make one of (only when there are tasks)."""
    if not names:
        return {}
    tokenizer = tokenizer if isinstance(tokenizer, vocabulary.Tokenizer) else vocabulary.Tokenizer(tokenizer)
    training, out = model.training, {}
    model.eval()
    for name in names:
        if name == 'hellaswag':
            out[name] = hellaswag(model, tokenizer, ctx, batch_size, hellaswag_path, progress)
        elif name == 'addition':
            out[name] = addition(model, tokenizer, data_dir, ctx, batch_size, progress)
        elif name == 'wikitext':
            out[name] = wikitext(model, tokenizer, ctx, batch_size, stride, wikitext_path, progress)
        else:
            out[name] = split_loss(model, tokenizer, data_dir, name, ctx, batch_size, stride, progress)
    model.train(training)
    return out


def summary(name, figures):
    """One line of a task's figures, as eval.py prints them."""
    if name == 'addition':
        return f"addition: accuracy {figures['acc']:.4f} ({figures['correct']}/{figures['n']})"
    if name == 'hellaswag':
        return f"hellaswag: acc {figures['acc']:.4f}, acc_norm {figures['acc_norm']:.4f} ({figures['n']} examples)"
    bpb = f", bpb {figures['bpb']:.4f}" if figures['bpb'] is not None else ''
    return (f"{name}: loss {figures['loss']:.4f} nats/token, ppl {figures['ppl']:.3f}{bpb} "
            f"({figures['tokens']:,} tokens)")
