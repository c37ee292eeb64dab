"""data/*/prepare.py: counts, round trips, byte-identical reruns, local inputs and clear errors.
Run: python -m pytest -q tests/test_prepare.py"""
import hashlib
import json
import re

import numpy as np
import pytest
import torch

from conftest import REPO, SHARED, TEXT, TINY, assert_one_line_error, chars_of, needs_gpt2_bpe, run
from data.openwebtext import prepare as owt
from data.shakespeare import prepare as bpe
from data.shakespeare_char import prepare as char
from model import GPT, GPTConfig

# tiny Shakespeare: a local copy beside the repo, else where prepare.py leaves it (the README's first command)
SHAKESPEARE = next((p for p in (SHARED / 'data' / 'tinyshakespeare.txt',
                                REPO / 'data' / 'shakespeare_char' / 'input.txt') if p.is_file()), None)
needs_shakespeare = pytest.mark.skipif(SHAKESPEARE is None, reason="tiny Shakespeare not found: run  python "
                                       "data/shakespeare_char/prepare.py  once")

# made up for these tests; Cyrillic letters, ё, a dash and quotes, as in a Russian corpus
CYRILLIC = ("Зимним утром над рекою поднимался белый пар.\nСтарый мельник шёл к плотине, напевая про себя.\n"
            "— Куда спешишь, Иван Петрович? — окликнула его соседка.\nОн только махнул рукой: «Некогда!»\n\n") * 12


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def decode_char(folder):
    meta = json.loads((folder / 'meta.json').read_text(encoding='utf-8'))
    parts = [np.fromfile(folder / f'{s}.bin', dtype=np.uint16) for s in ('train', 'val')]
    return meta, [''.join(meta['chars'][int(i)] for i in ids) for ids in parts]


@needs_shakespeare
def test_char_tiny_shakespeare_counts(tmp_path):
    text = SHAKESPEARE.read_text(encoding='utf-8')
    assert char.prepare(text, str(tmp_path)) == {'vocab_size': 65, 'train': 1_003_854, 'val': 111_540}
    assert (tmp_path / 'train.bin').stat().st_size == 2 * 1_003_854  # uint16: two bytes a character
    meta, (train, val) = decode_char(tmp_path)
    assert meta['vocab_size'] == 65 and ''.join(meta['chars']) == ''.join(sorted(set(text)))
    assert train + val == text


def test_char_cli_roundtrip_and_rerun_identical(tmp_path, script, monkeypatch):
    src = tmp_path / 'small.txt'
    src.write_text(TEXT, encoding='utf-8')
    out = tmp_path / 'small_char'
    monkeypatch.chdir(tmp_path)
    p = script('data/shakespeare_char/prepare.py', f'--input={src}', f'--out_dir={out}')
    assert f"train has {int(0.9 * len(TEXT)):,} tokens" in p.out
    meta, (train, val) = decode_char(out)
    assert train + val == TEXT and len(train) == int(0.9 * len(TEXT))
    assert meta == {'vocab_size': len(set(TEXT)), 'chars': sorted(set(TEXT))}
    assert np.fromfile(out / 'train.bin', dtype=np.uint16).size * 2 == (out / 'train.bin').stat().st_size
    assert (out / 'input.txt').read_text(encoding='utf-8') == TEXT
    first = digests(out)
    # the second run finds input.txt in out_dir and needs neither --input nor the network
    script('data/shakespeare_char/prepare.py', f'--out_dir={out}')
    assert digests(out) == first and set(first) == {'input.txt', 'meta.json', 'train.bin', 'val.bin'}


def test_char_cyrillic_vocab_and_training(tmp_path, script):
    folder = tmp_path / 'data' / 'pushkin_char'
    counts = char.prepare(CYRILLIC, str(folder))
    meta, (train, val) = decode_char(folder)
    assert train + val == CYRILLIC
    assert meta['chars'] == sorted(set(CYRILLIC)) and counts['vocab_size'] == len(set(CYRILLIC))
    assert {'З', 'ё', '«', '—'} <= set(meta['chars'])
    assert '"З"' in (folder / 'meta.json').read_text(encoding='utf-8')  # UTF-8 JSON, readable as it is
    script('train.py', *TINY, f'--dataset={folder}', f'--out_dir={tmp_path / "out"}')
    assert (tmp_path / 'out' / 'ckpt.pt').exists()


