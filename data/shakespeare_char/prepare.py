"""Character-level dataset: every distinct character of a UTF-8 text is one token.

    python data/shakespeare_char/prepare.py                      # tiny Shakespeare, downloaded once
    python data/shakespeare_char/prepare.py --input=shakespeare.txt
    python data/shakespeare_char/prepare.py --input=pushkin.txt --out_dir=data/pushkin_char

Writes into --out_dir (default: this folder): input.txt (a copy of the text), train.bin and val.bin
(the first 90% and last 10% of the characters as uint16 ids) and meta.json ({"vocab_size": N, "chars":
[...]}: token i is chars[i], sorted by code point). Then `python train.py --dataset=<out_dir>` trains on
it. Running it again gives byte-identical files.
"""
import json
import os
import sys
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from configurator import configure, fail, make_dir  # noqa: E402

URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'


def write_atomic(path, data: bytes):
    """Write data to path.tmp, then rename it over path: path is never left half-written."""
    tmp = Path(str(path) + '.tmp')
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_meta(out_dir, meta):
    """The dataset's vocabulary as meta.json (JSON, not a pickle: reading it runs no code)."""
    write_atomic(os.path.join(out_dir, 'meta.json'), json.dumps(meta, ensure_ascii=False).encode('utf-8'))


def load_text(input_path, out_dir, url=URL):
    """The text to prepare: --input if given, else out_dir/input.txt, else downloaded from url.
    The text ends up in out_dir/input.txt, so a second run needs neither --input nor the network."""
    cached = os.path.join(out_dir, 'input.txt')
    if input_path:
        if not os.path.isfile(input_path):
            fail(f"--input={input_path}: " + ("is a directory; give one text file (a folder of documents: "
                 "data/openwebtext/prepare.py --input=...)" if os.path.isdir(input_path) else "no such file"))
        data = Path(input_path).read_bytes()
    elif os.path.isfile(cached):
        data = Path(cached).read_bytes()
    else:
        print(f"downloading {url}")
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                data = r.read()
        except OSError as e:  # URLError, HTTPError and timeouts are all OSErrors
            fail(f"could not download {url}: {getattr(e, 'reason', e)}; pass a local copy with --input=PATH")
    source = input_path or cached
    try:
        text = data.decode('utf-8')
    except UnicodeDecodeError as e:
        fail(f"{source} is not UTF-8 text ({e.reason} at byte {e.start})")
    if not text:
        fail(f"{source} is empty")
    make_dir(out_dir)  # only now: a failed load leaves no empty folder behind
    if not (os.path.isfile(cached) and Path(cached).read_bytes() == data):
        write_atomic(cached, data)
    return text


def prepare(text: str, out_dir: str) -> dict:
    """Write train.bin, val.bin and meta.json for text into out_dir; returns the counts."""
    codes = np.frombuffer(text.encode('utf-32-le'), dtype=np.uint32)  # one code point per character
    points, ids = np.unique(codes, return_inverse=True)  # points sorted, so the vocabulary is sorted(set(text))
    if len(points) > 2**16:
        raise ValueError(f"the text has {len(points):,} distinct characters; uint16 ids allow at most 65,536")
    n = int(0.9 * len(ids))
    if n == 0 or n == len(ids):
        raise ValueError(f"{len(ids)} characters are too few to split 90/10 into train and val")
    chars = [chr(p) for p in points]
    ids = ids.astype(np.uint16)
    os.makedirs(out_dir, exist_ok=True)
    write_atomic(os.path.join(out_dir, 'train.bin'), ids[:n].tobytes())
    write_atomic(os.path.join(out_dir, 'val.bin'), ids[n:].tobytes())
    write_meta(out_dir, {'vocab_size': len(chars), 'chars': chars})
    return {'vocab_size': len(chars), 'train': n, 'val': len(ids) - n}


def text_from_command_line(default_out_dir):
    """Read --input and --out_dir from the command line and load the text; returns (text, out_dir)."""
    for arg in sys.argv[1:]:
        if not arg.startswith('-'):
            fail(f"unexpected argument {arg!r}; did you mean --input={arg}?")
    cfg = {'input': '',  # a local text file to use instead of the download
           'out_dir': default_out_dir}
    configure(cfg)
    make_dir(cfg['out_dir'], create=False)  # a file in the way is found before any work
    text = load_text(cfg['input'], cfg['out_dir'])
    print(f"length of dataset in characters: {len(text):,}")
    return text, cfg['out_dir']


def main(prepare_fn, script_file):
    """A prepare script's command line: load the text, prepare it into out_dir, print the counts."""
    text, out_dir = text_from_command_line(os.path.dirname(os.path.abspath(script_file)))
    try:
        counts = prepare_fn(text, out_dir)
    except ValueError as e:
        fail(e)
    if 'vocab_size' in counts:
        print(f"vocab size: {counts['vocab_size']:,}")
    print(f"train has {counts['train']:,} tokens")
    print(f"val has {counts['val']:,} tokens")
    print(f"wrote train.bin, val.bin, meta.json to {out_dir}")


if __name__ == '__main__':
    main(prepare, __file__)

# tiny Shakespeare (1,115,394 characters):
# vocab size: 65
# train has 1,003,854 tokens
# val has 111,540 tokens
