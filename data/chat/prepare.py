"""Conversations for the chat stage (supervised finetuning), rendered by chat.py: tokens, the loss mask and
where each conversation starts.

    python data/chat/prepare.py                                      # HuggingFaceTB/smol-smoltalk, GPT-2 BPE
    python data/chat/prepare.py --input=talk.jsonl --out_dir=data/talk
    python data/chat/prepare.py --input=talk.jsonl --vocab=data/shakespeare_char/meta.json   # characters

The input holds one conversation per line, {"messages": [{"role": "system"|"user"|"assistant", "content":
"..."}, ...]}: a local JSONL file (--input), else a Hugging Face dataset whose rows hold "messages" (--dataset,
its --split). --vocab is 'gpt2' (the BPE of GPT-2's weights) or a character model's meta.json (or the folder
holding it): its characters, then <|im_start|> and <|im_end|>. The last --val_fraction of the conversations
become val. Written to out_dir: {split}.bin (uint16 token ids), {split}_mask.bin (uint8, 1 where the token is
trained), {split}_starts.bin (int64, where each conversation begins) and meta.json ("chat": "chatml"). A bad
row stops it with its row number and what is wrong, unless --skip_bad=True, which counts and skips it.
"""
import os
import sys

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
import chat  # noqa: E402
import vocabulary  # noqa: E402
from configurator import configure, fail, make_dir, oneline  # noqa: E402
from data.shakespeare_char.prepare import write_atomic, write_meta  # noqa: E402


def rows(input_path, dataset, split, limit):
    """(row number, row or None, problem or None) of a JSONL file (numbered from line 1) or a dataset."""
    if input_path:
        try:
            with open(input_path, encoding='utf-8') as f:
                lines = [line for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            fail(f"cannot read --input={input_path}: {oneline(e)}")
        for n, line in enumerate(lines[:limit or None], 1):
            yield n, *chat.parse(line)
        return
    import datasets  # only a download needs it
    try:
        data = datasets.load_dataset(dataset, split=split)
    except Exception as e:
        fail(f"cannot load the dataset {dataset!r} (split {split!r}): {oneline(e)}; or give --input=FILE.jsonl")
    for n, row in enumerate(data.select(range(min(limit, len(data)))) if limit else data):
        yield n, row, chat.problem(row)


def prepare(input_path='', dataset='HuggingFaceTB/smol-smoltalk', split='train', vocab='gpt2', val_fraction=0.05,
            max_conversations=0, skip_bad=False, out_dir='.'):
    if isinstance(vocab, dict):  # a vocabulary itself (data/spelling)
        base = vocab
    elif vocab == 'gpt2':
        base = vocabulary.GPT2
    else:
        base = vocabulary.read_vocab(vocab)
        if not base or 'chars' not in base:
            fail(f"--vocab={vocab}: give 'gpt2' or a character dataset's meta.json (or its folder)")
        base = {'chars': base['chars']}
    meta = chat.with_chat(base)
    tokenizer = vocabulary.Tokenizer(meta)
    convs, bad, stop = [], 0, None
    source = input_path or f"{dataset} ({split})"
    with tqdm(rows(input_path, dataset, split, max_conversations), desc='conversations', unit='',
              dynamic_ncols=True) as bar:
        for n, row, why in bar:
            if why is None:
                try:
                    convs.append(chat.render(tokenizer, row['messages']))
                except ValueError as e:
                    why = str(e)
            if why is not None and not skip_bad:
                stop = f"{source} row {n}: {why}; fix or remove it, or rerun with --skip_bad=True to skip such rows"
                break
            bad += why is not None
    if stop:  # after the bar is closed, so that the error is the last line
        fail(stop)
    n_val = int(round(val_fraction * len(convs)))
    if not 0 < n_val < len(convs):
        fail(f"{len(convs)} conversations (val_fraction={val_fraction}) leave no val or no training conversation; "
             f"give more conversations")
    make_dir(out_dir)
    for name, part in (('train', convs[:-n_val]), ('val', convs[-n_val:])):
        lengths = np.array([len(ids) for ids, _ in part])
        write_atomic(os.path.join(out_dir, f'{name}.bin'),
                     np.concatenate([ids for ids, _ in part]).astype(np.uint16).tobytes())
        write_atomic(os.path.join(out_dir, f'{name}_mask.bin'),
                     np.concatenate([mask for _, mask in part]).astype(np.uint8).tobytes())
        write_atomic(os.path.join(out_dir, f'{name}_starts.bin'),
                     np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64).tobytes())
    meta = {'vocab_size': vocabulary.vocab_size_of(meta) or vocabulary.GPT2_VOCAB + len(chat.SPECIAL), **meta}
    write_meta(out_dir, meta)
    tokens = sum(len(ids) for ids, _ in convs)
    trained = sum(sum(mask) for _, mask in convs)
    print(f"{len(convs) - n_val:,} training and {n_val:,} val conversations, {tokens:,} tokens ({trained:,} "
          f"trained, {trained / tokens:.0%}), the longest {max(len(ids) for ids, _ in convs):,}"
          + (f"; {bad} bad rows skipped" if bad else "") + f", in {out_dir}")
    val_tokens = sum(len(ids) for ids, _ in convs[-n_val:])
    return {'vocab_size': meta['vocab_size'], 'train': tokens - val_tokens, 'val': val_tokens}


if __name__ == '__main__':
    cfg = {'input': '',                  # a local JSONL file of conversations; '' loads --dataset
           'dataset': 'HuggingFaceTB/smol-smoltalk',  # a Hugging Face dataset whose rows hold "messages"
           'split': 'train',             # its split to read
           'vocab': 'gpt2',              # 'gpt2' or a character dataset's meta.json (or its folder)
           'val_fraction': 0.05,         # the last conversations, held out as val
           'max_conversations': 0,       # read at most this many rows; 0: all
           'skip_bad': False,            # skip (and count) malformed rows instead of stopping at the first
           'out_dir': os.path.dirname(os.path.abspath(__file__))}
    configure(cfg)
    cfg['input_path'] = cfg.pop('input')
    prepare(**cfg)