def test_char_download_failure_names_the_fix(tmp_path):
    with pytest.raises(SystemExit, match=r"could not download http://127\.0\.0\.1:9/x\.txt: .*--input=PATH"):
        char.load_text('', str(tmp_path), url='http://127.0.0.1:9/x.txt')  # nothing listens on port 9
    assert not any(tmp_path.iterdir())


@needs_shakespeare
@needs_gpt2_bpe
def test_bpe_tiny_shakespeare_counts(tmp_path):
    text = SHAKESPEARE.read_text(encoding='utf-8')
    assert bpe.prepare(text, str(tmp_path)) == {'train': 301_966, 'val': 36_059}
    enc = bpe.gpt2_encoding()
    ids = [np.fromfile(tmp_path / f'{s}.bin', dtype=np.uint16).tolist() for s in ('train', 'val')]
    assert enc.decode(ids[0]) + enc.decode(ids[1]) == text
    assert json.loads((tmp_path / 'meta.json').read_text()) == {'vocab_size': 50257, 'encoding': 'gpt2'}


def make_docs(n=300):
    """Made-up documents of varied length, some non-ASCII, one empty."""
    docs = [f"Doc {i}: the quick brown fox {'jumps ' * (i % 7)}over the lazy dog.\nÜber ✓ {i * i}" for i in range(n)]
    docs[5] = ''
    return docs


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """Keep datasets' cache (in-process and in subprocesses) inside tmp_path."""
    import datasets.config
    cache = tmp_path / 'hf_cache'
    monkeypatch.setattr(datasets.config, 'HF_DATASETS_CACHE', cache)
    monkeypatch.setenv('HF_DATASETS_CACHE', str(cache))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    return cache


def split_docs(path, enc):
    """The documents of a .bin file: decode the ids between end-of-text tokens."""
    ids = np.fromfile(path, dtype=np.uint16)
    assert ids[-1] == enc.eot_token
    ends = np.flatnonzero(ids == enc.eot_token)
    return [enc.decode(ids[a + 1:b].tolist()) for a, b in zip(np.r_[-1, ends[:-1]], ends)]


@needs_gpt2_bpe
@pytest.mark.slow  # tokenizer worker processes (num_proc=2)
def test_openwebtext_local_txt_folder(tmp_path, hf_cache):
    docs = make_docs()
    src = tmp_path / 'docs'
    src.mkdir()
    for i, doc in enumerate(docs):
        (src / f'{i:04d}.txt').write_text(doc, encoding='utf-8')
    out = tmp_path / 'owt'
    p = run('data/openwebtext/prepare.py', f'--input={src}', f'--out_dir={out}', '--num_proc=2', cwd=tmp_path)
    enc = bpe.gpt2_encoding()
    train, val = split_docs(out / 'train.bin', enc), split_docs(out / 'val.bin', enc)
    assert len(val) == 1 and sorted(train + val) == sorted(docs)  # 0.05% of 300 rounds up to one document
    n_tokens = sum(len(enc.encode_ordinary(d)) + 1 for d in docs)  # + 1: the end-of-text token
    assert (out / 'train.bin').stat().st_size + (out / 'val.bin').stat().st_size == 2 * n_tokens
    assert f"val has {len(enc.encode_ordinary(val[0])) + 1:,} tokens" in p.stdout
    first = digests(out)
    run('data/openwebtext/prepare.py', f'--input={src}', f'--out_dir={out}', '--num_proc=1', cwd=tmp_path)
    assert digests(out) == first


