"""decoding.py: the two forms of a one-row matmul and the choice between them (no timings asserted).

    python -m pytest -q tests/test_decoding.py
"""
import pytest
import torch
import torch.nn as nn

import decoding
from model import GPT, GPTConfig


@pytest.fixture
def batched_matmuls(monkeypatch):
    """How many times torch.bmm and torch.baddbmm ran, so a test knows the split form really acted."""
    calls = []
    for name in ('bmm', 'baddbmm'):
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, _real=real, **kw: calls.append(1) or _real(*a, **kw))
    return calls


def tiny(bias=True):
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=64, bias=bias)).eval()


@pytest.mark.parametrize('bias', [True, False])
def test_both_forms_give_identical_tokens(batched_matmuls, bias):
    model = tiny(bias)
    prompt = torch.tensor([[1, 2, 3]])
    tokens = {}
    for form in ('plain', 'split', 'plain'):
        assert decoding.install(model, form) == form
        n = len(batched_matmuls)
        torch.manual_seed(7)
        tokens[form] = model.generate(prompt, 24, temperature=0.8, top_k=20)
        # 4 Linear layers a block for each of the 23 one-token steps (the prompt is 3 rows), and the
        # head for those and the prompt's last position
        assert len(batched_matmuls) - n == (23 * 2 * 4 + 24 if form == 'split' else 0)
    assert torch.equal(tokens['plain'], tokens['split'])
    assert not any('forward' in vars(m) for m in model.modules())  # 'plain' left nn.Linear as it was


def test_split_linear_falls_back_to_plain_where_it_cannot_split(batched_matmuls):
    torch.manual_seed(0)
    odd, even = nn.Linear(8, 7), nn.Linear(8, 6 * torch.get_num_threads())  # 7 rows do not split in 2+
    x = torch.randn(1, 1, 8)
    assert torch.allclose(decoding.split_linear(even, x), even(x), atol=1e-6)
    assert len(batched_matmuls) == 1
    for linear, inp in ((odd, x), (even, torch.randn(2, 1, 8))):  # several rows: one matmul already
        assert torch.equal(decoding.split_linear(linear, inp), linear(inp))
    assert len(batched_matmuls) == 1


def test_the_faster_median_wins():
    assert decoding.faster({'plain': [2.0, 2.1, 1.9], 'split': [1.0, 1.2, 0.9]}) == 'split'
    assert decoding.faster({'split': [2.0, 2.1, 1.9], 'plain': [1.0, 1.2, 0.9]}) == 'plain'
    # one slow outlier (the machine was busy for a moment) does not outvote the median
    assert decoding.faster({'plain': [1.0, 9.0, 1.1], 'split': [1.5, 1.5, 1.5]}) == 'plain'
    assert decoding.faster({'split': [1.0, 1.0], 'plain': [1.0, 1.0]}) == 'plain'  # a tie patches nothing


def test_auto_times_once_per_process_and_keeps_the_faster(monkeypatch):
    told = {'plain': [3e-3, 3e-3, 3e-3], 'split': [1e-3, 2e-3, 1e-3]}
    timed = []
    monkeypatch.setattr(decoding, 'time_forms', lambda model: timed.append(model) or told)
    monkeypatch.setattr(decoding, '_chosen', {})
    model = tiny()
    assert decoding.install(model, 'auto') == 'split' and len(timed) == 1
    assert all('forward' in vars(m) for m in model.modules() if isinstance(m, nn.Linear))
    assert decoding.install(tiny(), 'auto') == 'split' and len(timed) == 1  # the same shapes: not timed again
    told['plain'] = [1e-4] * 3
    assert decoding.install(tiny(bias=False), 'auto') == 'plain' and len(timed) == 2  # other shapes: timed
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:  # another thread count: timed again
        assert decoding.install(model, 'auto') == 'plain' and len(timed) == 3
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ValueError, match="decode_form='fast': use one of auto, plain, split"):
        decoding.install(model, 'fast')


def test_time_forms_times_both_forms_and_leaves_the_random_state():
    model = tiny()
    state = torch.random.get_rng_state()
    times = decoding.time_forms(model, rounds=2, min_seconds=0.0)
    assert sorted(times) == ['plain', 'split'] and all(len(t) == 2 and min(t) > 0 for t in times.values())
    assert torch.equal(torch.random.get_rng_state(), state)
