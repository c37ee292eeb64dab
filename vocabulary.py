"""The vocabulary: what a model's token ids stand for, as a dataset's meta.json, a checkpoint and an export
hold it, and the Tokenizer that turns text into those ids and back. Mistakes go out through
configurator.fail, as one line."""
import json
import os
import pickle
import sys

import tiktoken

from configurator import fail, oneline

GPT2_VOCAB = 50257  # GPT-2's BPE tokens; its models pad the embedding to 50304

GPT2 = {'encoding': 'gpt2'}  # the tokenizer of GPT-2's weights and of the BPE datasets
# what a vocabulary may declare besides its tokens: fixed-length examples (example_len tokens, whose targets
# count from position loss_from on), what the examples are, for sample.py and eval.py; special tokens after
# the others (chat's <|im_start|> and <|im_end|>), and 'chat': a dataset of conversations (chat.py)
EXAMPLES = ('example_len', 'loss_from', 'addition', 'special', 'chat')


def vocab_file(folder):
    """The file read_vocab reads in folder: meta.json, else a legacy meta.pkl; meta.json if neither is there.
    A file is itself."""
    if os.path.isfile(folder):
        return folder
    legacy = os.path.join(folder, 'meta.pkl')
    return legacy if os.path.isfile(legacy) and not os.path.isfile(os.path.join(folder, 'meta.json')) else \
        os.path.join(folder, 'meta.json')


def read_vocab(folder):
    """The vocabulary of a dataset folder (or of an export, or a meta.json/meta.pkl file) as checkpoints store it: {'chars': [...]}
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
            special = vocab.get('special', [])
            if not (isinstance(special, list) and all(isinstance(t, str) and len(t) > 1 for t in special)
                    and len(set(special)) == len(special)):
                raise ValueError("'special' must list distinct tokens of more than one character")
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


def vocab_size_of(vocab):
    """The number of tokens of a character or image vocabulary, special tokens included (None for a BPE:
    the model decides)."""
    if 'chars' in vocab:
        return len(vocab['chars']) + len(vocab.get('special', []))
    return len(vocab['image']['palette']) + 1 if 'image' in vocab else None  # the colours, then a start token


def describe(vocab):
    if 'image' in vocab:
        return f"{len(vocab['image']['palette'])} colours"
    text = f"{len(vocab['chars'])} characters" if 'chars' in vocab else f"the {vocab['encoding']} BPE"
    return text + (f" and {len(vocab['special'])} special tokens" if vocab.get('special') else '')


def check_vocab(vocab_size, vocab, where, data_vocab=None):
    """The vocabulary a model of vocab_size tokens reads and writes: vocab (its checkpoint's or export's),
    else data_vocab (its dataset's), else GPT-2 BPE. Fails in one line if they do not fit: sizes, or (with
    both) a model and a dataset of different vocabularies. where names the vocabulary file."""
    if vocab and data_vocab and vocab != data_vocab:
        extra = sorted(set(data_vocab.get('chars', [])) - set(vocab.get('chars', []))) if 'chars' in vocab else []
        fail(f"the model's vocabulary ({describe(vocab)}) is not the dataset's ({describe(data_vocab)} in {where}"
             + (f", with {' '.join(map(repr, extra[:10]))} that the model lacks" if extra else "")
             + "): pick the dataset the model was trained on, or train a new model on this one")
    vocab = vocab or data_vocab
    n = (vocab and vocab_size_of(vocab)) or GPT2_VOCAB + len((vocab or {}).get('special', []))
    if vocab and 'encoding' not in vocab and n != vocab_size:
        fail(f"{where} has {n} tokens but the model has {vocab_size}: the model was not trained on this "
             f"dataset; pick the one it was trained on")
    if not (vocab and 'encoding' not in vocab) and vocab_size < n:
        fail(f"the model has {vocab_size} tokens, fewer than GPT-2's {n}, so it needs its dataset's meta.json, "
             f"which is not at {where}: name it with --vocab_path=FILE (sample.py, eval.py, export.py), or "
             f"prepare the dataset it was trained on")
    return vocab or GPT2


class Tokenizer:
    """Text to token ids and back, for a vocabulary as check_vocab returns it."""

    def __init__(self, vocab):
        self.vocab = vocab
        if 'image' in vocab:
            self.start = len(vocab['image']['palette'])  # the token each image begins with
            return
        self.special = vocab.get('special', [])  # ids after the other tokens', in this order
        if 'chars' in vocab:
            self.chars = vocab['chars'] + self.special
            self.stoi = {c: i for i, c in enumerate(vocab['chars'])}  # text never holds a special token
            return
        try:
            enc = tiktoken.get_encoding(vocab['encoding'])
        except Exception as e:  # offline without a cache it fails with whatever the download raised
            fail(f"cannot load tiktoken's {vocab['encoding']} encoding ({oneline(e)}); offline, point "
                 f"TIKTOKEN_CACHE_DIR at a folder holding its cached files")
        # tiktoken's own way to extend an encoding: the same merges, more special tokens (ids 50257, ...)
        self.enc = enc if not self.special else tiktoken.Encoding(
            name=f"{enc.name}_chat", pat_str=enc._pat_str, mergeable_ranks=enc._mergeable_ranks,
            special_tokens={**enc._special_tokens, **{t: enc.n_vocab + i for i, t in enumerate(self.special)}})

    def special_id(self, token):
        return (len(self.vocab['chars']) if 'chars' in self.vocab else GPT2_VOCAB) + self.special.index(token)

    def encode_text(self, text):
        """Text as ordinary tokens only: a special token's name in it (a user who types <|im_end|>) is text.
        None if a character model lacks some of its characters."""
        if 'chars' not in self.vocab:
            return self.enc.encode_ordinary(text)
        ids = [self.stoi.get(c) for c in text]
        return None if None in ids else ids

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
            return [len(c.encode()) for c in self.vocab['chars']] + [0] * (n - len(self.vocab['chars']))
        special = {self.enc.encode_single_token(t) for t in self.enc.special_tokens_set}
        return [0 if i in special or i >= self.enc.n_vocab else len(self.enc.decode_single_token_bytes(i))
                for i in range(n)]

    def decode(self, ids):
        return b''.join(map(self.token_bytes, ids)).decode('utf-8', errors='replace')
