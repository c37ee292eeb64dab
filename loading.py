"""A model to sample, evaluate, export or finetune, from wherever its weights are: out_dir's checkpoint, a
.pt file of export.py, GPT-2's weights or a Hugging Face folder, with the vocabulary that goes with them;
a LoRA checkpoint's base weights and adapters put together again (lora.py)."""
import os
import sys

import torch

import chat
import checkpoint
import corpus
import lora
import vocabulary
from configurator import fail, oneline
from model import GPT, GPTConfig


def checkpoint_vocab(ckpt, path, vocab_path=''):
    """A checkpoint's vocabulary -> (vocab, where it is): its own, else (a checkpoint written before they
    held one, such as nanoGPT's) the one at vocab_path (a meta.json or meta.pkl, or a folder holding one),
    else its dataset's, if that is there. Where it came from a file, a note line on stderr says which."""
    if ckpt['tokenizer'] is not None:
        if vocab_path:
            _note(f"--vocab_path={vocab_path} is not used: {path} holds its own vocabulary")
        return ckpt['tokenizer'], path
    if vocab_path:
        if not os.path.exists(vocab_path):
            fail(f"--vocab_path={vocab_path} does not exist; give a meta.json or meta.pkl, or the folder holding it")
        found = vocabulary.vocab_file(vocab_path)
        if not os.path.isfile(found):
            fail(f"--vocab_path={vocab_path} holds no meta.json or meta.pkl; give the file or the folder holding it")
        vocab = vocabulary.read_vocab(found)
    else:
        dataset = ckpt['config'].get('dataset') if isinstance(ckpt.get('config'), dict) else None
        if not (isinstance(dataset, str) and dataset):
            return None, "(the checkpoint names no dataset)"
        found = vocabulary.vocab_file(corpus.dataset_dir(dataset, check=False))
        vocab = vocabulary.read_vocab(found)
    if vocab is not None:
        _note(f"{path} holds no vocabulary (an older or nanoGPT checkpoint): using {found}"
              + ("" if vocab_path else "; --vocab_path=FILE names another"))
    return vocab, found


def _note(text):
    if int(os.environ.get('RANK', '0')) == 0:
        print(f"note: {text}", file=sys.stderr)


def load_model(init_from, out_dir, vocab_path=''):
    """The model sample.py, eval.py and export.py read -> (model in eval mode on the CPU, its vocabulary or
    None, where that is, its checkpoint or None): out_dir/ckpt.pt or else an FSDP run's ckpt.dcp ('resume'),
    a .pt file (export.py --weights), a GPT-2 name or a Hugging Face folder. vocab_path: see checkpoint_vocab."""
    if init_from == 'resume' or init_from.endswith('.pt'):
        path = init_from if init_from != 'resume' else (checkpoint.find(out_dir, roles=(checkpoint.CKPT,)) or
                                                         os.path.join(out_dir, checkpoint.CKPT))
        if os.path.isdir(path) and not checkpoint.is_sharded(path):
            fail(f"{path} is a folder, not a checkpoint file")
        if not os.path.exists(path):
            folder = os.path.dirname(path) or '.'
            there = (f"{folder} does not exist" if not os.path.isdir(folder) else
                     f"{folder} holds: {', '.join(sorted(os.listdir(folder))[:8]) or 'nothing'}")
            fail(f"no checkpoint {path} ({there}); train one first, e.g. python train.py "
                 f"config/train_shakespeare_char.py --out_dir={out_dir}")
        ckpt, _ = checkpoint.load(path, checkpoint.FOR_SAMPLING)
        model, _ = build(ckpt, path, merge=True)  # LoRA: its adapters folded into the weights
        return model.eval(), *checkpoint_vocab(ckpt, path, vocab_path), ckpt
    if not init_from.startswith('gpt2') and not os.path.isdir(init_from):
        fail(f"init_from={init_from!r} is not 'resume', a .pt file, a gpt2* name or an existing directory")
    try:
        model = GPT.from_pretrained(init_from, dict(dropout=0.0))
    except ValueError as e:
        fail(e)
    vocab = vocabulary.read_vocab(init_from) if os.path.isdir(init_from) else None  # an export holds its own
    return model.eval(), vocab, os.path.join(init_from, 'meta.json'), None


