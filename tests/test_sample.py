"""sample.py end to end: char-level and GPT-2 BPE checkpoints, streaming, stop strings, errors.

    python -m pytest -q tests/test_sample.py

Most runs execute sample.py inside the test process with runpy (argv set as on the command line), which
saves the ~5 s start of a subprocess; two subprocess runs check what only a real process shows (one-line
error, exit code, same text across processes), and one more samples from a model trained by train.py.
"""
import os
import pickle
import runpy
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import (REPO, TINY, assert_one_line_error, chars_of, needs_gpt2_bpe, overwrite_largest_tensor, run,
                      write_char_dataset)
from model import GPT, GPTConfig

SEP = '\n---------------\n'
EOT = 50256  # GPT-2's <|endoftext|>
CJK_PIECES = [17312, 105, 45739, 252]  # GPT-2 tokens b'\xe6\x9c' b'\xac' (本), b'\xe8\xaa' b'\x9e' (語)


def save_checkpoint(out_dir, model, dataset, tokenizer=None):
    """The part of train.py's ckpt.pt that sample.py reads; without a tokenizer, as checkpoints were
    before they held one (the dataset's meta.json, or meta.pkl, is then read)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({'model': model.state_dict(), 'model_args': vars(model.config), 'iter_num': 0,
                'best_val_loss': 9.9, 'config': {'dataset': str(dataset)},
                **({'tokenizer': tokenizer} if tokenizer else {})}, out_dir / 'ckpt.pt')
    return out_dir


@pytest.fixture
def char_ckpt(tmp_path, char_dataset):
    """(out_dir, model, meta) of a random tiny character-level model."""
    chars = chars_of(char_dataset)
    meta = {'vocab_size': len(chars), 'stoi': {c: i for i, c in enumerate(chars)}, 'itos': dict(enumerate(chars))}
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=meta['vocab_size'])).eval()
    return save_checkpoint(tmp_path / 'out', model, char_dataset), model, meta


@pytest.fixture
def bpe_ckpt(tmp_path):
    """(out_dir, model) of a GPT-2-vocabulary model that, whatever the input, draws uniformly from
    CJK_PIECES and <|endoftext|>: its samples split characters across tokens and hit the stop token."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=50257)).eval()
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()  # every position's final features are ln_f.bias = e0
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        model.lm_head.weight[:, 0] = -30.0     # so logits are lm_head.weight[:, 0]
        model.lm_head.weight[CJK_PIECES + [EOT], 0] = 0.0
    return save_checkpoint(tmp_path / 'out_bpe', model, tmp_path / 'no_such_dataset'), model


@pytest.fixture
def sample(monkeypatch, capsys):
    """sample(*args) runs sample.py in this process and returns (stdout, stderr); a mistake raises the
    SystemExit whose text is the error line."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models gain nothing from threads, which stall on a busy machine

    def go(*args):
        monkeypatch.setattr(sys, 'argv', ['sample.py', '--device=cpu', *map(str, args)])
        runpy.run_path(str(REPO / 'sample.py'), run_name='__main__')
        return capsys.readouterr()
    yield go
    torch.set_num_threads(threads)


def samples(stdout):
    """The samples in sample.py's stdout, which holds nothing else (the configurator writes to stderr)."""
    parts = stdout.split(SEP)
    assert parts[-1] == '', f"stdout does not end with the separator: {stdout[-200:]!r}"
    return parts[:-1]


def reference(model, ids, decode, seed, num_samples=1, batch=False, **kw):
    """What sample.py should print: model.generate from the same seed, decoded in one go."""
    torch.manual_seed(seed)
    if batch:
        return [decode(row) for row in model.generate(torch.tensor([ids] * num_samples), **kw).tolist()]
    return [decode(model.generate(torch.tensor([ids]), **kw)[0].tolist()) for _ in range(num_samples)]


def gpt2_encoding():
    import tiktoken
    return tiktoken.get_encoding('gpt2')


