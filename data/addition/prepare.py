"""Addition problems for a GPT to learn (minGPT's play_math, after the GPT-3 paper's arithmetic): every pair
of n-digit numbers, or a random sample of them when there are more than --max_problems.

    python data/addition/prepare.py                 # 2 digits: all 10,000 problems, 10% held out
    python data/addition/prepare.py --digits=4 --out_dir=data/addition4

Each problem is one example of 3n+3 characters: a and b with n digits each (zero-padded), then their sum
with n+1 digits, written backwards, lowest digit first: 23 + 45 = 68 is `23+45=860`. Backwards, each digit
of the sum depends only on digits already seen and on the carry, the order a person adds in. Only the
sum's digits count in the loss (loss_from in meta.json). The problems are shuffled with --seed and the first
--test_fraction of them become val.bin, the held-out set that eval.py --task=addition scores; train and
test share no problem. Running it again gives byte-identical files.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from configurator import configure, fail, make_dir  # noqa: E402
from data.shakespeare_char.prepare import write_atomic, write_meta  # noqa: E402

CHARS = ['+', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '=']  # token i is CHARS[i]


def encode(a, b, digits):
    """Problems a + b (integer arrays) as token ids: (len(a), 3 * digits + 3)."""
    def digit_ids(x, n):  # (len(x), n) token ids of x's n digits, highest first
        return (x[:, None] // 10 ** np.arange(n - 1, -1, -1) % 10) + CHARS.index('0')
    plus, equals = np.full((len(a), 1), CHARS.index('+')), np.full((len(a), 1), CHARS.index('='))
    answer = digit_ids(a + b, digits + 1)[:, ::-1]  # lowest digit first
    return np.concatenate([digit_ids(a, digits), plus, digit_ids(b, digits), equals, answer], 1).astype(np.uint16)


def problems(digits, max_problems, seed):
    """Distinct pairs (a, b) of n-digit numbers, shuffled: all of them, or max_problems drawn at random."""
    total = 10 ** (2 * digits)
    rng = np.random.default_rng(seed)
    pick = rng.permutation(total) if total <= max_problems else rng.choice(total, max_problems, replace=False)
    return pick // 10 ** digits, pick % 10 ** digits


def prepare(digits, test_fraction, seed, max_problems, out_dir):
    a, b = problems(digits, max_problems, seed)
    n_test = int(round(test_fraction * len(a)))
    if not 0 < n_test < len(a):
        fail(f"test_fraction={test_fraction} of {len(a):,} problems leaves no test or no training problem")
    ids = encode(a, b, digits)
    make_dir(out_dir)
    write_atomic(os.path.join(out_dir, 'val.bin'), ids[:n_test].tobytes())
    write_atomic(os.path.join(out_dir, 'train.bin'), ids[n_test:].tobytes())
    write_meta(out_dir, {'vocab_size': len(CHARS), 'chars': CHARS, 'example_len': 3 * digits + 3,
                         'loss_from': 2 * digits + 1, 'addition': {'digits': digits}})
    return len(a) - n_test, n_test


if __name__ == '__main__':
    cfg = {'digits': 2,              # digits of each operand
           'test_fraction': 0.1,     # of the problems, held out as val.bin
           'seed': 1337,             # the shuffle (and the sample) of the problems
           'max_problems': 1_000_000,  # more possible problems than this: a random sample of this many
           'out_dir': os.path.dirname(os.path.abspath(__file__))}
    configure(cfg)
    if not (type(cfg['digits']) is int and 1 <= cfg['digits'] <= 9):
        fail(f"digits={cfg['digits']!r}: give 1 to 9")
    if not 0 < cfg['test_fraction'] < 1:
        fail(f"test_fraction={cfg['test_fraction']}: give a fraction between 0 and 1")
    n_train, n_test = prepare(cfg['digits'], cfg['test_fraction'], cfg['seed'], cfg['max_problems'], cfg['out_dir'])
    print(f"{n_train:,} training and {n_test:,} held-out problems of {cfg['digits']} digits, "
          f"{3 * cfg['digits'] + 3} tokens each, in {cfg['out_dir']}")
