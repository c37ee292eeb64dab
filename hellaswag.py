"""HellaSwag (Zellers et al. 2019), zero-shot: a context and four endings, scored by the model's loss on each
ending; its validation set is downloaded once into CACHE, or read from a local copy."""
import http.client
import json
import os
import urllib.request

import torch

import scoring
from configurator import fail, oneline

HELLASWAG_URL = 'https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl'
CACHE = os.path.join(os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'nanogpt')
_loaded = {}  # examples read and tokenized once (train.py evaluates again and again)


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
                    scoring.bar(int(r.headers.get('Content-Length') or 0), 'hellaswag download', True) as bar:
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
    mine = scoring.mine(len(encoded))
    with scoring.bar(len(mine), 'hellaswag', progress) as bar:
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
            losses = scoring.token_losses(model, x.to(device), y.to(device), ctx).double()
            total, count = losses.sum(1), (y != -1).sum(1).to(device)
            scores[batch] = torch.stack([total, total / count], 1).view(len(batch), 4, 2)
            bar.update(len(batch))
    return scoring.gathered(scores)


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
