"""A chat dataset to teach the quick start's Shakespeare model a format: it is asked to spell a word, and answers
in capitals, letter by letter (honour -> H-O-N-O-U-R). README: Chat.

    python data/spelling/prepare.py          # tiny Shakespeare: data/shakespeare_char/input.txt, else downloaded
    python data/spelling/prepare.py --input=path/to/tinyshakespeare.txt

The words are the distinct lowercase words of 3 to 8 letters in the text, shuffled with a fixed seed; the last
10% are held out, so the val conversations ask only for words that no training conversation spells. The
vocabulary is the text's characters (the Shakespeare model's) and the two chat tokens. Writes
conversations.jsonl, then what data/chat/prepare.py writes for it. Running it again gives the same files.
"""
import json
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from data.chat.prepare import prepare as prepare_chat  # noqa: E402
from data.shakespeare_char.prepare import main, write_atomic  # noqa: E402

QUESTIONS = ("spell {}", "How do you spell {}?", "{}: spell it.", "Spell {}.")  # each fits the block of 64
HELD_OUT = 0.1


def conversations(text, seed=1337):
    """A conversation per word: [{"messages": [user, assistant]}], the held-out words last."""
    words = sorted({w for w in re.findall(r"\b[a-z]+\b", text) if 3 <= len(w) <= 8})
    rng = np.random.default_rng(seed)
    words = [words[i] for i in rng.permutation(len(words))]
    return [{'messages': [{'role': 'user', 'content': QUESTIONS[rng.integers(len(QUESTIONS))].format(w)},
                          {'role': 'assistant', 'content': '-'.join(w.upper())}]} for w in words]


def prepare(text, out_dir):
    convs = conversations(text)
    path = os.path.join(out_dir, 'conversations.jsonl')
    write_atomic(path, ''.join(json.dumps(c) + '\n' for c in convs).encode())
    return prepare_chat(input_path=path, vocab={'chars': sorted(set(text))}, val_fraction=HELD_OUT, out_dir=out_dir)


if __name__ == '__main__':
    main(prepare, __file__)