def test_char_samples_match_generate_and_repeat_with_seed(char_ckpt, sample):
    out_dir, model, meta = char_ckpt
    decode = lambda ids: ''.join(meta['itos'][i] for i in ids)
    args = [f'--out_dir={out_dir}', '--start=All:\\n', '--num_samples=3', '--max_new_tokens=40', '--seed=7',
            '--temperature=0.9', '--top_k=10']
    got = samples(sample(*args).out)
    ids = [meta['stoi'][c] for c in 'All:\n']  # \n in --start is a newline
    assert got == reference(model, ids, decode, 7, 3, max_new_tokens=40, temperature=0.9, top_k=10)
    assert len(set(got)) == 3 and all(s.startswith('All:\n') and len(s) == 45 for s in got)
    assert samples(sample(*args).out) == got
    assert samples(sample(*args, '--seed=8').out) != got
    batched = samples(sample(*args, '--batch=True').out)
    assert batched == reference(model, ids, decode, 7, 3, batch=True, max_new_tokens=40, temperature=0.9, top_k=10)


def test_one_sample_at_a_time_is_printed_token_by_token(char_ckpt, sample, monkeypatch):
    out_dir, _, _ = char_ckpt
    flushes = []  # what had been written at each flush

    class Stdout(list):
        write = list.append
        flush = lambda self: flushes.append(''.join(self))
    monkeypatch.setattr(sys, 'stdout', Stdout())
    sample(f'--out_dir={out_dir}', '--start=A', '--num_samples=2', '--max_new_tokens=20')
    assert len(samples(flushes[-1])) == 2
    assert len(set(flushes)) > 2 * 20  # the text grew at least once per token


def test_same_text_in_a_fresh_process(char_ckpt, sample, tmp_path):
    out_dir, _, _ = char_ckpt
    args = [f'--out_dir={out_dir}', '--device=cpu', '--num_samples=2', '--max_new_tokens=30', '--start=A']
    p = run('sample.py', *args, cwd=tmp_path, env={'OMP_NUM_THREADS': '1'})  # as many threads as in here
    assert samples(p.stdout) == samples(sample(*args).out)


def test_both_decode_forms_print_the_same_text(char_ckpt, sample, monkeypatch):
    """The split form of a batch-1 step's matmuls (decoding.py) runs, and draws what the plain form draws."""
    out_dir, _, _ = char_ckpt
    split = []
    monkeypatch.setattr(torch, 'baddbmm', lambda *a, _real=torch.baddbmm: split.append(1) or _real(*a))
    args = [f'--out_dir={out_dir}', '--num_samples=1', '--max_new_tokens=30', '--start=A']
    assert sample(*args, '--decode_form=split').out == sample(*args, '--decode_form=plain').out
    assert len(split) >= 29 * 2 * 4  # the Linear layers of the 2 blocks at every one-token step


def test_temperature_zero_and_no_top_k(char_ckpt, sample):
    out_dir, model, meta = char_ckpt
    decode = lambda ids: ''.join(meta['itos'][i] for i in ids)
    ids = [meta['stoi']['A']]
    greedy = samples(sample(f'--out_dir={out_dir}', '--start=A', '--num_samples=2', '--max_new_tokens=20',
                            '--temperature=0').out)
    assert greedy == reference(model, ids, decode, 1337, 2, max_new_tokens=20, temperature=0)
    assert greedy[0] == greedy[1]
    nucleus = samples(sample(f'--out_dir={out_dir}', '--start=A', '--num_samples=1', '--max_new_tokens=20',
                             '--top_k=None', '--top_p=0.5').out)
    assert nucleus == reference(model, ids, decode, 1337, max_new_tokens=20, temperature=0.8, top_p=0.5)


def test_stop_string_ends_the_sample_before_it(char_ckpt, sample):
    out_dir, _, _ = char_ckpt
    args = [f'--out_dir={out_dir}', '--start=A', '--num_samples=1', '--max_new_tokens=200', '--temperature=2.0']
    full = samples(sample(*args).out)[0]
    at = full.index('\n', 10)  # a two-character stop with a newline, passed escaped as on a command line
    stop = full[at - 1:at + 1]
    got = samples(sample(*args, '--stop=' + stop.replace('\n', '\\n')).out)[0]
    assert got == full[:full.index(stop, 1)]