@needs_gpt2_bpe
def test_openwebtext_other_local_formats(tmp_path, hf_cache):
    from datasets import Dataset, DatasetDict
    docs = make_docs(40)
    ds = Dataset.from_dict({'text': docs, 'id': list(range(40))})
    ds.to_parquet(str(tmp_path / 'docs.parquet'))
    (tmp_path / 'jsonl').mkdir()
    (tmp_path / 'jsonl' / 'a.jsonl').write_text(''.join(json.dumps({'text': d}) + '\n' for d in docs[:30]))
    (tmp_path / 'jsonl' / 'b.json').write_text(''.join(json.dumps({'text': d}) + '\n' for d in docs[30:]))
    ds.save_to_disk(str(tmp_path / 'saved'))
    splits = {}
    for name in ('docs.parquet', 'jsonl', 'saved'):
        loaded = owt.load_documents(str(tmp_path / name), num_proc=1)
        assert sorted([*loaded['train']['text'], *loaded['val']['text']]) == sorted(docs), name
        splits[name] = list(loaded['val']['text'])
    assert splits['docs.parquet'] == splits['jsonl'] == splits['saved']  # the fixed seed picks the same val
    # a small collection takes a larger share for val (0.05% of 40 documents is one)
    assert len(owt.load_documents(str(tmp_path / 'jsonl'), num_proc=1, val_fraction=0.25)['val']) == 10

    # a saved DatasetDict that has its own val split keeps it
    DatasetDict(train=ds.select(range(30)), val=ds.select(range(30, 40))).save_to_disk(str(tmp_path / 'dd'))
    loaded = owt.load_documents(str(tmp_path / 'dd'), num_proc=1)
    counts = owt.prepare(loaded, str(tmp_path / 'out'))
    enc = bpe.gpt2_encoding()
    assert split_docs(tmp_path / 'out' / 'val.bin', enc) == docs[30:]
    assert counts['val'] == sum(len(enc.encode_ordinary(d)) + 1 for d in docs[30:])


@pytest.mark.parametrize('name, content, message', [
    ('missing.jsonl', None, 'missing.jsonl: no such file or folder'),
    ('x.jsonl', '{"body": "no text here"}\n', "has no 'text' column (columns: body)"),
    ('one.jsonl', '{"text": "alone"}\n', 'has 1 document(s); train and val need at least one each'),
])
def test_openwebtext_bad_input(tmp_path, hf_cache, name, content, message):
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(SystemExit, match=re.escape(message)):
        owt.load_documents(str(tmp_path / name), num_proc=1)


@needs_gpt2_bpe
def test_openwebtext_hub_unreachable_names_the_fix(tmp_path):
    p = run('data/openwebtext/prepare.py', f'--out_dir={tmp_path / "out"}', cwd=tmp_path, check=False,
            env={'HF_HUB_OFFLINE': '1', 'HF_DATASETS_CACHE': str(tmp_path / 'hf_cache')})
    assert p.returncode == 2 and 'Traceback' not in p.stderr
    assert "could not load openwebtext from the Hugging Face hub" in p.stderr and '--input=PATH' in p.stderr
    assert not (tmp_path / 'out').exists()


def write(path, content):
    path.write_bytes(content.encode('utf-8') if isinstance(content, str) else content)
    return path


TOO_MANY_CHARS = ''.join(map(chr, range(0x10000, 0x10000 + 2**16 + 1)))  # code points past the surrogates


def in_tmp(script, tmp_path, monkeypatch, prepare, *args):
    """A prepare.py run in this process from tmp_path (openwebtext's with one tokenizer process: none is
    forked from this one) -> SimpleNamespace(code, out, err)."""
    monkeypatch.chdir(tmp_path)
    return script(prepare, *args, *(['--num_proc=1'] if 'openwebtext' in prepare else []), check=False)


