"""OpenWebText, or any collection of text documents, as GPT-2 BPE token ids for pretraining.

    python data/openwebtext/prepare.py --num_proc=8                     # the Hugging Face hub dataset
    python data/openwebtext/prepare.py --input=my_docs/ --out_dir=data/my_docs

--input takes a local collection instead of the hub: a folder of .txt files (one document per file),
.parquet/.json/.jsonl files or a folder of them (documents in a 'text' column), or a folder written
by Dataset.save_to_disk or DatasetDict.save_to_disk. 0.05% of the documents (--val_fraction; at least
one, seed 2357) become the val split; a saved DatasetDict that already has a 'val' split keeps it.

Writes into --out_dir (default: this folder) train.bin and val.bin: every document encoded with
encode_ordinary and followed by the end-of-text token (50256), back to back, as uint16; and meta.json,
which names the encoding. Tokenizing
runs in --num_proc processes and is cached by datasets, so a second run is quick and byte-identical.
"""
import os
import sys

import numpy as np
import tiktoken
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from configurator import configure, fail, make_dir, oneline  # noqa: E402
from data.shakespeare.prepare import gpt2_encoding  # noqa: E402
from data.shakespeare_char.prepare import write_meta  # noqa: E402

FORMATS = {'.txt': 'text', '.parquet': 'parquet', '.json': 'json', '.jsonl': 'json'}  # suffix -> datasets builder


def first_line(e):
    return oneline(e.__cause__ or e)  # datasets wraps parse errors in a DatasetGenerationError that hides the cause


def read_source(input_path, num_proc):
    """The documents as datasets returns them (a Dataset or a DatasetDict), from the hub or --input."""
    from datasets import load_dataset, load_from_disk  # slow import, only when needed
    if not input_path:
        try:
            return load_dataset('openwebtext', num_proc=num_proc)
        except Exception as e:  # offline, a hub outage and a too-old/new datasets all land here
            fail(f"could not load openwebtext from the Hugging Face hub ({first_line(e)}); "
                 f"pass a local copy with --input=PATH")
    if not os.path.exists(input_path):
        fail(f"--input={input_path}: no such file or folder")
    if any(os.path.isfile(os.path.join(input_path, f)) for f in ('dataset_dict.json', 'state.json')):
        return load_from_disk(input_path)
    if os.path.isdir(input_path):
        files = sorted(os.path.join(d, f) for d, _, names in os.walk(input_path) for f in names)
    else:
        files = [input_path]
    files = [f for f in files if os.path.splitext(f)[1] in FORMATS]
    kinds = {FORMATS[os.path.splitext(f)[1]] for f in files}
    if len(kinds) != 1:
        fail(f"--input={input_path}: expected .txt files, or .parquet/.json/.jsonl files, or a "
             f"save_to_disk folder; found {'a mix of formats' if kinds else 'none of these'}")
    if sum(os.path.getsize(f) for f in files) == 0:
        fail(f"--input={input_path} is empty")
    kind = kinds.pop()
    options = {'sample_by': 'document'} if kind == 'text' else {}  # a whole .txt file is one document
    try:
        return load_dataset(kind, data_files=files, **options)
    except Exception as e:  # malformed json, a broken parquet file, ...
        fail(f"could not read {input_path} ({first_line(e)})")


def load_documents(input_path, num_proc, val_fraction=0.0005):
    """A DatasetDict with 'train' and 'val' splits of documents in a 'text' column."""
    from datasets import Dataset, DatasetDict
    source = input_path or 'openwebtext'
    ds = read_source(input_path, num_proc)
    if isinstance(ds, Dataset):
        ds = DatasetDict(train=ds)
    if 'train' not in ds:
        fail(f"{source} has the splits {sorted(ds)}; expected a 'train' split")
    for name in ('train', 'val'):
        if name in ds and 'text' not in ds[name].column_names:
            fail(f"{source}: the {name} split has no 'text' column (columns: {', '.join(ds[name].column_names)})")
    if 'val' in ds:
        docs = DatasetDict(train=ds['train'], val=ds['val'])
    elif len(ds['train']) < 2:
        fail(f"{source} has {len(ds['train'])} document(s); train and val need at least one each")
    else:
        # nanoGPT's size and seed by default: the same documents land in val on every run and machine
        docs = ds['train'].train_test_split(test_size=val_fraction, seed=2357, shuffle=True)
        docs['val'] = docs.pop('test')
    for name, split in docs.items():
        if len(split) == 0:
            fail(f"{source}: the {name} split is empty")
    return docs