def test_prompt_from_file_and_too_long(char_ckpt, sample, tmp_path):
    out_dir, _, _ = char_ckpt
    (tmp_path / 'prompt.txt').write_text('First Citizen:\nSpeak\\n')  # read verbatim: \\n stays
    with pytest.raises(SystemExit, match=r"not in the model's vocabulary: '\\\\'"):
        sample(f'--out_dir={out_dir}', f'--start=FILE:{tmp_path}/prompt.txt')
    long_prompt = 'First Citizen:\nSpeak, speak.\n\nAll:\nYou are all resolved.\n'  # > block_size 32
    (tmp_path / 'prompt.txt').write_text(long_prompt)
    res = sample(f'--out_dir={out_dir}', f'--start=FILE:{tmp_path}/prompt.txt', '--num_samples=1',
                 '--max_new_tokens=5')
    assert samples(res.out)[0][:-5] == long_prompt[-32:]
    assert f'warning: the prompt is {len(long_prompt)} tokens, longer than the context of 32; keeping its last 32' \
        in res.err


@needs_gpt2_bpe
def test_bpe_stream_prints_the_decoded_sample(bpe_ckpt, sample):
    out_dir, model = bpe_ckpt
    enc = gpt2_encoding()
    prompt = 'A<|endoftext|> 日本'  # the special token is allowed in a prompt, and is no stop inside it
    ids = enc.encode(prompt, allowed_special={'<|endoftext|>'})
    args = [f'--out_dir={out_dir}', f'--start={prompt}', '--num_samples=2', '--max_new_tokens=30',
            '--temperature=1.0', '--top_k=None']
    full = samples(sample(*args).out)
    assert full == reference(model, ids, enc.decode, 1337, 2, max_new_tokens=30)
    for s in full:  # CJK characters made of two tokens, broken ones, and end-of-text tokens
        new = s[len(prompt):]
        assert any('\u4e00' <= c <= '\u9fff' for c in new) and '\ufffd' in new and '<|endoftext|>' in new, new
    first = samples(sample(*args, '--num_samples=1', '--stop=<|endoftext|>').out)[0]
    assert first == full[0][:full[0].index('<|endoftext|>', len(prompt))]
    # a batch ends when every sample has met the stop text; each is cut there
    full = samples(sample(*args, '--batch=True').out)
    assert full == reference(model, ids, enc.decode, 1337, 2, batch=True, max_new_tokens=30)
    cut = samples(sample(*args, '--batch=True', '--stop=<|endoftext|>').out)
    assert cut == [s[:s.index('<|endoftext|>', len(prompt))] for s in full]


@needs_gpt2_bpe
def test_from_pretrained_directory(tmp_path, sample):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=32, n_embd=32, n_layer=2, n_head=2))
    hf.save_pretrained(tmp_path / 'tiny-gpt2')
    model = GPT.from_pretrained(str(tmp_path / 'tiny-gpt2')).eval()
    enc = gpt2_encoding()
    got = samples(sample(f'--init_from={tmp_path}/tiny-gpt2', '--start=Hello, world', '--num_samples=1',
                         '--max_new_tokens=10').out)
    assert got == reference(model, enc.encode('Hello, world'), enc.decode, 1337, max_new_tokens=10,
                            temperature=0.8, top_k=200)


def test_missing_checkpoint_is_one_line(tmp_path, script, monkeypatch):
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'notes.txt').write_text('')
    monkeypatch.chdir(tmp_path)
    p = script('sample.py', '--out_dir=out', check=False)
    assert p.code == 2 and 'Traceback' not in p.err
    assert p.err.strip().splitlines()[-1] == (
        "error: no checkpoint out/ckpt.pt (out holds: notes.txt); train one first, e.g. "
        "python train.py config/train_shakespeare_char.py --out_dir=out")


