"""eval.py and tasks.py: the whole-split loss and HellaSwag, each checked against an independent computation
(a plain loop over our model, and transformers' own forward for a tiny random GPT-2).
Run: python -m pytest -q tests/test_eval.py"""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import checkpoint
import hellaswag
import tasks
from conftest import assert_one_line_error, chars_of, needs_gpt2_bpe, torchrun

transformers = pytest.importorskip('transformers')

EXAMPLES = [  # HellaSwag's format, with contexts and endings of different lengths
    {'ctx': 'A man is sitting on a roof. He', 'label': 3,
     'endings': ['is using wrap to wrap a pair of skis.', 'is ripping level tiles off.',
                 "is holding a rubik's cube.", 'starts pulling up roofing on a roof.']},
    {'ctx': 'The cat', 'label': 0, 'endings': ['sleeps.', 'jumps over the lazy dog twice today.', 'eats', 'runs off']},
    {'ctx': 'She opens the box and finds', 'label': 2,
     'endings': ['a letter', 'nothing at all inside of it', 'a small silver key.', 'her old shoes']},
    {'ctx': 'Then the team', 'label': 1, 'endings': ['wins.', 'celebrates the victory', 'loses', 'goes home']},
    {'ctx': 'He mixes flour and water, then', 'label': 0,
     'endings': ['kneads the dough.', 'bakes', 'pours it out on the table slowly', 'stops']},
]


def write_jsonl(path, examples):
    path.write_text(''.join(json.dumps(ex) + '\n' for ex in examples), encoding='utf-8')
    return path


def results(p):
    """The JSON object on eval.py's last stdout line."""
    return json.loads(p.out.strip().splitlines()[-1])


def test_split_windows_predict_every_token_once():
    for n, T, stride in [(10, 4, 4), (10, 4, 2), (5, 4, 4), (100, 8, 3), (33, 32, 1), (64, 16, 16)]:
        counted = []
        for start, first in tasks.split_windows(n, T, stride):
            assert 0 <= start and start + T <= n - 1 and 0 <= first < T  # whole windows inside the split
            counted += range(start + 1 + first, start + 1 + T)  # the target indices the window counts
        assert counted == list(range(1, n)), (n, T, stride)


def plain_val_loss(model, tokens, chars):
    """The definition, in a plain loop: non-overlapping windows of block_size, each target counted once;
    the tail's window is the split's last block_size + 1 tokens."""
    T, nats, nbytes, count = model.config.block_size, 0.0, 0, 0
    for s in range(0, len(tokens) - 1, T):
        e = min(s + T, len(tokens) - 1)  # this chunk predicts tokens s+1 .. e
        x = torch.tensor(tokens[e - T:e], dtype=torch.long)[None]
        y = torch.tensor(tokens[e - T + 1:e + 1], dtype=torch.long)[None]
        with torch.no_grad():
            losses = F.cross_entropy(model(x, y)[0][0], y[0], reduction='none')[T - (e - s):]
        nats += losses.double().sum().item()
        count += e - s
        nbytes += sum(len(chars[t].encode()) for t in tokens[s + 1:e + 1])
    return nats / count, nats / math.log(2) / nbytes, count


