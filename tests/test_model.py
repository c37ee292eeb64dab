"""model.py on tiny configs: shapes, init, causality, KV cache, sampling filters, HF GPT-2 equivalence.
Run: python -m pytest -q tests/test_model.py"""
import math

import pytest
import torch

from model import GPT, GPTConfig, KVCache, sample_logits

TINY = dict(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=65, dropout=0.0)


def tiny_model(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**TINY, **kw})).eval()


@pytest.mark.parametrize('name, shape, total, non_embedding', [
    ('gpt2', (12, 12, 768), 124_439_808, 123_653_376),
    ('gpt2-medium', (24, 16, 1024), 354_823_168, None),
    ('gpt2-large', (36, 20, 1280), 774_030_080, None),
    ('gpt2-xl', (48, 25, 1600), 1_557_611_200, None),
])
def test_param_counts_match_gpt2(name, shape, total, non_embedding):
    n_layer, n_head, n_embd = shape
    with torch.device('meta'):  # shapes only, no memory
        model = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=50257))
    assert model.get_num_params(non_embedding=False) == total
    if non_embedding:
        assert model.get_num_params() == non_embedding


def test_forward_shapes_and_init_loss():
    model = tiny_model()
    x, y = torch.randint(0, 65, (4, 32)), torch.randint(0, 65, (4, 32))
    logits, loss = model(x, y)
    assert logits.shape == (4, 32, 65)
    assert abs(loss.item() - math.log(65)) < 0.1  # near-uniform predictions at init
    logits, loss = model(x)
    assert logits.shape == (4, 1, 65) and loss is None
    torch.testing.assert_close(logits[:, 0], model(x, y)[0][:, -1])


def test_loss_ignores_minus_one_and_takes_non_contiguous_targets():
    model = tiny_model()
    x = torch.randint(0, 65, (2, 33))
    y = x[:, 1:].clone()
    y[:, 16:] = -1
    _, loss = model(x[:, :-1], y)
    logits, _ = model(x[:, :-1], x[:, 1:])  # a non-contiguous slice as targets must work
    ref = torch.nn.functional.cross_entropy(logits[:, :16].reshape(-1, 65), x[:, 1:17].reshape(-1))
    torch.testing.assert_close(loss, ref)


def test_too_long_sequence_is_a_clear_error():
    with pytest.raises(ValueError, match='longer than block_size=32'):
        tiny_model()(torch.zeros(1, 33, dtype=torch.long))


def test_config_rejects_bad_shapes():
    with pytest.raises(ValueError, match='n_embd=64 is not divisible by n_head=5'):
        GPTConfig(n_embd=64, n_head=5)
    with pytest.raises(ValueError, match='block_size=0 must be positive'):
        GPTConfig(block_size=0)


def test_causality():
    model = tiny_model()
    x = torch.randint(0, 65, (1, 32))
    x2 = x.clone()
    x2[0, 20:] = (x2[0, 20:] + 1) % 65
    a, _ = model(x, x)
    b, _ = model(x2, x2)
    torch.testing.assert_close(a[:, :20], b[:, :20], rtol=0, atol=0)
    assert not torch.allclose(a[:, 20:], b[:, 20:])


def test_init_scales_residual_projections():
    model = GPT(GPTConfig(n_layer=8, n_head=4, n_embd=256, vocab_size=100, block_size=32))
    c_proj = model.transformer.h[0].mlp.c_proj.weight
    c_fc = model.transformer.h[0].mlp.c_fc.weight
    assert abs(c_proj.std().item() - 0.02 / math.sqrt(16)) < 5e-4
    assert abs(c_fc.std().item() - 0.02) < 1e-3
    assert model.transformer.h[0].attn.c_attn.bias.abs().max() == 0


def test_weight_tying_survives_state_dict_round_trip(tmp_path):
    model = tiny_model()
    assert model.lm_head.weight is model.transformer.wte.weight
    torch.save(model.state_dict(), tmp_path / 'sd.pt')
    fresh = GPT(GPTConfig(**TINY))
    fresh.load_state_dict(torch.load(tmp_path / 'sd.pt', weights_only=True))
    assert fresh.lm_head.weight is fresh.transformer.wte.weight
    x = torch.randint(0, 65, (2, 32))
    torch.testing.assert_close(fresh.eval()(x, x)[0], model(x, x)[0], rtol=0, atol=0)


