"""LoRA finetuning (Hu et al. 2021, arXiv 2106.09685) through Hugging Face peft, an optional dependency:
low-rank adapters beside chosen Linear layers, every weight of the model frozen. Only the adapters train,
so only they have gradients and AdamW state (README: "Finetuning on one GPU (LoRA)").

peft puts its layers into our GPT in place and we keep the GPT, not get_peft_model's PeftModel wrapper
(whose names gain 'base_model.model.'): the model keeps its class, config and methods, and only an adapted
layer's names change, `h.0.attn.c_attn.weight` becoming `h.0.attn.c_attn.base_layer.weight` beside
`...c_attn.lora_A.default.weight` (r, in) and `...c_attn.lora_B.default.weight` (out, r). The layer computes
W x + (alpha / r) B A dropout(x), B starting at zero. So configure_optimizers (it takes what requires grad),
DDP (it syncs what trains), torch.compile and activation checkpointing (per Block) take it as it is.

A LoRA checkpoint is a ckpt.pt whose 'model' holds the adapters alone, under peft's names (without
'default': `...c_attn.lora_A.weight`), beside 'lora' = {'rank', 'alpha', 'dropout', 'targets', 'base'}:
base is where the frozen weights come from, the run's init_from (a gpt2* name, or the absolute path of a
Hugging Face folder or of a .pt checkpoint), and model_args is their shape as trained (block_size cut).
loading.build puts base and adapters together again; export.py merges them (W + alpha/r B A) into a plain
checkpoint or Hugging Face folder that needs no peft.
"""
import os

import torch

from configurator import fail

SETTINGS = {'rank': 'lora_rank', 'alpha': 'lora_alpha', 'dropout': 'lora_dropout', 'targets': 'lora_targets'}


def _peft():
    try:
        import peft
    except ImportError:
        fail("lora_rank > 0 needs Hugging Face peft, the LoRA engine here: pip install peft")
    return peft


def _targets(text):
    return [t.strip() for t in text.split(',') if t.strip()]


def settings(config, given, init_from, fsdp, ckpt=None, ckpt_file=None):
    """The run's LoRA settings -> {'rank', 'alpha', 'dropout', 'targets', 'base'}, or None (no LoRA); one line
    for a mistake, before any weights are read. A resume takes its checkpoint's (config is updated to them;
    lora_dropout may change); a setting given that differs from it is refused, as is LoRA asked for on a
    checkpoint without it, or lora_rank=0 on one with it."""
    rank, alpha, dropout = config['lora_rank'], config['lora_alpha'], config['lora_dropout']
    if rank < 0:
        fail(f"lora_rank={rank} must be >= 0 (0: no LoRA, every weight trains)")
    if rank and config.get('optimizer') == 'muon':  # Muon takes the blocks' full matrices, which LoRA freezes
        fail("lora_rank > 0 trains low-rank adapters, which AdamW updates; optimizer='muon' is for the blocks' "
             "full weight matrices: use --optimizer=adamw with LoRA")
    if ckpt is not None:
        saved = ckpt.get('lora')
        if saved is None:
            if rank and 'lora_rank' in given:
                fail(f"{ckpt_file} was trained without LoRA, so it cannot resume with lora_rank={rank}; start "
                     f"LoRA on its weights as a new run: --init_from={ckpt_file} --out_dir=ANOTHER")
            return None
        ours = {**saved, 'targets': ','.join(saved['targets'])}
        asked = {**config, 'lora_targets': ','.join(_targets(config['lora_targets']))}
        clash = [f"{name}: checkpoint {ours[k]!r}, requested {asked[name]!r}" for k, name in SETTINGS.items()
                 if name in given and k != 'dropout' and asked[name] != ours[k]]
        if clash:
            fail(f"{ckpt_file} holds LoRA adapters that do not match the settings ({'; '.join(clash)}); leave "
                 f"them out to resume with the checkpoint's, or merge it (export.py) and start anew")
        saved = {**saved, 'dropout': float(dropout) if 'lora_dropout' in given else saved['dropout']}
        ckpt['lora'] = saved  # what loading.build puts the adapters on with
        config.update({name: ours[k] if k != 'dropout' else saved[k] for k, name in SETTINGS.items()})
    elif not rank:
        return None
    else:
        targets = _targets(config['lora_targets'])
        if init_from == 'scratch':
            fail("lora_rank > 0 adapts pretrained weights: give --init_from=gpt2* (or a Hugging Face folder, or "
                 "a checkpoint .pt); a model from scratch must train every weight")
        if not targets:
            fail("lora_targets is empty: name the Linear layers to adapt, e.g. c_attn,c_proj,c_fc")
        saved = {'rank': rank, 'alpha': float(alpha), 'dropout': float(dropout), 'targets': targets,
                 'base': os.path.abspath(init_from) if os.path.exists(init_from) else init_from}
    if fsdp:
        fail("LoRA is not sharded here: leave out --fsdp (a LoRA run's frozen weights in bfloat16 and its "
             "small adapters fit one GPU, and DDP replicates them)")
    if saved['alpha'] <= 0 or not 0 <= saved['dropout'] < 1:
        fail(f"lora_alpha={saved['alpha']} must be > 0 and lora_dropout={saved['dropout']} in [0, 1)")
    _peft()
    return saved


