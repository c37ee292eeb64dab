"""GPT-2 style language model, all in this file.

References: OpenAI's GPT-2 release (tensorflow model.py) and Hugging Face's modeling_gpt2.py,
whose parameter names we keep so state dicts match key for key.
Shapes: B batch, T time (sequence), C channels (n_embd), nh heads, hs head size (C // nh), V vocab.
"""
import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024   # longest sequence the learned position table covers
    vocab_size: int = 50304  # GPT-2's 50257 padded to a multiple of 64: a faster lm_head matmul
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True        # in Linear and LayerNorm, as GPT-2; False: a bit better and faster

    def __post_init__(self):
        for name in ('block_size', 'vocab_size', 'n_layer', 'n_head', 'n_embd'):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")


class KVCache:
    """Keys and values of the positions seen so far, preallocated for block_size positions.

    Filled in place, so a decoding step copies one position per layer instead of the whole past."""

    def __init__(self, config):
        self.config = config
        self.k = self.v = None  # (n_layer, B, nh, block_size, hs) each, allocated on first use
        self.pos = 0            # positions filled so far

    def update(self, layer, k, v):
        B, nh, T, hs = k.shape
        if self.k is None:
            shape = (self.config.n_layer, B, nh, self.config.block_size, hs)
            self.k = torch.empty(shape, dtype=k.dtype, device=k.device)
            self.v = torch.empty_like(self.k)
        keys, values = self.k[layer], self.v[layer]
        keys.narrow(2, self.pos, T).copy_(k)
        values.narrow(2, self.pos, T).copy_(v)
        return keys.narrow(2, 0, self.pos + T), values.narrow(2, 0, self.pos + T)  # (B, nh, past+T, hs)


class CausalSelfAttention(nn.Module):

    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, kv_cache=None):
        B, T, C = x.size()
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)
        q, k, v = qkv.transpose(1, 3).unbind(2)  # each (B, nh, T, hs)
        past = kv_cache.pos if kv_cache is not None else 0
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)   # (B, nh, past + T, hs)
        # one new token attends to every cached one; several after cached ones (a chat's next turn)
        # see the past and the new ones up to themselves. A branch: under torch.compile T may be
        # symbolic, and SDPA takes a bool, not a SymBool
        causal = True if T > 1 else False
        mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past) if causal and past else None
        # flash / memory-efficient kernels on CUDA
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate='tanh')  # GPT-2 was trained with the tanh approximation
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, kv_cache=None):
        x = x + self.attn(self.ln_1(x), kv_cache)
        return x + self.mlp(self.ln_2(x))