def test_val_loss_equals_a_plain_loop_and_repeats(trained, script):
    p = script('eval.py', f'--out_dir={trained.out}', '--device=cpu', '--task=val,train', '--json=True',
               '--batch_size=3')
    figures = results(p)
    ckpt, _ = checkpoint.load(trained.out / 'ckpt.pt', checkpoint.FOR_SAMPLING)
    model = checkpoint.build_model(ckpt, 'ckpt.pt').eval()
    for split in ('val', 'train'):
        tokens = np.fromfile(trained.data / f'{split}.bin', dtype=np.uint16).astype(np.int64).tolist()
        loss, bpb, count = plain_val_loss(model, tokens, chars_of(trained.data))
        got = figures[split]
        assert got['tokens'] == count == len(tokens) - 1
        assert got['loss'] == pytest.approx(loss, rel=1e-6) and got['bpb'] == pytest.approx(bpb, rel=1e-6)
        assert got['ppl'] == pytest.approx(math.exp(loss), rel=1e-9)
        assert got['loss'] < 3.0  # the trained model has learnt something (uniform over 33 characters: 3.50)
    assert f"val: loss {figures['val']['loss']:.4f} nats/token" in p.out
    again = script('eval.py', f'--out_dir={trained.out}', '--device=cpu', '--task=val,train', '--json=True',
                   '--batch_size=5')
    assert results(again) == figures  # other batches, the same windows: the same figures, exactly
    # a stride gives each token more context and still counts each once
    strided = results(script('eval.py', f'--out_dir={trained.out}', '--device=cpu', '--stride=8', '--json=True'))
    assert strided['val']['tokens'] == figures['val']['tokens']
    assert strided['val']['loss'] != figures['val']['loss']


@pytest.mark.slow  # torchrun
def test_two_processes_give_the_figures_of_one(trained, tmp_path, script):
    hs = write_jsonl(tmp_path / 'hs.jsonl', [{'ctx': 'All', 'label': i % 4, 'endings': ['speak.', 'hear me', 'we', 'die']}
                                              for i in range(5)])  # 5 examples: 3 on one process, 2 on the other
    args = [f'--out_dir={trained.out}', '--device=cpu', '--json=True', '--task=val,hellaswag', f'--hellaswag_path={hs}']
    one = results(script('eval.py', *args))
    p = torchrun('eval.py', *args)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.strip().splitlines()
    assert sum(line.startswith('val: loss') for line in lines) == 1  # printed once, by rank 0
    two = json.loads(lines[-1])
    assert two['val']['tokens'] == one['val']['tokens']
    assert two['val']['loss'] == pytest.approx(one['val']['loss'], rel=1e-12)
    assert two['hellaswag'] == one['hellaswag'] and one['hellaswag']['n'] == 5


@pytest.fixture(scope='module')
def tiny_gpt2(tmp_path_factory):
    """A tiny random GPT-2 (block_size 64, GPT-2's vocabulary) shared by this module's tests, which must not
    change it: SimpleNamespace(hf: the transformers model, folder: where it is saved)."""
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64))
    folder = tmp_path_factory.mktemp('tiny_gpt2') / 'hf'
    hf.save_pretrained(folder)
    return SimpleNamespace(hf=hf.eval(), folder=folder)


def transformers_scores(hf, examples):
    """Each ending's total and mean loss given its context, one unpadded sequence at a time."""
    import tiktoken
    enc = tiktoken.get_encoding('gpt2')
    out = []
    for ex in examples:
        ctx, rows = enc.encode(ex['ctx']), []
        for ending in ex['endings']:
            end = enc.encode(' ' + ending)
            ids = torch.tensor([ctx + end])
            with torch.no_grad():
                logp = torch.log_softmax(hf(ids).logits[0, :-1].double(), -1)
            nll = -logp[torch.arange(len(ctx) - 1, ids.size(1) - 1), ids[0, len(ctx):]]
            rows.append([nll.sum().item(), nll.mean().item()])
        out.append(rows)
    return torch.tensor(out, dtype=torch.float64)


@needs_gpt2_bpe
def test_hellaswag_scores_equal_transformers(tiny_gpt2, tmp_path, script):
    expected = transformers_scores(tiny_gpt2.hf, EXAMPLES)
    labels = torch.tensor([ex['label'] for ex in EXAMPLES])
    path = write_jsonl(tmp_path / 'hs.jsonl', EXAMPLES)
    import vocabulary
    from model import GPT
    model = GPT.from_pretrained(str(tiny_gpt2.folder)).eval()
    tokenizer = vocabulary.Tokenizer(vocabulary.GPT2)
    encoded = hellaswag.hellaswag_tokens(tokenizer, hellaswag.read_hellaswag(str(path)), 64)
    for batch_size in (4, 12):  # one example to a forward, and three (padded)
        scores = hellaswag.hellaswag_scores(model, encoded, torch.autocast('cpu', enabled=False), batch_size, False)
        assert (scores - expected).abs().max().item() < 1e-5
        assert torch.equal(scores.argmin(1), expected.argmin(1))  # the same choices, both ways
    acc, acc_norm = ((expected[:, :, k].argmin(1) == labels).double().mean().item() for k in (0, 1))
    p = script('eval.py', f'--init_from={tiny_gpt2.folder}', '--task=hellaswag', f'--hellaswag_path={path}',
               '--device=cpu', '--json=True')
    assert results(p) == {'hellaswag': {'acc': acc, 'acc_norm': acc_norm, 'n': 5}}
    assert f"hellaswag: acc {acc:.4f}, acc_norm {acc_norm:.4f} (5 examples)" in p.out


