"""export.py: Hugging Face transformers folders and weights-only files, read back by transformers,
train.py and sample.py. Offline: tiny models, and a tiny random GPT-2 from transformers.
Run: python -m pytest -q tests/test_export.py"""
import json
import os
import re

import numpy as np
import pytest
import torch

import checkpoint
from conftest import TINY, assert_one_line_error, needs_gpt2_bpe
from model import GPT

transformers = pytest.importorskip('transformers')


def write_bpe_dataset(folder):
    """Random GPT-2 token ids, with the meta.json that BPE prepare scripts write."""
    folder.mkdir(parents=True)
    ids = np.random.default_rng(0).integers(0, 50257, 2000).astype(np.uint16)
    ids[:1800].tofile(folder / 'train.bin')
    ids[1800:].tofile(folder / 'val.bin')
    (folder / 'meta.json').write_text(json.dumps({'vocab_size': 50257, 'encoding': 'gpt2'}))
    return folder


def ours(out_dir):
    ckpt = torch.load(os.path.join(out_dir, 'ckpt.pt'), weights_only=True)
    return checkpoint.build_model(ckpt, 'ckpt.pt').eval()


def max_logit_difference(model, hf_dir, vocab_size):
    """transformers' logits for the exported folder against ours, on random tokens, in float32."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    x = torch.randint(vocab_size, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert hf.config.vocab_size == vocab_size and hf(x).logits.shape == (2, 32, vocab_size)
        return (hf(x).logits - model(x, x)[0][..., :vocab_size]).abs().max().item()


@pytest.mark.parametrize('bias', [False, True])
def test_char_model_exports_round_trip(trained, tmp_path, script, bias):
    tiny_data, hf_dir = trained.data, tmp_path / 'hf'
    hf_dir.mkdir()
    (hf_dir / 'merges.txt').write_text('#version: 0.2\n')  # regression: an earlier BPE export's files stayed
    if bias:  # a run of its own: the shared one has no biases (train.py's default)
        out, last, eval_iters = tmp_path / 'out', 3, 2
        log = script('train.py', *TINY, f'--dataset={tiny_data}', f'--out_dir={out}', '--max_iters=3',
                     '--bias=True').out
    else:  # the shared run, read only
        out, last, eval_iters, log = trained.out, 60, 5, trained.stdout
    assert torch.load(out / 'ckpt.pt', weights_only=True)['model_args']['bias'] is bias
    p = script('export.py', f'--out_dir={out}', f'--hf_dir={hf_dir}', f'--weights={tmp_path / "small.pt"}')
    assert sorted(os.listdir(out)) == ['ckpt.pt']  # it writes nothing beside the checkpoint
    model, n = ours(out), 33
    assert max_logit_difference(model, hf_dir, n) < 1e-5
    assert re.search(r'its logits are within [\d.e-]+ of ours', p.out)
    meta = json.loads((hf_dir / 'meta.json').read_text())
    assert meta['vocab_size'] == n and meta['chars'] == json.loads((tiny_data / 'meta.json').read_text())['chars']
    assert {'config.json', 'model.safetensors', 'meta.json', 'tokenizer.json'} <= set(os.listdir(hf_dir))
    assert 'merges.txt' not in os.listdir(hf_dir)
    # regression: AutoTokenizer read a character export as an empty GPT-2 tokenizer
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    text = 'First Citizen:\nAll: speak.'
    ids = tok(text)['input_ids']
    assert ids == [meta['chars'].index(c) for c in text] and tok.decode(ids) == text
    # --init_from reads the export back: the same logits (zero biases where bias=False had none), and
    # train.py evaluates it to the same losses as the run that wrote it
    again = GPT.from_pretrained(str(hf_dir)).eval()
    x = torch.randint(n, (2, 32))
    torch.testing.assert_close(again(x, x)[0], model(x, x)[0], atol=1e-5, rtol=0)
    p = script('train.py', *TINY, f'--dataset={tiny_data}', f'--out_dir={tmp_path / "again"}', f'--init_from={hf_dir}',
               '--eval_only=True', f'--eval_iters={eval_iters}')
    assert re.search(r'^step 0: (.*)$', p.out, re.M)[1] == re.search(rf'^step {last}: (.*)$', log, re.M)[1]
    # the weights-only file: a third of ckpt.pt, and sample.py reads it as --init_from
    small = torch.load(tmp_path / 'small.pt', weights_only=True)
    assert 'optimizer' not in small and small['tokenizer']['chars'] == meta['chars']
    assert (tmp_path / 'small.pt').stat().st_size < 0.5 * (out / 'ckpt.pt').stat().st_size
    a = script('sample.py', f'--init_from={tmp_path / "small.pt"}', '--device=cpu', '--num_samples=1',
               '--max_new_tokens=20', '--start=All:')
    b = script('sample.py', f'--init_from={hf_dir}', '--device=cpu', '--num_samples=1', '--max_new_tokens=20',
               '--start=All:')
    c = script('sample.py', f'--out_dir={out}', '--device=cpu', '--num_samples=1', '--max_new_tokens=20',
               '--start=All:')
    assert a.out == c.out and b.out.startswith('All:') and len(b.out.split('\n---')[0]) == 24


@needs_gpt2_bpe
def test_bpe_models_export_with_gpt2_tokenizer_files(tmp_path, script):
    """A fine-tune of a tiny random local GPT-2 (vocabulary 50257, biases) and a BPE model from scratch
    (the padded 50304, no biases): both load in transformers with GPT-2's tokenizer."""
    import tiktoken
    data = write_bpe_dataset(tmp_path / 'bpe')
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64))
    gpt2.save_pretrained(tmp_path / 'tiny-gpt2')
    for init, name in ((str(tmp_path / 'tiny-gpt2'), 'finetuned'), ('scratch', 'scratch')):
        out, hf_dir = tmp_path / name, tmp_path / f'hf-{name}'
        script('train.py', *TINY, f'--dataset={data}', f'--out_dir={out}', f'--init_from={init}', '--max_iters=1')
        script('export.py', f'--out_dir={out}', f'--hf_dir={hf_dir}')
        model = ours(out)
        assert model.config.vocab_size == (50257 if name == 'finetuned' else 50304)
        assert max_logit_difference(model, hf_dir, 50257) < 1e-5  # the 47 padding rows are cut
        text = "Hello, world!  Über ✓ <|endoftext|> 12345\n"
        tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
        assert tok(text)['input_ids'] == tiktoken.get_encoding('gpt2').encode(text, allowed_special='all')
        assert tok.model_max_length == 32
    p = script('sample.py', f'--init_from={tmp_path / "hf-scratch"}', '--device=cpu', '--num_samples=1',
               '--max_new_tokens=5', '--start=Hello')
    assert p.out.startswith('Hello')


