"""The optimizers train.py steps: AdamW on every parameter (nanoGPT's, optimizer='adamw'), or Muon on the
weight matrices inside the transformer blocks with AdamW on the rest (optimizer='muon').

Muon (Keller Jordan, https://kellerjordan.github.io/posts/muon/) is torch.optim.Muon: momentum, then the
update matrix orthogonalised by a few Newton-Schulz steps (in bfloat16), so that every direction of a
weight matrix moves at about the same rate. It suits the hidden layers' matrices only: the embeddings, the
tied head (wte is lm_head), biases and LayerNorm gains stay with AdamW, as in the modded-nanogpt speedrun.
"""
import torch

import checkpoint
from configurator import fail

OPTIMIZERS = ('adamw', 'muon')
SCHEDULES = ('cosine', 'wsd', 'linear')
# How torch.optim.Muon scales muon_lr for a weight of shape (out, in), from torch's _adjust_lr:
#   'original': by sqrt(max(1, out / in)), Keller Jordan's rule: a square matrix and a wide one (c_proj)
#       step at muon_lr; a tall one (c_attn 3C x C, c_fc 4C x C) steps sqrt(3) or 2 times as far. Its
#       learning rates are Muon's own, about 0.02-0.05 (modded-nanogpt).
#   'match_rms_adamw': by 0.2 * sqrt(max(out, in)) (Moonshot AI's "Muon is scalable", arXiv 2502.16982):
#       the update's RMS then matches a typical AdamW update's (about 0.2), so muon_lr and
#       muon_weight_decay can take AdamW's values (about 1e-3 and 0.1).
MUON_ADJUST_LR = ('original', 'match_rms_adamw')
# what build() reads that bench.py does not set: train.py's defaults (a step's cost does not depend on them)
DEFAULTS = dict(lr_schedule='cosine', warmdown_frac=0.2, muon_lr=0.02, muon_momentum=0.95, muon_weight_decay=0.0,
                muon_adjust_lr='original', beta1=0.9, beta2=0.95, min_lr=0.0)
MUON_WEIGHTS = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')  # a Block's


def check(config):
    """The optimizer's and schedule's settings in config: a one-line error for the first bad one."""
    for key, allowed in (('optimizer', OPTIMIZERS), ('lr_schedule', SCHEDULES),
                         ('muon_adjust_lr', MUON_ADJUST_LR)):
        if config[key] not in allowed:
            fail(f"{key}={config[key]!r}: use {' or '.join(map(repr, allowed))}")
    if not 0.0 < config['warmdown_frac'] <= 1.0:
        fail(f"warmdown_frac={config['warmdown_frac']} is outside (0, 1]: it is the share of the iterations "
             f"after warmup that lr_schedule='wsd' spends decaying")
    for key in ('muon_lr', 'muon_momentum', 'muon_weight_decay', 'min_lr'):
        if config[key] < 0:
            fail(f"{key}={config[key]} is negative: use a value >= 0")
    if config['optimizer'] == 'muon' and config['learning_rate'] <= 0:
        fail(f"optimizer='muon' scales muon_lr by the schedule's lr / learning_rate, so learning_rate="
             f"{config['learning_rate']} must be > 0")


def muon_names(model):
    """The names of the parameters Muon updates: the 2-D weights of the blocks' Linear layers, chosen by
    name (transformer.h.N.attn.c_attn.weight, ...), not by ndim == 2, which would take wte and wpe too."""
    blocks = [n for n, _ in model.named_parameters() if n.startswith('transformer.h.')]
    return [n for n in blocks if n.split('.', 3)[3] in MUON_WEIGHTS]  # transformer.h.N.<weight>


def build(model, config, device_type, verbose=True):
    """[AdamW], or [AdamW, Muon] with optimizer='muon', for model with config's settings, after checking
    them; train.py sets their learning rates at each step (set_lr). verbose: print the groups."""
    check(config)
    skip = muon_names(model) if config['optimizer'] == 'muon' else []
    try:
        adamw = model.configure_optimizers(config['weight_decay'], config['learning_rate'],
                                           (config['beta1'], config['beta2']), device_type, verbose, skip=skip)
    except ValueError as e:  # torch's checks, e.g. "Invalid beta parameter at index 0: 2.0"
        fail(f"{e}; check learning_rate, beta1, beta2 and weight_decay")
    if not skip:
        return [adamw]
    params = dict(model.named_parameters())
    muon = torch.optim.Muon([params[n] for n in skip], lr=config['muon_lr'],
                            weight_decay=config['muon_weight_decay'], momentum=config['muon_momentum'],
                            adjust_lr_fn=config['muon_adjust_lr'])
    if verbose:
        print(f"muon tensors: {len(skip)} ({sum(params[n].numel() for n in skip):,} parameters)")
    return [adamw, muon]


def set_lr(optims, lr, learning_rate, muon_lr):
    """This step's rates: lr for AdamW; Muon's follows the same schedule, scaled to its own peak muon_lr
    (the factor lr / learning_rate: Muon's floor is min_lr / learning_rate * muon_lr)."""
    for group in optims[0].param_groups:
        group['lr'] = lr
    for group in optims[1].param_groups if len(optims) > 1 else ():
        group['lr'] = lr / learning_rate * muon_lr


def state_dicts(optims):
    """What a checkpoint keeps of the optimizers: 'optimizer' (AdamW's state), and with Muon 'muon'."""
    return {'optimizer': optims[0].state_dict(), **({'muon': optims[1].state_dict()} if len(optims) > 1 else {})}


def restore(ckpt, path, optims, scaler, fsdp_model=None):
    """Load the optimizers' and GradScaler's state from a checkpoint trained with the same optimizer
    (checkpoint.restore for AdamW's); this run's settings (betas, momentum, weight decay...) stay.
    -> checkpoint.restore's note, if any."""
    saved = ckpt['config'].get('optimizer', 'adamw')  # older checkpoints: AdamW's
    mine = 'muon' if len(optims) > 1 else 'adamw'
    if saved != mine:
        fail(f"{path} was trained with optimizer={saved!r}, whose state does not fit {mine!r}; resume "
             f"with --optimizer={saved}, or start afresh in another --out_dir")
    note = checkpoint.restore(ckpt, path, optims[0], scaler, sharded_model=fsdp_model)
    if mine == 'muon':
        muon = optims[1]
        settings = [{k: g[k] for k in ('momentum', 'weight_decay', 'adjust_lr_fn')} for g in muon.param_groups]
        muon.load_state_dict(ckpt['muon'])
        for group, setting in zip(muon.param_groups, settings):
            group.update(setting)
    return note
