"""Datasets of fixed-length examples (meta.json's example_len and loss_from): the addition and image
datasets, example-aligned batches, eval.py --task=addition, and sample.py for both kinds.
Run: python -m pytest -q tests/test_examples.py"""
import json
import os
import sys

import numpy as np
import pytest
import torch

import corpus
import vocabulary
from conftest import REPO, TINY, assert_one_line_error, in_process
from test_train import losses

sys.path.insert(0, str(REPO / 'data' / 'images'))
import prepare as images  # noqa: E402  (data/images/prepare.py)

CHARS = ['+', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '=']


def problems_of(folder, split):
    """The problems of an addition split as text, e.g. '23+45=860'."""
    meta = json.loads((folder / 'meta.json').read_text())
    ids = np.fromfile(folder / f'{split}.bin', dtype=np.uint16).reshape(-1, meta['example_len'])
    return [''.join(meta['chars'][i] for i in row) for row in ids]


@pytest.fixture(scope='module')
def addition2(tmp_path_factory):
    folder = tmp_path_factory.mktemp('addition') / 'add2'
    in_process('data/addition/prepare.py', f'--out_dir={folder}')
    return folder


def test_addition_problems_are_all_there_disjoint_and_written_backwards(addition2, script):
    train, test = problems_of(addition2, 'train'), problems_of(addition2, 'val')
    assert (len(train), len(test)) == (9000, 1000)
    assert not set(train) & set(test)
    pairs = {p[:5] for p in train + test}
    assert pairs == {f"{a:02d}+{b:02d}" for a in range(100) for b in range(100)}  # every 2-digit problem
    for p in train + test:
        a, b, answer = int(p[:2]), int(p[3:5]), p[6:]
        assert p[5] == '=' and int(answer[::-1]) == a + b and len(answer) == 3
    meta = json.loads((addition2 / 'meta.json').read_text())
    assert meta == {'vocab_size': 12, 'chars': CHARS, 'example_len': 9, 'loss_from': 5, 'addition': {'digits': 2}}
    again = addition2.parent / 'again'
    script('data/addition/prepare.py', f'--out_dir={again}')
    assert (again / 'train.bin').read_bytes() == (addition2 / 'train.bin').read_bytes()  # deterministic
    sampled = addition2.parent / 'add5'
    script('data/addition/prepare.py', '--digits=5', '--max_problems=2000', f'--out_dir={sampled}')
    train5, test5 = problems_of(sampled, 'train'), problems_of(sampled, 'val')
    assert (len(train5), len(test5)) == (1800, 200) and not {p[:11] for p in train5} & {p[:11] for p in test5}