def test_offline_without_tiktoken_files_says_what_is_missing(tmp_path, script, monkeypatch):
    data = write_bpe_dataset(tmp_path / 'bpe')
    script('train.py', *TINY, f'--dataset={data}', f'--out_dir={tmp_path / "out"}', '--max_iters=1')
    monkeypatch.setenv('TIKTOKEN_CACHE_DIR', str(tmp_path / 'empty-cache'))  # and no network
    import tiktoken.load
    monkeypatch.setattr(tiktoken.load, 'read_file', lambda path: (_ for _ in ()).throw(ConnectionError('offline')))
    p = script('export.py', f'--out_dir={tmp_path / "out"}', f'--hf_dir={tmp_path / "hf"}', check=False)
    assert_one_line_error(p, f"the model is in {tmp_path / 'hf'}, but GPT-2's tokenizer files are not: tiktoken has "
                             f"no cached copy of https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
                             f"encoder.json and vocab.bpe (ConnectionError: offline); set TIKTOKEN_CACHE_DIR")


def test_export_mistakes_are_one_line(tmp_path, script):
    assert_one_line_error(script('export.py', f'--out_dir={tmp_path}', check=False), 'nothing to export to')
    p = script('export.py', f'--out_dir={tmp_path}', '--weights=model.bin', check=False)
    assert_one_line_error(p, '--weights=model.bin: give a file name ending in .pt')
    p = script('export.py', f'--out_dir={tmp_path / "nowhere"}', f'--hf_dir={tmp_path / "hf"}', check=False)
    assert_one_line_error(p, f"no checkpoint {tmp_path / 'nowhere' / 'ckpt.pt'}; train one first")
    # regression: this replaced the training checkpoint with a weights-only one, which cannot resume
    p = script('export.py', f'--out_dir={tmp_path}', f'--weights={tmp_path / "ckpt.pt"}', check=False)
    assert_one_line_error(p, f"--weights={tmp_path / 'ckpt.pt'} would overwrite the training checkpoint")