def test_bias_false_has_no_biases():
    model = tiny_model(bias=False)
    assert not [n for n, _ in model.named_parameters() if n.endswith('bias')]
    assert model.get_num_params(False) == 2 * (4 * 64 * 64 + 8 * 64 * 64 + 2 * 64) + 64 + 65 * 64 + 32 * 64
    x = torch.randint(0, 65, (2, 32))
    model(x, x)[1].backward()


def test_crop_block_size():
    model = tiny_model()
    x = torch.randint(0, 65, (1, 16))
    before, _ = model(x, x)
    model.crop_block_size(16)
    assert model.transformer.wpe.weight.shape == (16, 64) and model.config.block_size == 16
    torch.testing.assert_close(model(x, x)[0], before)
    with pytest.raises(ValueError):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_configure_optimizers_decays_matrices_only(capsys):
    model = tiny_model()
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu')
    decay, no_decay = opt.param_groups
    assert decay['weight_decay'] == 0.1 and no_decay['weight_decay'] == 0.0
    assert all(p.dim() >= 2 for p in decay['params']) and all(p.dim() < 2 for p in no_decay['params'])
    assert len(decay['params']) + len(no_decay['params']) == len(list(model.parameters()))
    assert 'decayed tensors: 10' in capsys.readouterr().out


def test_estimate_mfu():
    model = tiny_model()
    assert model.estimate_mfu(4, 0.1, None) is None  # no peak known (a CPU): no made-up number
    flops_per_token = 6 * model.get_num_params() + 12 * 2 * 4 * 16 * 32
    assert model.estimate_mfu(4, 0.5, peak_flops=1e9) == pytest.approx(flops_per_token * 32 * 4 / 0.5 / 1e9)


def test_top_k_and_top_p_keep_exactly_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]]))
    draws = lambda **kw: {sample_logits(logits, **kw).item() for _ in range(300)}
    torch.manual_seed(0)
    assert draws(top_k=2) == {0, 1}
    assert draws(top_k=1) == {0}
    assert draws(top_p=0.5) == {0}           # 0.5 alone reaches 0.5
    assert draws(top_p=0.7) == {0, 1}        # 0.75 >= 0.7
    assert draws(top_p=0.8) == {0, 1, 2}     # 0.9 >= 0.8
    assert draws(top_p=1.0) == {0, 1, 2, 3}
    assert draws(top_k=3, top_p=0.7) == {0, 1}
    assert draws(temperature=0) == {0}


@pytest.mark.parametrize('prompt_len, new', [(1, 20), (30, 2), (31, 40), (1, 80)])
@pytest.mark.parametrize('temperature', [0.0, 1.0])
def test_kv_cache_matches_full_recompute(prompt_len, new, temperature):
    """Also past block_size (32): the window slides and must be re-encoded like the uncached loop."""
    model = tiny_model()
    idx = torch.randint(0, 65, (2, prompt_len))
    torch.manual_seed(1)
    cached = model.generate(idx, new, temperature=temperature, top_k=40)
    torch.manual_seed(1)
    plain = model.generate(idx, new, temperature=temperature, top_k=40, use_cache=False)
    assert cached.shape == (2, prompt_len + new)
    assert torch.equal(cached[:, :prompt_len], idx)
    assert torch.equal(cached, plain)


def test_kv_cache_logits_match():
    model = tiny_model()
    x = torch.randint(0, 65, (2, 20))
    full, _ = model(x, x)
    cache = KVCache(model.config)
    first, _ = model(x[:, :10], kv_cache=cache)
    torch.testing.assert_close(first[:, 0], full[:, 9])
    for t in range(10, 20):
        step, _ = model(x[:, t:t + 1], kv_cache=cache)
        torch.testing.assert_close(step[:, 0], full[:, t], atol=1e-5, rtol=1e-5)


def _random_hf_model(tmp_path):
    transformers = pytest.importorskip('transformers')
    cfg = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=64, vocab_size=101, n_positions=32,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # HF's init leaves biases 0 and LayerNorm (1, 0): a swapped bias would hide
        for name, p in hf.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if name.endswith(('ln_1.weight', 'ln_2.weight', 'ln_f.weight'))
                    else 0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path / 'hf')
    return hf, tmp_path / 'hf'


def test_from_pretrained_matches_transformers(tmp_path):
    hf, path = _random_hf_model(tmp_path)
    ours = GPT.from_pretrained(str(path)).eval()
    assert ours.config.vocab_size == 101 and ours.config.block_size == 32 and ours.config.n_layer == 2
    x = torch.randint(0, 101, (3, 32))
    with torch.no_grad():
        ref = hf(x, labels=x)
        logits, loss = ours(x, x)
        _, shifted_loss = ours(x[:, :-1], x[:, 1:])  # HF shifts labels inside
    assert (logits - ref.logits).abs().max().item() <= 1e-5
    assert abs(shifted_loss.item() - ref.loss.item()) <= 1e-5


