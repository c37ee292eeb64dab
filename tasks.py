"""Evaluation tasks, run by eval.py and, with eval_tasks, by train.py at each evaluation. Each returns a dict
of figures; under torchrun the processes share the work out and every one of them gets the same figures.

    val, train  the loss over the whole split, each token predicted once: nats per token, perplexity, and
                bits per byte (which compares models of different tokenizers)
    hellaswag   zero-shot accuracy on HellaSwag's validation set: acc (lowest total loss of the ending)
                and acc_norm (lowest mean loss per token of the ending)
    wikitext    perplexity on WikiText-2's raw test text, in the model's own tokenizer
    addition    exact-match accuracy of a model trained on data/addition on its held-out problems (val.bin)
    chat        a chat model on its val conversations: the loss and bits per byte of the assistant's tokens,
                and of its greedy first answers, the share that stop with <|im_end|> and that match exactly
"""
import json
import math
import os

import numpy as np
import torch

import chat
import corpus
import hellaswag
import scoring
import vocabulary
from configurator import fail, oneline

NAMES = ('val', 'train', 'hellaswag', 'wikitext', 'addition', 'chat')
CHAT_ANSWERS = 200  # the chat task's answers drawn


def check_names(names, setting='task', known=NAMES):
    """A comma list of task names -> [name, ...]; an unknown one fails."""
    names = [n.strip() for n in names.split(',') if n.strip()]
    if not names or set(names) - set(known):
        fail(f"{setting}={','.join(names)!r}: the tasks are {', '.join(known)} (a comma list runs several)")
    return names


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
    mine = scoring.mine(len(windows))
    with scoring.bar(len(mine), desc, progress) as bar:
        for i in range(0, len(mine), batch_size):
            rows = list(mine[i:i + batch_size])
            x, y = corpus.token_windows(tokens, torch.tensor([windows[r][0] for r in rows]), T, str(device))
            first = torch.tensor([windows[r][1] for r in rows], device=device)
            counted = torch.arange(T, device=device) >= first[:, None]  # (B, T)
            losses = scoring.token_losses(model, x, y.masked_fill(~counted, -1), ctx).double()
            sums[rows] = torch.stack([losses.sum(1), counted.sum(1).double(), (nbytes[y] * counted).sum(1)], 1)
            bar.update(len(rows))
    nats, count, n_bytes = scoring.gathered(sums).sum(0).tolist()
    return {'loss': nats / count, 'ppl': math.exp(nats / count),
            'bpb': nats / math.log(2) / n_bytes if n_bytes else None, 'tokens': int(count)}


def split_loss(model, tokenizer, data_dir, split, ctx, batch_size=8, stride=0, progress=True):
    """stream_loss over the whole of data_dir/split.bin."""
    corpus.split_tokens(data_dir, split, model.config.block_size, tokenizer.vocab)  # there, and long enough
    tokens = np.memmap(os.path.join(data_dir, f'{split}.bin'), dtype=np.uint16, mode='r')
    return stream_loss(model, tokenizer, tokens, ctx, batch_size, stride, progress, f'{split} split')


# ----------------------------------------------------------------------------- WikiText
_loaded = {}  # each task's data, read and tokenized once (train.py evaluates again and again)


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
            hellaswag.hellaswag_data(tokenizer, block_size)
        elif name == 'wikitext':
            wikitext_tokens(tokenizer, block_size)
        elif name == 'chat' and not vocab.get('chat'):
            fail(f"{setting}=chat is for a dataset made by data/chat/prepare.py; this one is not")
        elif name == 'addition' and 'addition' not in vocab:
            fail(f"{setting}=addition is for a dataset made by data/addition/prepare.py; this one is not")
    return names