@pytest.mark.parametrize('prepare, content, message', [
    ('data/shakespeare_char/prepare.py', None, 'no such file'),
    # regression: a folder given as --input was called 'no such file'
    ('data/shakespeare_char/prepare.py', 'a folder', 'is a directory'),
    ('data/shakespeare_char/prepare.py', '', 'is empty'),
    ('data/shakespeare_char/prepare.py', b'caf\xe9', 'is not UTF-8 text'),
    ('data/shakespeare_char/prepare.py', TOO_MANY_CHARS,
     'the text has 65,537 distinct characters; uint16 ids allow at most 65,536'),
    ('data/shakespeare/prepare.py', '', 'is empty'),
    pytest.param('data/openwebtext/prepare.py', '', 'is empty', marks=needs_gpt2_bpe),  # it loads the BPE first
], ids=['char-missing', 'char-folder', 'char-empty', 'char-not-utf8', 'char-vocab-too-large', 'bpe-empty', 'owt-empty'])
def test_bad_input_exits_with_one_line_and_writes_no_bin(tmp_path, hf_cache, script, monkeypatch, prepare, content,
                                                         message):
    src = tmp_path / 'in.txt'
    if content == 'a folder':
        src.mkdir()
    elif content is not None:
        write(src, content)
    out = tmp_path / 'out'
    p = in_tmp(script, tmp_path, monkeypatch, prepare, f'--input={src}', f'--out_dir={out}')
    assert p.code == 2
    assert p.err.strip().splitlines() == [p.err.strip()] and message in p.err, p.err
    assert not list(tmp_path.rglob('*.bin')) and not list(tmp_path.rglob('*.tmp'))


@pytest.mark.parametrize('prepare', ['data/shakespeare_char/prepare.py', 'data/shakespeare/prepare.py',
                                     pytest.param('data/openwebtext/prepare.py', marks=needs_gpt2_bpe)])
def test_bad_out_dir_is_one_line(tmp_path, hf_cache, script, monkeypatch, prepare):
    """Regression: --out_dir naming an existing file ended in a FileExistsError traceback from makedirs."""
    src, out = write(tmp_path / 'in.txt', TEXT), write(tmp_path / 'taken', 'not a folder')
    p = in_tmp(script, tmp_path, monkeypatch, prepare, f'--input={src}', f'--out_dir={out}')
    assert p.code == 2 and 'Traceback' not in p.err, p.err
    assert p.err.strip() == f"error: out_dir '{out}' is a file, not a folder; choose another with --out_dir="
    assert out.read_text() == 'not a folder'
    # regression: an out_dir that cannot be created (here: under a file) was a FileNotFoundError traceback
    if 'openwebtext' in prepare:  # it needs two documents to get that far: a folder of .txt files
        src = tmp_path / 'docs'
        src.mkdir()
        write(src / 'a.txt', TEXT), write(src / 'b.txt', TEXT)
    p = in_tmp(script, tmp_path, monkeypatch, prepare, f'--input={src}', f'--out_dir={out / "sub"}')
    assert p.code != 0 and 'Traceback' not in p.err, p.err
    assert p.err.strip().splitlines()[-1] == (f"error: cannot create out_dir '{out / 'sub'}' (Not a "
                                              f"directory); choose another with --out_dir="), p.err


@pytest.mark.parametrize('split', ['train', 'val'])
def test_a_bin_cut_to_an_odd_size_is_one_line_before_anything_is_built(char_dataset, tmp_path, script, split):
    """Regression: a train.bin or val.bin of an odd number of bytes (a partial copy) ended in numpy's memmap
    traceback, in train.py and eval.py, after the model was built, and train.py left an empty out_dir."""
    path = char_dataset / f'{split}.bin'
    path.write_bytes(path.read_bytes()[:-1])
    out = tmp_path / 'out'
    p = script('train.py', *TINY, f'--dataset={char_dataset}', f'--out_dir={out}', check=False)
    assert_one_line_error(p, f"{path} has {path.stat().st_size:,} bytes, an odd number")
    assert 'rerun its prepare.py' in p.err and 'vocab_size' not in p.out  # before the model is built
    assert not out.exists()
    chars = chars_of(char_dataset)
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=len(chars)))
    ckpt = tmp_path / 'model.pt'
    torch.save({'model': model.state_dict(), 'model_args': vars(model.config), 'tokenizer': {'chars': chars}}, ckpt)
    p = script('eval.py', f'--init_from={ckpt}', f'--dataset={char_dataset}', f'--task={split}', '--device=cpu',
               check=False)
    assert_one_line_error(p, f"{path} has {path.stat().st_size:,} bytes, an odd number")