def test_hellaswag_on_a_character_model(trained, tmp_path, script):
    chars = set(chars_of(trained.data))
    fitting = [{'ctx': 'All', 'label': 1, 'endings': ['speak.', 'hear me', 'we', 'die']}] * 3
    p = script('eval.py', f'--out_dir={trained.out}', '--task=hellaswag', '--device=cpu', '--json=True',
               f'--hellaswag_path={write_jsonl(tmp_path / "ok.jsonl", fitting)}')
    assert results(p)['hellaswag']['n'] == 3
    assert 'Q' not in chars and 'j' not in chars
    lacking = fitting + [{'ctx': 'Quiet', 'label': 0, 'endings': ['jest', 'a', 'xi', 'e']}]
    p = script('eval.py', f'--out_dir={trained.out}', '--task=hellaswag', '--device=cpu',
               f'--hellaswag_path={write_jsonl(tmp_path / "lacking.jsonl", lacking)}', check=False)
    assert_one_line_error(p, "example 4 has characters that are not in the model's vocabulary: 'Q' 'j' 'x'")
    long = [{'ctx': 'speak ' * 10, 'label': 0, 'endings': ['e', 'a', 'r', 's']}]  # 61 characters; block 32
    p = script('eval.py', f'--out_dir={trained.out}', '--task=hellaswag', '--device=cpu',
               f'--hellaswag_path={write_jsonl(tmp_path / "long.jsonl", long)}', check=False)
    assert_one_line_error(p, "example 1 needs a context of 61 tokens, longer than the model's block_size of 32")


@pytest.mark.parametrize('content, message', [
    (None, "is not a file; give a local copy of hellaswag_val.jsonl"),
    ('{"ctx": "a", "endings": ["b", "c", "d", "e"], "label": 0}\nnot json\n', "line 2 is not a HellaSwag example"),
    ('{"ctx": "a", "endings": ["b", "c"], "label": 0}\n', "line 1 is not a HellaSwag example (ValueError: 'ctx' "
                                                         "must be a text, 'endings' 4 texts"),
    # regressions: an empty context gave a traceback, a label of 1.9 or true was taken as 1
    ('{"ctx": "", "endings": ["b", "c", "d", "e"], "label": 0}\n', "line 1 is not a HellaSwag example"),
    ('{"ctx": "a", "endings": ["b", "c", "d", "e"], "label": 1.9}\n', "'label' an integer 0 to 3"),
    ('{"ctx": "a", "endings": ["b", "c", "d", "e"], "label": true}\n', "'label' an integer 0 to 3"),
    ('{"ctx": "a", "label": 0}\n', "line 1 is not a HellaSwag example (it has no 'endings')"),
    ('\n', "holds no HellaSwag examples"),
])
def test_bad_hellaswag_files_are_one_line(trained, tmp_path, script, content, message):
    path = tmp_path / 'hs.jsonl'
    if content is not None:
        path.write_text(content)
    p = script('eval.py', f'--out_dir={trained.out}', '--task=hellaswag', f'--hellaswag_path={path}',
               '--device=cpu', check=False)
    assert_one_line_error(p, message)