# ----------------------------------------------------------------------------- chat
@torch.no_grad()
def chat_task(model, tokenizer, data_dir, ctx, batch_size=8, progress=True, answers=CHAT_ANSWERS):
    """A chat model on its dataset's val conversations -> {'loss', 'ppl', 'bpb', 'tokens'} over the trained
    (assistant) tokens, each conversation in a window of its own from its start (a longer one cut at block_size),
    and, over the first `answers` conversations, the model's greedy first answer: 'stopped', the share that end
    with <|im_end|> within the room the context leaves, and 'exact', the share equal to the conversation's."""
    vocab, T, device = tokenizer.vocab, model.config.block_size, model.lm_head.weight.device
    if not vocab.get('chat'):
        fail("--task=chat is for a chat model and its dataset (data/chat/prepare.py); this one is not")
    n = corpus.split_tokens(data_dir, 'val', T, vocab)
    tokens = np.memmap(os.path.join(data_dir, 'val.bin'), dtype=np.uint16, mode='r')
    mask, starts = corpus.trained_mask(data_dir, 'val', vocab), corpus.example_starts(data_dir, 'val', n, vocab)
    lengths = corpus.lengths(starts, n)
    nbytes = torch.tensor(tokenizer.byte_lengths(model.config.vocab_size), dtype=torch.float64, device=device)
    answers = min(answers, len(starts))
    sums = torch.zeros(len(starts) + answers, 3, dtype=torch.float64, device=device)  # nats, tokens, bytes
    end = tokenizer.special_id(chat.IM_END)
    mine = scoring.mine(len(starts))
    with scoring.bar(len(mine) + answers, 'chat', progress) as bar:
        for i in range(0, len(mine), batch_size):
            rows = list(mine[i:i + batch_size])
            x, y = corpus.token_windows(tokens, torch.from_numpy(starts[rows]), T, str(device), vocab, mask)
            own = torch.arange(T, device=device) < torch.tensor(lengths[rows] - 1, device=device)[:, None]
            y = y.masked_fill(~own, -1)  # the next conversation's targets are its own window's
            losses = scoring.token_losses(model, x, y, ctx).double()
            counted = y >= 0
            sums[rows, :3] = torch.stack([losses.sum(1), counted.sum(1).double(),
                                          (nbytes[y.clamp(min=0)] * counted).sum(1)], 1)
            bar.update(len(rows))
        for i in scoring.mine(answers):  # the first answer: the tokens up to its first trained one are the prompt
            conv = np.asarray(tokens[starts[i]:starts[i] + lengths[i]], dtype=np.int64)
            first = int(np.argmax(mask[starts[i]:starts[i] + lengths[i]]))
            reference = conv[first:first + int(np.argmax(conv[first:] == end)) + 1].tolist()
            out = []
            if first < T:
                with ctx:
                    for token in model.generate_stream(torch.from_numpy(conv[None, :first]).to(device), T - first, 0):
                        out.append(token.item())
                        if out[-1] == end:
                            break
            sums[len(starts) + i, :2] = torch.tensor([float(end in out), float(out == reference)])
            bar.update(1)
    totals = scoring.gathered(sums)
    nats, count, n_bytes = totals[:len(starts)].sum(0).tolist()
    stopped, exact = (totals[len(starts):, :2].sum(0) / max(answers, 1)).tolist()
    return {'loss': nats / count, 'ppl': math.exp(nats / count), 'bpb': nats / math.log(2) / n_bytes if n_bytes else None,
            'tokens': int(count), 'stopped': stopped, 'exact': exact, 'answers': answers}


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
    mine = scoring.mine(len(problems))
    with scoring.bar(len(mine), 'addition', progress) as bar, ctx:
        for i in range(0, len(mine), batch_size):
            rows = list(mine[i:i + batch_size])
            batch = problems[rows].to(device)
            out = model.generate(batch[:, :prompt], L - prompt, temperature=0)
            right[rows] = (out[:, prompt:] == batch[:, prompt:]).all(1).double()
            bar.update(len(rows))
    correct = int(scoring.gathered(right).sum().item())
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
            out[name] = hellaswag.hellaswag(model, tokenizer, ctx, batch_size, hellaswag_path, progress)
        elif name == 'chat':
            out[name] = chat_task(model, tokenizer, data_dir, ctx, batch_size, progress)
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
    if name == 'chat':
        return (f"chat: loss {figures['loss']:.4f} nats/token on {figures['tokens']:,} answer tokens, bpb "
                f"{figures['bpb']:.4f}; of {figures['answers']} answers {figures['stopped']:.1%} stop, "
                f"{figures['exact']:.1%} exact")
    if name == 'hellaswag':
        return f"hellaswag: acc {figures['acc']:.4f}, acc_norm {figures['acc_norm']:.4f} ({figures['n']} examples)"
    bpb = f", bpb {figures['bpb']:.4f}" if figures['bpb'] is not None else ''
    return (f"{name}: loss {figures['loss']:.4f} nats/token, ppl {figures['ppl']:.3f}{bpb} "
            f"({figures['tokens']:,} tokens)")