def test_from_pretrained_overrides_and_errors(tmp_path):
    _, path = _random_hf_model(tmp_path)
    assert GPT.from_pretrained(str(path), dict(dropout=0.1)).config.dropout == 0.1
    with pytest.raises(ValueError, match=r"only dropout can be overridden.*n_layer"):
        GPT.from_pretrained(str(path), dict(n_layer=3))
    with pytest.raises(ValueError, match='cannot load GPT-2 weights'):
        GPT.from_pretrained(str(tmp_path / 'nowhere'))


def test_cached_continuation_of_several_tokens_equals_the_full_forward():
    """A chat's next turn: several tokens after cached ones see the past and the new tokens up to
    themselves, so its logits equal a fresh forward of the whole sequence."""
    model = tiny_model().eval()
    seq = torch.randint(0, 65, (1, 12), generator=torch.Generator().manual_seed(0))
    cache = KVCache(model.config)
    with torch.no_grad():
        model(seq[:, :5], kv_cache=cache)
        model(seq[:, 5:9], kv_cache=cache)  # 4 tokens on a cache of 5
        cached = model(seq[:, 9:10], kv_cache=cache)[0]
        full = model(seq[:, :10])[0]
    assert cache.pos == 10
    assert torch.allclose(cached, full, atol=1e-5)


def test_model_compiles_as_one_graph():
    """The training forward and a one-row decoding step each compile without a graph break."""
    model = tiny_model()
    compiled = torch.compile(model, backend='eager', fullgraph=True)
    x, y = torch.randint(0, 65, (2, 32)), torch.randint(0, 65, (2, 32))
    assert torch.allclose(compiled(x, y)[1], model(x, y)[1])
    assert torch.allclose(compiled(x[:1, :1])[0], model(x[:1, :1])[0], atol=1e-6)  # one row, as in decoding


def test_generated_tokens_can_be_trained_on():
    """Regression: generate ran under torch.inference_mode, so its output could not be edited in place
    or used as a training batch ('Inference tensors cannot be saved for backward')."""
    model = tiny_model()
    out = model.generate(torch.zeros((2, 1), dtype=torch.long), 8)
    out[:, 0] = 1
    _, loss = model.train()(out[:, :-1], out[:, 1:])
    loss.backward()
    grad = model.lm_head.weight.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_tiny_temperature_is_near_greedy_not_nan():
    """Regression: logits / 1e-40 overflowed to inf and softmax gave nan ('probability tensor contains
    either inf, nan or element < 0')."""
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.5, -1.0, 0.0]])
    assert sample_logits(logits, temperature=1e-40).tolist() == [[1], [0]]


def test_tiny_top_p_keeps_the_most_likely_token():
    """Regression: top_p=1e-50 rounds to 0 in float32, so every token was dropped, the most likely
    one too, and multinomial raised 'probability tensor contains either inf, nan or element < 0'."""
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.5, -1.0, 0.0]])
    assert sample_logits(logits, top_p=1e-50).tolist() == [[1], [0]]


def test_cached_decoding_compiles_as_one_graph():
    """Regression: SDPA's is_causal was `past == 0`; once dynamo made the cache position symbolic (the
    third call) that was a SymBool, which SDPA rejects, so every decoding step broke the graph and
    sample.py --compile=True compiled each layer on its own (past 8 layers: not at all)."""
    torch._dynamo.reset()  # what earlier tests compiled would change which sizes are dynamic
    model = tiny_model()
    compiled = torch.compile(model, backend='eager', fullgraph=True)
    for prompt_len in (5, 7, 9):  # prompts of several lengths: the prompt length becomes dynamic too
        prompt = torch.randint(0, 65, (1, prompt_len))
        cache, ref_cache = KVCache(model.config), KVCache(model.config)
        with torch.no_grad():
            assert torch.allclose(compiled(prompt, kv_cache=cache)[0], model(prompt, kv_cache=ref_cache)[0], atol=1e-6)
            for t in range(4):  # then positions 5, 6, 7, 8 (...): the position becomes dynamic
                x = prompt[:, t:t + 1]
                assert torch.allclose(compiled(x, kv_cache=cache)[0], model(x, kv_cache=ref_cache)[0], atol=1e-6)