def scratch(config, data_vocab):
    """A new GPT of config's shape (n_layer, n_head, n_embd, block_size, bias, dropout) with a row per token of
    the dataset's vocabulary (GPT-2's BPE: its 50257 tokens padded to 50304, a faster lm_head matmul)."""
    shape = {k: config[k] for k in ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias', 'dropout')}
    try:
        return GPT(GPTConfig(**shape, vocab_size=vocabulary.vocab_size_of(data_vocab) or 50304))
    except ValueError as e:  # e.g. n_embd not divisible by n_head
        fail(e)


def own_checkpoint(init_from):
    """The checkpoint init_from names if it is one of ours (a .pt file, or a run's out_dir), else None."""
    if init_from.endswith('.pt') and os.path.isfile(init_from):
        return init_from
    return checkpoint.find(init_from, roles=(checkpoint.CKPT,)) if os.path.isdir(init_from) else None


def pretrained(init_from, dropout, block_size, reader=None, data_vocab=None):
    """Weights to start from, cut to block_size -> (model, the vocabulary its weights were trained on): GPT-2's
    (a gpt2* name or a Hugging Face folder), or one of our checkpoints (a ckpt.pt or export.py's .pt file, or a
    run's out_dir), of which only the weights are taken (a LoRA one's merged). reader: what reads GPT-2 weights,
    GPT.from_pretrained's signature (FSDP's reads them in rank 0 alone). data_vocab: the dataset's, to which a
    model grows rows for the chat tokens (add_chat_tokens)."""
    ours = own_checkpoint(init_from)
    if not (ours or init_from.startswith('gpt2') or os.path.isdir(init_from)):
        fail(f"init_from={init_from!r}: use 'scratch', 'resume', a gpt2* name, a Hugging Face model directory, or "
             f"one of our checkpoints (a .pt file or a run's out_dir)")
    if ours:
        ckpt, _ = checkpoint.load(ours, checkpoint.FOR_SAMPLING)
        model = build(ckpt, ours, dropout=dropout, merge=True)[0]
        vocab = checkpoint_vocab(ckpt, ours)[0]
    else:
        try:
            model = (reader or GPT.from_pretrained)(init_from, dict(dropout=dropout))
        except ValueError as e:
            fail(e)
        # an export holds its own vocabulary
        vocab = vocabulary.read_vocab(init_from) if os.path.isdir(init_from) else vocabulary.GPT2
    if block_size > model.config.block_size:
        fail(f"block_size={block_size} is longer than the context of {init_from} ({model.config.block_size}); "
             f"use --block_size={model.config.block_size} or less")
    if block_size < model.config.block_size:
        model.crop_block_size(block_size)  # e.g. finetune with a shorter context than GPT-2's 1024
    return add_chat_tokens(model, vocab, data_vocab)  # finetuning on conversations: rows for their tokens


def add_chat_tokens(model, vocab, data_vocab):
    """A model to finetune on a chat dataset whose vocabulary is the model's plus the chat tokens -> (model with
    rows for them, the dataset's vocabulary): GPT-2's 50257 rows grow to the padded 50304, a character model's by
    two; the rows after the vocabulary's own start at its mean embedding. Other pairs are returned as they are."""
    if not (chat.is_chat(data_vocab) and vocab and not chat.is_chat(vocab) and chat.with_chat(vocab) == data_vocab):
        return model, vocab
    old = model.transformer.wte.weight
    first = vocabulary.vocab_size_of(vocab) or vocabulary.GPT2_VOCAB  # the first chat token's id
    rows = vocabulary.vocab_size_of(data_vocab) or max(old.size(0), 50304)
    with torch.no_grad():
        weight = torch.cat([old[:first], old[:first].mean(0, keepdim=True).expand(rows - first, -1)])
    model.transformer.wte.weight = model.lm_head.weight = torch.nn.Parameter(weight)  # tied, as GPT builds them
    model.transformer.wte.num_embeddings = model.lm_head.out_features = model.config.vocab_size = rows
    return model, data_vocab


def build(ckpt, path, dropout=0.0, dtype=None, merge=False, verbose=False):
    """The model that checkpoint ckpt (read from path) holds -> (model, its vocabulary): its weights, or from
    a LoRA checkpoint its base weights read again from where the run took them, with its adapters on (merge:
    folded into the weights; dtype, verbose: see lora.attach). One line if that base is not there."""
    spec = ckpt.get('lora')
    if not spec:
        return checkpoint.build_model(ckpt, path, dropout=dropout), ckpt['tokenizer']
    base, args = spec['base'], ckpt['model_args']
    if os.path.isabs(base) and not os.path.exists(base):
        fail(f"{path} holds LoRA adapters for the weights in {base}, which is not there any more; put them "
             f"back at that path (or merge the adapters where they are: python export.py)")
    model, _ = pretrained(base, dropout, args['block_size'], data_vocab=ckpt['tokenizer'])  # a chat SFT's grew
    shape = {k: args[k] for k in checkpoint.SHAPE + ('vocab_size',)}
    if {k: getattr(model.config, k) for k in shape} != shape:
        fail(f"{path} holds LoRA adapters for the weights in {base}, which have another shape now "
             f"({dict(vars(model.config))}, the adapters' {shape}); put the original weights back there")
    try:
        return lora.attach(model, spec, ckpt['model'], dtype=dtype, merge=merge, verbose=verbose), ckpt['tokenizer']
    except ValueError as e:
        fail(f"{path}: its LoRA adapters do not fit the weights in {base} ({oneline(e)})")