def test_eval_mistakes_are_one_line(trained, tmp_path, script):
    p = script('eval.py', f'--out_dir={trained.out}', '--task=val,mmlu', check=False)
    assert_one_line_error(p, "task='val,mmlu': the tasks are val, train, hellaswag")
    p = script('eval.py', f'--out_dir={trained.out}', '--stride=33', check=False)
    assert_one_line_error(p, "stride=33 is longer than the model's block_size of 32")
    p = script('eval.py', f'--out_dir={tmp_path / "none"}', check=False)
    assert_one_line_error(p, "no checkpoint")
    hf = tmp_path / 'hf'
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32)).save_pretrained(hf)
    p = script('eval.py', f'--init_from={hf}', '--task=history', check=False)
    assert_one_line_error(p, "--task=history reads a checkpoint of train.py (--out_dir or a .pt file), not")
    p = script('eval.py', f'--init_from={hf}', '--task=val', check=False)
    assert_one_line_error(p, "--task=val needs a dataset: give --dataset=NAME")
    p = script('eval.py', f'--init_from={hf}', f'--dataset={trained.data}', check=False)
    assert_one_line_error(p, f"{trained.data / 'meta.json'} has 33 tokens but the model has 50257: the model was "
                             f"not trained on this dataset")


@needs_gpt2_bpe
@pytest.mark.parametrize('stride', [0, 13, 24])
def test_wikitext_perplexity_equals_transformers_token_by_token(tiny_gpt2, tmp_path, script, stride):
    """Each token's loss from transformers' forward over exactly the context the windows give it: with
    stride s, window k starts at k*s and counts its targets past the previous window's; the last window
    ends where the text does. One forward per token (its head over the last position alone), so nothing is
    shared with the windowed computation."""
    import tiktoken
    text = ' = Valkyria Chronicles III = \n\n' + ''.join(
        f" Senjō no Valkyria {i} is a tactical role @-@ playing video game released in 201{i} . \n" for i in range(9))
    (tmp_path / 'wiki.txt').write_text(text, encoding='utf-8')
    ids = tiktoken.get_encoding('gpt2').encode(text)
    n, T, s = len(ids), 64, stride or 64
    assert n > 2 * T
    starts, done, begin = {}, 0, 0  # starts[t]: where the input of target t's window begins
    while done < n - 1:
        end = min(begin + T, n - 1)
        starts.update({t: end - T for t in range(done + 1, end + 1)})
        done, begin = end, begin + s
    nats = 0.0
    for t in range(1, n):
        with torch.no_grad():
            logits = tiny_gpt2.hf(torch.tensor([ids[starts[t]:t]]), logits_to_keep=1).logits[0, -1].double()
        nats -= torch.log_softmax(logits, -1)[ids[t]].item()
    p = script('eval.py', f'--init_from={tiny_gpt2.folder}', '--task=wikitext',
               f'--wikitext_path={tmp_path / "wiki.txt"}', f'--stride={stride}', '--device=cpu', '--json=True')
    got = results(p)['wikitext']
    first = len(tiktoken.get_encoding('gpt2').decode_single_token_bytes(ids[0]))
    assert got['tokens'] == n - 1
    assert got['loss'] == pytest.approx(nats / (n - 1), rel=1e-6)
    assert got['ppl'] == pytest.approx(math.exp(nats / (n - 1)), rel=1e-6)
    assert got['bpb'] == pytest.approx(nats / math.log(2) / (len(text.encode()) - first), rel=1e-6)


def test_wikitext_mistakes_are_one_line(trained, tmp_path, script):
    p = script('eval.py', f'--out_dir={trained.out}', '--task=wikitext', f'--wikitext_path={tmp_path / "none.txt"}',
               check=False)
    assert_one_line_error(p, "cannot read wikitext_path=")
    (tmp_path / 'wiki.txt').write_text('Valkyria Chronicles @-@ ' * 10)
    p = script('eval.py', f'--out_dir={trained.out}', '--task=wikitext', f'--wikitext_path={tmp_path / "wiki.txt"}',
               check=False)
    assert_one_line_error(p, "the WikiText text has characters that are not in the model's vocabulary: '-' '@' 'V'")