def test_batches_start_at_examples_and_mask_the_problem(addition2):
    vocab = vocabulary.read_vocab(addition2)
    n = corpus.split_tokens(str(addition2), 'train', 8, vocab)
    ix = corpus.starts(n, 8, (64,), torch.Generator().manual_seed(0), corpus.example_starts(str(addition2), 'train', n, vocab))
    assert (ix % 9 == 0).all() and len(set(ix.tolist())) > 50
    # the draws of before examples were starts of their own: the same batches, so the same results
    assert torch.equal(ix, torch.randint(n // 9, (64,), generator=torch.Generator().manual_seed(0)) * 9)
    x, y = corpus.windows(str(addition2), 'train', ix, 8, 'cpu', vocab)
    data = torch.from_numpy(np.fromfile(addition2 / 'train.bin', dtype=np.uint16).astype(np.int64)).view(-1, 9)
    rows = data[ix // 9]
    assert torch.equal(x, rows[:, :8])
    assert (y[:, :5] == -1).all() and torch.equal(y[:, 5:], rows[:, 6:])  # only the sum's 3 digits count
    stream = corpus.starts(1000, 32, (5,), torch.Generator().manual_seed(0))  # streams as before
    assert torch.equal(stream, torch.randint(1000 - 32, (5,), generator=torch.Generator().manual_seed(0)))


def test_example_runs_resume_exactly(addition2, tmp_path, script):
    args = [*TINY, f'--dataset={addition2}', '--block_size=8', '--dropout=0.1', '--max_iters=20', '--lr_decay_iters=20']
    whole = script('train.py', *args, f'--out_dir={tmp_path / "a"}')
    first = script('train.py', *args, f'--out_dir={tmp_path / "b"}', '--max_iters=10')
    second = script('train.py', *args, f'--out_dir={tmp_path / "b"}', '--init_from=resume')
    assert losses(first.out) + losses(second.out) == losses(whole.out)
    a, b = (torch.load(tmp_path / d / 'ckpt.pt', weights_only=True)['model'] for d in 'ab')
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # trains until the table is learnt
def test_a_tiny_model_learns_one_digit_addition(tmp_path, script):
    folder = tmp_path / 'add1'
    script('data/addition/prepare.py', '--digits=1', f'--out_dir={folder}')
    # all 100 one-digit problems to learn and to be scored on: the whole table, learnt (generalising to
    # problems never seen is what the 2-digit recipe shows: README, Addition)
    table = (folder / 'train.bin').read_bytes() + (folder / 'val.bin').read_bytes()
    (folder / 'train.bin').write_bytes(table)
    (folder / 'val.bin').write_bytes(table)
    out = tmp_path / 'out'
    script('train.py', *TINY, f'--dataset={folder}', f'--out_dir={out}', '--block_size=5', '--n_embd=64',
           '--batch_size=64', '--max_iters=400', '--lr_decay_iters=400', '--warmup_iters=20', '--learning_rate=3e-3',
           '--min_lr=3e-4', '--eval_interval=400', '--log_interval=100')
    p = script('eval.py', f'--out_dir={out}', '--task=addition', '--json=True')
    assert 'addition: accuracy 1.0000 (100/100)' in p.out
    assert json.loads(p.out.strip().splitlines()[-1]) == {'addition': {'acc': 1.0, 'correct': 100, 'n': 100}}
    assert script('sample.py', f'--out_dir={out}', '--start=7+8=').out == '7+8=15\n'
    assert script('sample.py', f'--out_dir={out}', '--start=0+0=').out == '0+0=0\n'
    for bad in ('12+3=', '7+8', 'seven+8=', '\\n'):
        assert_one_line_error(script('sample.py', f'--out_dir={out}', f'--start={bad}', check=False),
                              "is not an addition this model was trained on: give a+b= with a and b of 1 to 1 digits")


def test_an_example_longer_than_the_context_is_refused(addition2, tmp_path, script):
    p = script('train.py', *TINY, f'--dataset={addition2}', f'--out_dir={tmp_path / "out"}', '--block_size=6', check=False)
    assert_one_line_error(p, "block_size=6 does not fit the dataset's examples of 9 tokens: use --block_size=8")


def test_palette_round_trip_is_within_the_palettes_error():
    rng = np.random.default_rng(0)
    centres = np.array([[20, 30, 200], [220, 40, 40], [30, 200, 60], [240, 240, 240]], dtype=np.float32)
    pixels = centres[rng.integers(0, 4, 5000)] + rng.normal(0, 3, (5000, 3)).astype(np.float32)
    palette = images.kmeans(pixels, 4)
    assert np.abs(np.sort(palette.numpy(), 0) - np.sort(centres, 0)).max() < 1.0  # it finds the 4 colours
    imgs = np.clip(pixels, 0, 255).astype(np.uint8).reshape(-1, 10, 10, 3)  # 50 "images" of 10x10
    ids = images.quantise(imgs, palette)
    back = images.dequantise(ids, palette.tolist(), 10).reshape(-1, 3).astype(np.float32)
    nearest = palette.numpy()[np.linalg.norm(imgs.reshape(-1, 1, 3) - palette.numpy()[None], axis=2).argmin(1)]
    assert np.abs(back - nearest).max() <= 0.5  # each pixel becomes its nearest palette colour (rounded)
    assert np.linalg.norm(back - imgs.reshape(-1, 3), axis=1).max() < 20  # within the clusters' spread


def write_squares(folder, n=24, size=12):
    """n PNG images of two coloured squares on a plain background, each a different arrangement."""
    from PIL import Image
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    colours = np.array([[230, 30, 30], [30, 200, 40], [40, 60, 220], [250, 220, 40], [20, 20, 20]], dtype=np.uint8)
    for i in range(n):
        im = np.full((size, size, 3), colours[i % 5])
        for c in rng.choice(5, 2, replace=False):
            y, x = rng.integers(0, size - 4, 2)
            im[y:y + 4, x:x + 4] = colours[c]
        Image.fromarray(im.astype(np.uint8)).resize((24, 24), Image.NEAREST).save(folder / f'{i:03d}.png')
    return folder


def test_image_pipeline_prepares_trains_and_draws_a_png(tmp_path, script):
    from PIL import Image
    data = tmp_path / 'squares'
    p = script('data/images/prepare.py', f'--input={write_squares(tmp_path / "pngs")}', '--size=12', '--k=5',
               '--val_fraction=0.25', f'--out_dir={data}')
    assert '18 training and 6 val images of 12x12, 5 colours (mean error 0.0 of 255' in p.out
    meta = json.loads((data / 'meta.json').read_text())
    assert meta['vocab_size'] == 6 and meta['example_len'] == 145 and meta['loss_from'] == 0
    assert (data / 'val.bin').stat().st_size == 6 * 145 * 2
    out = tmp_path / 'out'
    script('train.py', *TINY, f'--dataset={data}', f'--out_dir={out}', '--block_size=144', '--max_iters=6')
    png = tmp_path / 'samples.png'
    p = script('sample.py', f'--out_dir={out}', f'--png={png}', '--num_samples=4')
    assert 'then 8 held-out images and their bottom halves' in p.err
    with Image.open(png) as im:  # a row of 4 samples, then 6 originals and 6 completions; 48 px + 2 px padding
        assert im.format == 'PNG' and im.size == (2 + 6 * 50, 2 + 3 * 50)
    p = script('eval.py', f'--out_dir={out}', '--json=True')
    val = json.loads(p.out.strip().splitlines()[-1])['val']
    assert val['tokens'] == 6 * 144 and val['bpb'] is None and 'bpb' not in p.out.splitlines()[0]
    assert_one_line_error(script('sample.py', f'--out_dir={out}', check=False), "an image model draws images, not "
                          "text: give --png=PATH")
    # regression: export.py --hf_dir took an image model for a GPT-2 BPE one and ended in a traceback
    hf = tmp_path / 'hf'
    assert_one_line_error(script('export.py', f'--out_dir={out}', f'--hf_dir={hf}', check=False),
                          "an image model has no text tokenizer for transformers")
    assert not hf.exists()


def test_image_inputs_mistakes_are_one_line(tmp_path, script):
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / 'notes.txt').write_text('no images here')
    p = script('data/images/prepare.py', f'--input={empty}', f'--out_dir={tmp_path / "out"}', check=False)
    assert_one_line_error(p, f"--input={empty} holds no images (.png, .jpg")
    np.save(tmp_path / 'gray.npy', np.zeros((4, 8, 8), dtype=np.uint8))
    p = script('data/images/prepare.py', f'--input={tmp_path / "gray.npy"}', check=False)
    assert_one_line_error(p, "holds a uint8 array of shape (4, 8, 8); give (N, H, W, 3) uint8 RGB")
    assert not os.path.exists(tmp_path / 'out')


def test_fewer_colours_than_k_make_the_palette_exactly(tmp_path, script):
    """Regression: images with fewer distinct colours than --k (default 512) were refused ("lower --k");
    now the palette is those colours, and every pixel keeps its own colour."""
    from PIL import Image
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (7, 3)).astype(np.uint8)
    pngs = tmp_path / 'pngs'
    pngs.mkdir()
    for i in range(8):
        Image.fromarray(colours[rng.integers(0, 7, (8, 8))]).save(pngs / f'{i}.png')
    data = tmp_path / 'data'
    p = script('data/images/prepare.py', f'--input={pngs}', '--size=8', f'--out_dir={data}')
    assert ("note: the training images have 7 distinct colours, fewer than k=512: the palette is exactly "
            "those colours") in p.out
    assert '7 training and 1 val images of 8x8, 7 colours (mean error 0.0 of 255' in p.out
    meta = json.loads((data / 'meta.json').read_text())
    assert sorted(map(tuple, meta['image']['palette'])) == sorted(map(tuple, colours.tolist()))
    assert meta['vocab_size'] == 8 and vocabulary.vocab_size_of(vocabulary.read_vocab(data)) == 8
    tokens = np.fromfile(data / 'train.bin', dtype=np.uint16).reshape(7, 65)
    assert (tokens[:, 0] == 7).all() and tokens[:, 1:].max() < 7  # the start token follows the palette
    imgs = images.load_images(str(pngs), 8)
    palette = torch.tensor(meta['image']['palette'])
    assert np.array_equal(images.dequantise(images.quantise(imgs, palette), meta['image']['palette'], 8), imgs)