def encode_batch(batch):
    # made here rather than passed in: worker processes then need not pickle it (tiktoken caches it)
    enc = tiktoken.get_encoding('gpt2')
    ids = [np.array(enc.encode_ordinary(text or '') + [enc.eot_token], dtype=np.uint16) for text in batch['text']]
    return {'ids': ids, 'len': [len(x) for x in ids]}


def write_bin(split, path, total, docs_per_batch=8192):
    """Write the ids of every document, total tokens in all, into path (uint16) through a memmap, a
    batch at a time, so memory stays bounded however large the split is."""
    tmp = path + '.tmp'
    try:
        out = np.memmap(tmp, dtype=np.uint16, mode='w+', shape=(total,))
        pos = 0
        batches = split.with_format('numpy', columns=['ids']).iter(batch_size=docs_per_batch)
        for batch in tqdm(batches, total=-(-len(split) // docs_per_batch), desc=f"writing {os.path.basename(path)}"):
            ids = np.concatenate(batch['ids'])
            out[pos:pos + len(ids)] = ids
            pos += len(ids)
        assert pos == total, f"wrote {pos} tokens, expected {total}"
        out.flush()
        del out  # closes the map before the rename
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def prepare(docs, out_dir: str, num_proc: int = 1) -> dict:
    """Tokenize a DatasetDict with 'train' and 'val' text splits; writes {split}.bin; returns token counts."""
    tokenized, totals = {}, {}
    for name, split in docs.items():
        procs = min(num_proc, len(split))  # datasets warns about more processes than documents
        tokenized[name] = split.map(encode_batch, batched=True, remove_columns=split.column_names,
                                    num_proc=procs if procs > 1 else None, desc=f"tokenizing {name}")
        totals[name] = int(tokenized[name].with_format('numpy', columns=['len'])['len'][:].sum())
    if sum(totals.values()) == sum(len(split) for split in docs.values()):
        raise ValueError("every document is empty (only end-of-text tokens)")
    os.makedirs(out_dir, exist_ok=True)
    for name, split in tokenized.items():
        write_bin(split, os.path.join(out_dir, f'{name}.bin'), totals[name])
    write_meta(out_dir, {'vocab_size': 50257, 'encoding': 'gpt2'})
    return totals


if __name__ == '__main__':  # the guard is required: num_proc workers re-import this file on macOS/Windows
    for arg in sys.argv[1:]:
        if not arg.startswith('-'):
            fail(f"unexpected argument {arg!r}; did you mean --input={arg}?")
    cfg = {'input': '',     # a local collection of documents instead of the hub dataset
           'out_dir': os.path.dirname(os.path.abspath(__file__)),
           'num_proc': max(1, (os.cpu_count() or 2) // 2),  # tokenizer processes
           'val_fraction': 0.0005,  # of the documents, for val (at least one); a small collection wants more
           '_positive': ('num_proc', 'val_fraction')}
    configure(cfg)
    make_dir(cfg['out_dir'], create=False)  # a file in the way is found before hours of work
    enc = gpt2_encoding()  # without tiktoken's files, fail here, before any work
    assert enc.max_token_value < 2**16, "GPT-2 ids must fit in uint16"
    if cfg['val_fraction'] >= 1:
        fail(f"--val_fraction={cfg['val_fraction']}: must be below 1, so that train keeps documents")
    docs = load_documents(cfg['input'], cfg['num_proc'], cfg['val_fraction'])
    make_dir(cfg['out_dir'])  # only now: a failed load leaves no empty folder behind
    print(f"documents: train {len(docs['train']):,}, val {len(docs['val']):,}")
    try:
        counts = prepare(docs, cfg['out_dir'], cfg['num_proc'])
    except ValueError as e:
        fail(e)
    for name, n in counts.items():
        print(f"{name} has {n:,} tokens")
    print(f"wrote train.bin, val.bin, meta.json to {cfg['out_dir']}")

# OpenWebText (8,013,769 documents), as reported by nanoGPT; not run here (no network):
# train.bin is ~17GB, val.bin ~8.5MB
# train has ~9B tokens (9,035,582,198)
# val has ~4M tokens (4,434,897)
# To read the files later: np.memmap('train.bin', dtype=np.uint16, mode='r')