def test_errors(char_ckpt, sample, tmp_path):
    out_dir, model, meta = char_ckpt
    cases = [  # (flags, part of the message)
        ([f'--out_dir={tmp_path}/nowhere'], 'nowhere does not exist'),
        ([f'--out_dir={out_dir}', '--start=Zebra ~é'], "the prompt has characters that are not in the model's "
                                                      "vocabulary: 'Z' 'b' '~' 'é'$"),
        ([f'--out_dir={out_dir}', '--start=FILE:nope.txt'], "cannot read the prompt file 'nope.txt'"),
        ([f'--out_dir={out_dir}', '--start='], 'the prompt is empty'),
        ([f'--out_dir={out_dir}', '--device=cuda'], 'CUDA is not available'),
        ([f'--out_dir={out_dir}', '--dtype=float8'], "dtype='float8'"),
        ([f'--out_dir={out_dir}', '--top_k=0'], 'top_k=0 must be positive'),
        ([f'--out_dir={out_dir}', '--decode_form=fast'], "decode_form='fast': use 'auto', 'plain', 'split'$"),
        ([f'--out_dir={out_dir}', '--top_p=1.5'], r'top_p=1\.5 must be in \(0, 1\]'),
        # regression: a directory that does not exist got Hugging Face's 'Repo id must be in the form'
        ([f'--init_from={tmp_path}/no_such_dir'], r"init_from='.*no_such_dir' is not 'resume', a .pt file, a gpt2\* name "
                                                  r"or an existing directory$"),
    ]
    for flags, message in cases:
        with pytest.raises(SystemExit, match=message):
            sample(*flags)

    (tmp_path / 'folder' / 'ckpt.pt').mkdir(parents=True)  # regression: 'no checkpoint (folder holds: ckpt.pt)'
    with pytest.raises(SystemExit, match=r"folder/ckpt.pt is a folder, not a checkpoint file$"):
        sample(f'--out_dir={tmp_path / "folder"}')

    ckpt = torch.load(out_dir / 'ckpt.pt', weights_only=True)
    ckpt['model'].pop('lm_head.weight')
    ckpt['model']['transformer.extra'] = torch.zeros(1)
    torch.save(ckpt, out_dir / 'ckpt.pt')
    with pytest.raises(SystemExit, match=r"does not match this model.py: RuntimeError: .*Missing key.*"
                                         r"lm_head.weight.*Unexpected key.*transformer.extra"):
        sample(f'--out_dir={out_dir}')

    data = (out_dir / 'ckpt.pt').read_bytes()
    (out_dir / 'ckpt.pt').write_bytes(data[:len(data) // 2])
    with pytest.raises(SystemExit, match='cannot read .*ckpt.pt: it is truncated, corrupted or not a checkpoint'):
        sample(f'--out_dir={out_dir}')
    # regression: an empty file: the same line, not an IndexError from formatting EOFError's empty message
    (out_dir / 'ckpt.pt').write_bytes(b'')
    with pytest.raises(SystemExit, match=r'cannot read .*ckpt.pt: it is truncated, corrupted or not a checkpoint '
                                         r'\(EOFError\)'):
        sample(f'--out_dir={out_dir}')

    # regression: with the dataset folder gone, a character model's tokens were decoded as GPT-2 BPE
    # (garbage, exit 0) unless the prompt happened to hold a token id past the model's vocabulary
    save_checkpoint(out_dir, model, tmp_path / 'moved')
    with pytest.raises(SystemExit, match=rf"the model has {meta['vocab_size']} tokens, fewer than GPT-2's 50257, so it needs "
                                         r"its dataset's meta.json, which is not at .*moved/meta.json: name it with --vocab_path=FILE"):
        sample(f'--out_dir={out_dir}', '--start=A')


def test_meta_that_does_not_fit_is_refused(char_ckpt, sample, tmp_path):
    """Regression: a meta.pkl of another vocabulary decoded the samples into the wrong characters, and an
    unreadable one raised a bare UnpicklingError."""
    out_dir, model, meta = char_ckpt
    other = tmp_path / 'other'
    other.mkdir()
    small = dict(meta, vocab_size=20, itos={i: meta['itos'][i] for i in range(20)})
    (other / 'meta.pkl').write_bytes(pickle.dumps(small))
    save_checkpoint(out_dir, model, other)
    with pytest.raises(SystemExit, match=rf"meta.pkl has 20 tokens but the model has {meta['vocab_size']}: the model was not "
                                         r"trained on this dataset"):
        sample(f'--out_dir={out_dir}', '--start=A')
    (other / 'meta.pkl').write_bytes(pickle.dumps(meta)[:50])
    with pytest.raises(SystemExit, match=r"cannot read a vocabulary from .*meta.pkl \(UnpicklingError"):
        sample(f'--out_dir={out_dir}', '--start=A')
    ckpt = torch.load(out_dir / 'ckpt.pt', weights_only=True)
    for config in (None, {'dataset': 7}):  # regression: AttributeError / TypeError tracebacks
        torch.save(dict(ckpt, config=config), out_dir / 'ckpt.pt')
        with pytest.raises(SystemExit, match=r"needs its dataset's meta.json, which is not at \(the checkpoint names no "):
            sample(f'--out_dir={out_dir}', '--start=A')
    save_checkpoint(out_dir, model, other)
    (other / 'meta.pkl').write_bytes(pickle.dumps({'vocab_size': 65}))
    with pytest.raises(SystemExit, match=r"cannot read a vocabulary from .*meta.pkl \(KeyError: 'itos'\)"):
        sample(f'--out_dir={out_dir}', '--start=A')


def test_ctrl_c_and_a_closed_pipe_end_quietly(char_ckpt, sample, monkeypatch, tmp_path):
    """Regression: Ctrl-C while sampling and `sample.py | head` both ended in a traceback."""
    out_dir, _, _ = char_ckpt

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
        yield
    with monkeypatch.context() as m:
        m.setattr(GPT, 'generate_stream', interrupted)
        with pytest.raises(SystemExit) as e:
            sample(f'--out_dir={out_dir}')
    assert e.value.code == 130
    p = subprocess.Popen([sys.executable, str(REPO / 'sample.py'), f'--out_dir={out_dir}', '--device=cpu',
                          '--num_samples=200', '--max_new_tokens=30'], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    p.stdout.read(20)  # the first characters, then the reader goes away
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and 'Traceback' not in err and 'Error' not in err, err


def test_sample_from_train_py_checkpoint(char_dataset, tmp_path, script, monkeypatch):
    """Also a regression: a dataset folder given as a relative path was stored as typed, so sample.py run
    from another folder could not find its meta.pkl."""
    out = tmp_path / 'out'
    monkeypatch.chdir(tmp_path)
    script('train.py', *TINY, f'--dataset={os.path.relpath(char_dataset, tmp_path)}', f'--out_dir={out}')
    (tmp_path / 'elsewhere').mkdir()
    monkeypatch.chdir(tmp_path / 'elsewhere')
    p = script('sample.py', f'--out_dir={out}', '--device=cpu', '--num_samples=2', '--max_new_tokens=20', '--start=All:')
    got = samples(p.out)
    assert len(got) == 2 and all(s.startswith('All:') and len(s) == 24 for s in got)


def test_damaged_checkpoint_is_refused(trained, trained_copy, sample):
    """Regression: a checkpoint whose weight bytes were overwritten loaded without a word; sampling then
    ended in a traceback ('probability tensor contains inf') or printed blank lines with exit code 0."""
    overwrite_largest_tensor(trained_copy / 'ckpt.pt')
    with pytest.raises(SystemExit, match=rf"error: {trained_copy / 'ckpt.pt'} is damaged: its tensors do not match "
                                         r"the checksum written with them"):
        sample(f'--out_dir={trained_copy}')


def test_a_checkpoint_alone_samples_as_in_place(char_dataset, tmp_path, script, sample):
    """Regression: sample.py found a character model's vocabulary through the dataset folder named in the
    checkpoint, so a ckpt.pt copied elsewhere, or kept after its dataset was deleted, could not be sampled.
    The checkpoint holds its vocabulary now."""
    script('train.py', *TINY, f'--dataset={char_dataset}', f'--out_dir={tmp_path / "out"}', '--max_iters=2')
    args = ['--num_samples=2', '--max_new_tokens=30', '--start=All:']
    in_place = samples(sample(f'--out_dir={tmp_path / "out"}', *args).out)
    (tmp_path / 'elsewhere').mkdir()
    os.rename(tmp_path / 'out' / 'ckpt.pt', tmp_path / 'elsewhere' / 'ckpt.pt')
    shutil.rmtree(char_dataset)
    assert samples(sample(f'--out_dir={tmp_path / "elsewhere"}', *args).out) == in_place


class RunsCode:
    """Unpickling this creates a file: what a meta.pkl from a stranger could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def test_a_pickle_beside_meta_json_is_never_loaded(tmp_path, script, sample):
    """meta.pkl is a pickle, which runs whatever code it holds; with a meta.json beside it, nothing reads it."""
    data = write_char_dataset(tmp_path / 'data')
    marker = tmp_path / 'pickle-ran'
    (data / 'meta.pkl').write_bytes(pickle.dumps(RunsCode(marker)))
    script('train.py', *TINY, f'--dataset={data}', f'--out_dir={tmp_path / "out"}', '--max_iters=1')
    ckpt = torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)
    save_checkpoint(tmp_path / 'old', GPT(GPTConfig(**ckpt['model_args'])), data)  # an older checkpoint: no vocabulary
    for out in ('out', 'old'):
        sample(f'--out_dir={tmp_path / out}', '--num_samples=1', '--max_new_tokens=5', '--start=A')
    assert not marker.exists()


def test_legacy_checkpoint_and_meta_pkl_still_sample(tmp_path, sample):
    data = write_char_dataset(tmp_path / 'data', legacy=True)  # as prepare.py wrote before meta.json
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=33)).eval()
    save_checkpoint(tmp_path / 'out', model, data)
    res = sample(f'--out_dir={tmp_path / "out"}', '--num_samples=1', '--max_new_tokens=10', '--start=All:')
    assert samples(res.out)[0].startswith('All:') and len(samples(res.out)[0]) == 14
    assert f"warning: {data / 'meta.pkl'} is a pickle, which runs any code it holds; rerun the dataset's " \
           f"prepare.py to write meta.json instead" in res.err


def test_a_checkpoint_without_its_vocabulary_names_it_with_vocab_path(char_ckpt, char_dataset, sample, script,
                                                                      tmp_path):
    """Regression: a checkpoint written by nanoGPT (no vocabulary inside) looked for it only in this repo's
    data/<dataset>: in a fresh clone sample.py and export.py failed with no setting to name it, and where
    that folder was prepared its vocabulary was taken silently."""
    out_dir, model, meta = char_ckpt
    ckpt = out_dir / 'ckpt.pt'
    save_checkpoint(out_dir, model, 'shakespeare_char_elsewhere')  # nanoGPT's config names the dataset
    p = script('sample.py', f'--out_dir={out_dir}', '--start=A', check=False)
    assert_one_line_error(p, "name it with --vocab_path=FILE (sample.py, eval.py, export.py)")
    folder = tmp_path / 'nanogpt_data'
    folder.mkdir()
    (folder / 'meta.pkl').write_bytes(pickle.dumps(meta))  # nanoGPT's vocabulary file
    res = sample(f'--out_dir={out_dir}', f'--vocab_path={folder / "meta.pkl"}', '--start=All',
                 '--num_samples=1', '--max_new_tokens=5')
    assert samples(res.out)[0].startswith('All') and len(samples(res.out)[0]) == 8
    assert f"note: {ckpt} holds no vocabulary (an older or nanoGPT checkpoint): using {folder / 'meta.pkl'}\n" \
           in res.err
    # the folder holding it does as well, for export.py and eval.py
    weights = tmp_path / 'w.pt'
    script('export.py', f'--out_dir={out_dir}', f'--vocab_path={folder}', f'--weights={weights}')
    assert torch.load(weights, weights_only=True)['tokenizer'] == {'chars': chars_of(char_dataset)}
    p = script('eval.py', f'--out_dir={out_dir}', f'--vocab_path={folder}', f'--dataset={char_dataset}',
               '--device=cpu')
    assert p.out.startswith('val: loss ') and f"using {folder / 'meta.pkl'}" in p.err
    p = script('export.py', f'--out_dir={out_dir}', f'--vocab_path={tmp_path / "nothing"}', f'--weights={weights}',
               check=False)
    assert_one_line_error(p, f"--vocab_path={tmp_path / 'nothing'} does not exist")
    # the checkpoint's dataset, where it is there, is still read; the note names the file
    save_checkpoint(out_dir, model, char_dataset)
    res = sample(f'--out_dir={out_dir}', '--start=A', '--num_samples=1', '--max_new_tokens=2')
    assert f"using {char_dataset / 'meta.json'}; --vocab_path=FILE names another" in res.err
    # a checkpoint that holds its own vocabulary keeps it, and says the setting is not used
    save_checkpoint(out_dir, model, char_dataset, tokenizer={'chars': chars_of(char_dataset)})
    res = sample(f'--out_dir={out_dir}', f'--vocab_path={folder}', '--start=A', '--num_samples=1',
                 '--max_new_tokens=2')
    assert f"note: --vocab_path={folder} is not used: {ckpt} holds its own vocabulary" in res.err