def sample_logits(logits, temperature=1.0, top_k=None, top_p=None):
    """Pick one token per row of logits (B, V) -> (B, 1). temperature 0 is greedy.

    top_k keeps the k most likely tokens; top_p keeps the smallest set of most likely tokens whose
    probability adds up to at least top_p (nucleus sampling, Holtzman et al. 2019)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float()
    # max 0 before dividing: a tiny temperature then gives -inf, not nan
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float('-inf'))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
        drop = mass_before >= top_p
        drop[:, 0] = False  # the most likely token survives, even if top_p rounds to 0 in float32
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), float('-inf'))
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying (Press & Wolf 2017): the output projection is the token embedding
        self.transformer.wte.weight = self.lm_head.weight
        # init (GPT-2): every Linear/Embedding weight N(0, 0.02), biases 0, LayerNorm (1, 0); each
        # c_proj adds to the residual stream, twice per block, so its weights get std 0.02/sqrt(2 *
        # n_layer): the stream's variance does not grow with depth
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith('c_proj.weight'):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def get_num_params(self, non_embedding=True):
        """Parameter count; the tied wte/lm_head counts once, and non_embedding drops wpe."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx, targets=None, kv_cache=None):
        """idx (B, T) token ids -> (logits, loss). With targets (B, T): logits (B, T, V) and the mean
        cross-entropy (targets of -1 are ignored). Without: the last position's logits (B, 1, V) and
        None. With a KVCache, idx (one token or more) continues the sequence the cache holds."""
        B, T = idx.size()
        past = kv_cache.pos if kv_cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of length {past + T} is longer than "
                             f"block_size={self.config.block_size}")
        pos = torch.arange(past, past + T, dtype=torch.long, device=idx.device)  # (T,)
        tok_emb, pos_emb = self.transformer.wte(idx), self.transformer.wpe(pos)  # (B, T, C), (T, C)
        x = self.transformer.drop(tok_emb + pos_emb)
        for block in self.transformer.h:
            x = block(x, kv_cache)
        x = self.transformer.ln_f(x)
        if kv_cache is not None:
            kv_cache.pos += T
        if targets is None:
            return self.lm_head(x[:, -1:, :]), None  # (B, 1, V)
        logits = self.lm_head(x)  # (B, T, V); the loss in float32, also from bfloat16 logits (FSDP)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def crop_block_size(self, block_size):
        """Shrink the context (e.g. GPT-2's 1024 down to 256) by cutting the position table."""
        if not 0 < block_size <= self.config.block_size:
            raise ValueError(f"block_size={block_size} must be in [1, {self.config.block_size}]")
        self.config.block_size = block_size
        wpe = self.transformer.wpe
        wpe.weight = nn.Parameter(wpe.weight[:block_size].detach().clone())

    # Hugging Face's GPT-2 has Conv1D layers, whose weights are stored (in, out): ours transposed
    _TRANSPOSED = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight',
                   'mlp.c_proj.weight')

    @classmethod
    def from_hf_state_dict(cls, sd, config):
        """A GPT from a Hugging Face GPT2LMHeadModel state dict; every tensor's shape is checked."""
        model = cls(config)
        ours = model.state_dict()
        missing = [k for k in ours if k not in sd]
        if missing:
            raise ValueError(f"the state dict lacks {len(missing)} tensors, e.g. {missing[:3]}")
        with torch.no_grad():
            for k, p in ours.items():  # our names lead: HF's set of buffers varies by version
                src = sd[k].t() if k.endswith(cls._TRANSPOSED) else sd[k]
                if src.shape != p.shape:
                    raise ValueError(f"shape mismatch for {k}: ours {tuple(p.shape)}, "
                                     f"HF {tuple(src.shape)}")
                p.copy_(src)
        return model

    @classmethod
    def from_pretrained(cls, name_or_path, override_args=None):
        """GPT-2 weights: 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl' or a save_pretrained folder."""
        unknown = set(override_args or {}) - {'dropout'}
        if unknown:
            raise ValueError(f"only dropout can be overridden, not {sorted(unknown)}")
        from transformers import GPT2LMHeadModel  # imported here: only this path needs transformers
        try:
            hf = GPT2LMHeadModel.from_pretrained(name_or_path)
        except Exception as e:  # a missing folder or download, a damaged weights file, ...
            reason = (str(e).splitlines() or [type(e).__name__])[0]
            raise ValueError(f"cannot load GPT-2 weights from {name_or_path!r} (a gpt2* name or a "
                             f"local save_pretrained directory): {reason}") from e
        hc = hf.config
        if hc.activation_function not in ('gelu_new', 'gelu_pytorch_tanh'):
            raise ValueError(f"{name_or_path}: activation {hc.activation_function!r} is not "
                             f"GPT-2's tanh GELU")
        config = GPTConfig(block_size=hc.n_positions, vocab_size=hc.vocab_size, n_layer=hc.n_layer,
                           n_head=hc.n_head, n_embd=hc.n_embd, bias=True, **(override_args or {}))
        return cls.from_hf_state_dict(hf.state_dict(), config)

    def to_hf(self, vocab_size=None, **hf_config):
        """The inverse of from_pretrained: a transformers GPT2LMHeadModel with the same logits.
        vocab_size keeps the first rows, e.g. GPT-2's 50257 of our 50304; the biases that bias=False
        leaves out are zeros there. hf_config: more GPT2Config fields."""
        from transformers import GPT2Config, GPT2LMHeadModel
        c, ours = self.config, self.state_dict()
        hf = GPT2LMHeadModel(GPT2Config(
            vocab_size=vocab_size or c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
            n_layer=c.n_layer, n_head=c.n_head, activation_function='gelu_new',
            resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout, **hf_config))
        with torch.no_grad():
            # parameters, not buffers (which vary by version); lm_head is wte
            for k, p in hf.named_parameters():
                src = ours[k].t() if k.endswith(self._TRANSPOSED) else ours.get(k)
                p.copy_(src[:len(p)] if src is not None else torch.zeros_like(p))  # no bias: zeros
        return hf

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, verbose=True, skip=()):
        """AdamW that decays matrices and embeddings (ndim >= 2), not biases and LayerNorm gains:
        shrinking a gain or an offset toward zero regularises nothing. verbose prints the groups;
        skip: names of parameters another optimizer updates (optimizers.py: Muon's)."""
        params = [p for n, p in self.named_parameters() if p.requires_grad and n not in skip]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{'params': decay, 'weight_decay': weight_decay},
                  {'params': no_decay, 'weight_decay': 0.0}]
        if verbose:
            print(f"decayed tensors: {len(decay)} ({sum(p.numel() for p in decay):,} parameters), "
                  f"non-decayed: {len(no_decay)} ({sum(p.numel() for p in no_decay):,} parameters)")
        fused = device_type == 'cuda' and 'fused' in inspect.signature(torch.optim.AdamW).parameters
        extra = {'fused': True} if fused else {}
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)

    def estimate_mfu(self, fwdbwd_per_iter, dt, peak_flops):
        """Model FLOPs utilization: achieved FLOP/s over the device's peak_flops; None without one
        (a CPU). FLOPs per token 6N + 12 L H Q T, N the non-embedding parameters (PaLM, App. B)."""
        if not peak_flops:
            return None
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        flops_per_token = 6 * self.get_num_params() + 12 * L * H * Q * T
        return flops_per_token * T * fwdbwd_per_iter / dt / peak_flops

    @torch.no_grad()
    def generate_stream(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                        use_cache=True):
        """Continue idx (B, T) one step at a time, yielding each new token (B, 1) as it is drawn.
        Every step sees the last block_size tokens, as a full recompute would. Within the context
        the KV cache makes a step cost one position; past block_size the window's learned positions
        shift at every step, so the window is re-encoded in full (exactness first)."""
        block_size = self.config.block_size
        cache = None
        for _ in range(max_new_tokens):
            if not use_cache or idx.size(1) > block_size:
                logits, _ = self(idx[:, -block_size:])
            elif cache is None:  # the prompt, once
                cache = KVCache(self.config)
                logits, _ = self(idx, kv_cache=cache)
            else:                # the cache holds all but the newest token
                logits, _ = self(idx[:, -1:], kv_cache=cache)
            idx_next = sample_logits(logits[:, -1, :], temperature, top_k, top_p)
            yield idx_next
            idx = torch.cat((idx, idx_next), dim=1)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, use_cache=True):
        """Continue idx (B, T) by max_new_tokens tokens -> (B, T + max_new_tokens): generate_stream."""
        stream = self.generate_stream(idx, max_new_tokens, temperature, top_k, top_p, use_cache)
        for idx_next in stream:
            idx = torch.cat((idx, idx_next), dim=1)
        return idx
