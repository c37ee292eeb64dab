"""Tiny Shakespeare with the GPT-2 BPE tokenizer (tiktoken), for finetuning GPT-2 checkpoints.

    python data/shakespeare/prepare.py                          # downloads input.txt once
    python data/shakespeare/prepare.py --input=shakespeare.txt  # offline, from a local copy

Writes into --out_dir (default: this folder): input.txt (a copy of the text), train.bin and val.bin
(the first 90% and last 10% of the characters, each encoded as uint16 GPT-2 token ids), and meta.json
naming the encoding ({"vocab_size": 50257, "encoding": "gpt2"}). Running it again gives byte-identical files.
Offline, tiktoken needs TIKTOKEN_CACHE_DIR pointing at a folder that holds its gpt2 files.
"""
import os
import sys

import numpy as np
import tiktoken

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
# the same text, fetched and cached the same way as for the character-level dataset
from configurator import fail, oneline  # noqa: E402
from data.shakespeare_char.prepare import main, write_atomic, write_meta  # noqa: E402


def gpt2_encoding():
    try:
        return tiktoken.get_encoding('gpt2')
    except Exception as e:  # tiktoken downloads its files on first use; offline that fails in several ways
        fail(f"could not load tiktoken's gpt2 encoding ({oneline(e)}); offline, set TIKTOKEN_CACHE_DIR to a "
             f"folder holding its files")


def prepare(text: str, out_dir: str) -> dict:
    """Write train.bin and val.bin for text into out_dir; returns the token counts."""
    enc = gpt2_encoding()
    assert enc.max_token_value < 2**16, "GPT-2 ids must fit in uint16"
    n = int(0.9 * len(text))  # split by characters, as for shakespeare_char
    train_ids = np.array(enc.encode_ordinary(text[:n]), dtype=np.uint16)
    val_ids = np.array(enc.encode_ordinary(text[n:]), dtype=np.uint16)
    if not len(train_ids) or not len(val_ids):
        raise ValueError(f"{len(text)} characters are too few to split 90/10 into train and val")
    os.makedirs(out_dir, exist_ok=True)
    write_atomic(os.path.join(out_dir, 'train.bin'), train_ids.tobytes())
    write_atomic(os.path.join(out_dir, 'val.bin'), val_ids.tobytes())
    write_meta(out_dir, {'vocab_size': enc.n_vocab, 'encoding': 'gpt2'})
    return {'train': len(train_ids), 'val': len(val_ids)}


if __name__ == '__main__':
    main(prepare, __file__)

# tiny Shakespeare (1,115,394 characters):
# train has 301,966 tokens
# val has 36,059 tokens