def test_an_export_fine_tuned_on_another_vocabulary_is_refused(tiny_data, char_dataset, tmp_path, script):
    """The checkpoint's vocabulary and the dataset's must agree, also when fine-tuning from an export."""
    script('train.py', *TINY, f'--dataset={tiny_data}', f'--out_dir={tmp_path / "out"}', '--max_iters=1')
    script('export.py', f'--out_dir={tmp_path / "out"}', f'--hf_dir={tmp_path / "hf"}')
    meta = json.loads((char_dataset / 'meta.json').read_text())
    meta['chars'][0], meta['chars'][1] = meta['chars'][1], meta['chars'][0]  # the same characters, other ids
    (char_dataset / 'meta.json').write_text(json.dumps(meta))
    p = script('train.py', *TINY, f'--dataset={char_dataset}', f'--out_dir={tmp_path / "ft"}',
               f'--init_from={tmp_path / "hf"}', check=False)
    assert_one_line_error(p, "the model's vocabulary (33 characters) is not the dataset's (33 characters in")
    # regression: on a folder without meta.json (GPT-2 BPE, as nanoGPT's) it went on to an IndexError
    os.remove(char_dataset / 'meta.json')
    p = script('train.py', *TINY, f'--dataset={char_dataset}', f'--out_dir={tmp_path / "ft2"}',
               f'--init_from={tmp_path / "hf"}', check=False)
    assert_one_line_error(p, "the model's vocabulary (33 characters) is not the dataset's (the gpt2 BPE in")


def test_bpe_training_needs_no_tokenizer_files(tmp_path, script, monkeypatch):
    """Regression: every evaluation built the tokenizer for the eval tasks, even without any, so a BPE run
    without tiktoken's files (offline) stopped at its first evaluation."""
    import tiktoken.load
    import tiktoken.registry
    data = write_bpe_dataset(tmp_path / 'bpe')
    monkeypatch.setenv('TIKTOKEN_CACHE_DIR', str(tmp_path / 'empty-cache'))  # and no network
    monkeypatch.setattr(tiktoken.registry, 'ENCODINGS', {})
    monkeypatch.setattr(tiktoken.load, 'read_file', lambda path: (_ for _ in ()).throw(ConnectionError('offline')))
    script('train.py', *TINY, f'--dataset={data}', f'--out_dir={tmp_path / "out"}', '--max_iters=2')
    assert (tmp_path / 'out' / 'ckpt.pt').exists()


def test_char_export_tokenizer_marks_unknown_characters(tiny_data, tmp_path, script):
    """Regression: the character tokenizer had no unknown token, so AutoTokenizer raised 'WordLevel error:
    Missing [UNK] token' on any text with a character outside the vocabulary. Now such a character is the
    unknown token U+FFFD, whose id (the vocabulary size) the model has no row for: the model refuses it."""
    out, hf_dir = tmp_path / 'out', tmp_path / 'hf'
    script('train.py', *TINY, f'--dataset={tiny_data}', f'--out_dir={out}', '--max_iters=1')
    script('export.py', f'--out_dir={out}', f'--hf_dir={hf_dir}')
    chars = json.loads((hf_dir / 'meta.json').read_text())['chars']
    n = len(chars)
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    text = 'All: é😀 [UNK] \ufffd!'  # '[UNK]' is five characters, one of them known
    ids = tok(text)['input_ids']
    assert ids == [chars.index(c) if c in chars else n for c in text]
    assert (tok.unk_token, tok.unk_token_id, len(tok)) == ('\ufffd', n, n + 1)
    assert tok.decode(ids) == ''.join(c if c in chars else '\ufffd' for c in text)
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    assert hf.config.vocab_size == n  # the logits stay the characters'
    with pytest.raises(IndexError):
        hf(torch.tensor([ids]))