def attach(model, lora, adapters=None, dtype=None, merge=False, verbose=False):
    """model (a GPT) with peft's LoRA adapters on the Linear layers lora['targets'] names, every other weight
    frozen -> the same GPT, or with merge a plain GPT, the adapters folded into the weights (peft's
    merge_and_unload). adapters: their weights (a checkpoint's 'model'), else peft's init, under which the
    model computes what it did. dtype 'bfloat16' or 'float16' (training's autocast): the frozen weights are
    kept in it (half their bytes; autocast computes in it anyway), the adapters stay float32 for AdamW (and
    the GradScaler). verbose: a line on what trains. lora None: model as it is."""
    if lora is None:
        return model
    peft = _peft()
    linears = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    for target in lora['targets']:
        hits = [name for name in linears if name == target or name.endswith('.' + target)]
        if not hits:
            names = sorted({name.split('.', 3)[-1] for name in linears if '.h.' in name})
            fail(f"lora_targets: {target!r} names no Linear layer of the model; a Block's are {', '.join(names)}")
        if 'lm_head' in hits:  # its weight is wte's: a merged adapter would change the embedding too
            fail("lora_targets: lm_head shares its weight with the token embedding and cannot be adapted alone; "
                 "leave it out")
    config = peft.LoraConfig(r=lora['rank'], lora_alpha=lora['alpha'], lora_dropout=lora['dropout'],
                             target_modules=list(lora['targets']))
    wrapper = peft.get_peft_model(model, config)  # adapters into model, in place; base weights frozen
    if adapters is not None:
        loaded = peft.set_peft_model_state_dict(model, adapters)
        missing = [k for k in loaded.missing_keys if '.lora_' in k]
        if missing or loaded.unexpected_keys:
            raise ValueError(f"adapters missing: {missing[:3]}, unexpected: {loaded.unexpected_keys[:3]}")
    if merge:
        return wrapper.merge_and_unload()
    if dtype in ('bfloat16', 'float16'):  # what autocast would cast them to at every forward
        for p in model.parameters():
            if not p.requires_grad:
                p.data = p.data.to(getattr(torch, dtype))
    if verbose:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        print(f"LoRA rank {lora['rank']} (alpha {lora['alpha']:g}) on {','.join(lora['targets'])}: "
              f"{trainable:,} of {total:,} parameters train ({100 * trainable / total:.2f}%), the rest frozen "
              f"in {dtype if dtype in ('bfloat16', 'float16') else 'float32'}")
    return model


def model_state(model, lora):
    """What a checkpoint keeps of the model: {'model': the adapters' weights (peft's names) and 'lora': the
    settings}, or without LoRA {'model': every weight}, as before LoRA."""
    if lora is None:
        return {'model': model.state_dict()}
    return {'model': _peft().get_peft_model_state_dict(model), 'lora': lora}
