"""Export a checkpoint for use elsewhere: a Hugging Face transformers folder, a small weights-only file, or
an FSDP run's sharded checkpoint as one ckpt.pt.

    python export.py --out_dir=out-shakespeare-char --hf_dir=hf-shakespeare-char
    python export.py --out_dir=out-shakespeare-char --weights=shakespeare-char.pt
    python export.py --out_dir=out-fsdp --consolidate=True

--hf_dir writes what transformers.AutoModelForCausalLM.from_pretrained loads as a GPT-2: config.json and
model.safetensors (float32, by transformers' save_pretrained), meta.json (the vocabulary, as datasets and
checkpoints hold it: {"chars": [...]} for a character model, whose token i is chars[i], or {"encoding":
"gpt2"}), and tokenizer files that AutoTokenizer reads: one of single characters for a character model,
GPT-2's for a BPE one, made from tiktoken's cache without a download.
A character outside a character model's vocabulary is encoded as the unknown token U+FFFD (a private-use
character if the vocabulary holds U+FFFD), with id vocab_size: the tokenizer has vocab_size + 1 entries, the
model keeps vocab_size rows and logits, so it refuses that id (IndexError) rather than read it as another
character; check `tok.unk_token_id in ids` first. The alternatives were worse: without an unknown token
`tokenizers` raises a bare "Missing [UNK] token" that names no character (its message is fixed, and a
tokenizer.json holds no code to raise a better one); mapping to an existing character corrupts the text
silently; a model row for it would change the vocabulary and the logits. Decoding shows it as U+FFFD.
A padded vocabulary (50304) is cut to GPT-2's 50257: the 47 padding rows are never a token, and no other
token's logit depends on them. The folder is read back and its logits compared with ours. train.py and
sample.py take it as --init_from.
--weights writes the model, its shape and its vocabulary without the optimizer state (about a third of
ckpt.pt's size), for sharing: sample.py reads it as --init_from=FILE.pt.
A LoRA run's checkpoint (lora.py) is exported merged: its base weights are read again from where the run
took them, and each adapter is folded into its layer's weight (W + alpha/r B A, peft's merge_and_unload),
so that --weights and --hf_dir are plain models that need no peft.
--consolidate gathers out_dir/ckpt.dcp (FSDP's shards) into out_dir/ckpt.pt, optimizer state included: the
file that DDP and single-process runs write, to copy elsewhere or to read with nanoGPT-style tools. (Every
script here reads ckpt.dcp as it is, too.) The model and its optimizer state must fit this machine's memory.
"""
import json
import os

import torch

import chat
import checkpoint
import loading
import vocabulary
from configurator import configure, fail, make_dir, oneline

# -----------------------------------------------------------------------------
out_dir = 'out'  # the checkpoint to export: out_dir/ckpt.pt
hf_dir = ''      # write a Hugging Face transformers folder here
weights = ''     # write a weights-only checkpoint here (a .pt file)
consolidate = False  # write out_dir/ckpt.pt from the sharded out_dir/ckpt.dcp of an FSDP run
vocab_path = ''  # a checkpoint without its vocabulary (nanoGPT's): the meta.json or meta.pkl to read it from
# -----------------------------------------------------------------------------
configure(globals())
# -----------------------------------------------------------------------------
# GPT-2's tokenizer files as tiktoken fetches and caches them (HF's vocab.json and merges.txt are these)
GPT2_FILES = {'vocab.json': ('encoder.json', '196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783'),
              'merges.txt': ('vocab.bpe', '1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5')}
GPT2_URL = 'https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/'
TOKENIZER_FILES = ('vocab.json', 'merges.txt', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json',
                   'chat_template.jinja', 'added_tokens.json', 'generation_config.json')

if not (hf_dir or weights or consolidate):
    fail("nothing to export to: give --hf_dir=FOLDER (Hugging Face transformers), --weights=FILE.pt and/or "
         "--consolidate=True")
if weights and not weights.endswith('.pt'):
    fail(f"--weights={weights}: give a file name ending in .pt (sample.py reads it as --init_from=FILE.pt)")
if weights and os.path.abspath(weights) in [os.path.abspath(os.path.join(out_dir, n))
                                            for n in (checkpoint.CKPT, checkpoint.INTERRUPTED)]:
    fail(f"--weights={weights} would overwrite the training checkpoint; give another file name")
sharded = os.path.join(out_dir, checkpoint.SHARDED[0])
if consolidate and not os.path.isdir(sharded):
    fail(f"--consolidate=True: no sharded checkpoint {sharded}; it is what an FSDP run (--fsdp=True) writes")
ckpt_path = checkpoint.find(out_dir, sharded=consolidate, roles=(checkpoint.CKPT,))
if ckpt_path is None:
    fail(f"no checkpoint {os.path.join(out_dir, checkpoint.CKPT)}; train one first, or point --out_dir at the "
         f"folder that holds it")
ckpt, _ = checkpoint.load(ckpt_path, checkpoint.FOR_RESUMING if consolidate else checkpoint.FOR_SAMPLING)
if consolidate:
    path = os.path.join(out_dir, checkpoint.CKPT)
    checkpoint.save(path, ckpt)  # the same state as the folder: the folder stays, for FSDP runs to resume
    print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB) from {sharded} (iter {ckpt['iter_num']})")
model = loading.build(ckpt, ckpt_path, merge=True)[0].eval()  # LoRA: W + alpha/r B A, a plain GPT
if ckpt.get('lora'):
    print(f"merged the LoRA adapters of {ckpt_path} (rank {ckpt['lora']['rank']}) into the weights of "
          f"{ckpt['lora']['base']}")
vocab = vocabulary.check_vocab(model.config.vocab_size, *loading.checkpoint_vocab(ckpt, ckpt_path, vocab_path))
if hf_dir and 'image' in vocab:
    fail("an image model has no text tokenizer for transformers; export it with --weights=FILE.pt "
         "(sample.py --png draws its images)")

if weights:
    make_dir(weights, 'weights', file=True)
    checkpoint.save(weights, {'model': model.state_dict(), 'model_args': ckpt['model_args'], 'tokenizer': vocab,
                              **{k: ckpt[k] for k in ('iter_num', 'best_val_loss', 'config') if k in ckpt}})
    size = sum(os.path.getsize(os.path.join(ckpt_path, f)) for f in os.listdir(ckpt_path)) \
        if os.path.isdir(ckpt_path) else os.path.getsize(ckpt_path)
    print(f"wrote {weights} ({os.path.getsize(weights) / 2**20:.1f} MiB, {ckpt_path} has "
          f"{size / 2**20:.1f}); sample with  python sample.py --init_from={weights}")

if hf_dir:
    make_dir(hf_dir, 'hf_dir')
    checkpoint.remove(hf_dir, *TOKENIZER_FILES)  # an earlier export's, which would outlive this one's
    chars, special = vocab.get('chars'), vocab.get('special', [])
    n_vocab = vocabulary.vocab_size_of(vocab) or vocabulary.GPT2_VOCAB + len(special)
    eot = None if chars else vocabulary.GPT2_VOCAB - 1  # <|endoftext|> starts and ends GPT-2's texts
    # a chat model's answer ends with <|im_end|>: generate() and vLLM stop there, as sample.py --chat does
    im_end = vocabulary.Tokenizer(vocab).special_id(chat.IM_END) if vocab.get('chat') else None
    hf = model.to_hf(n_vocab, bos_token_id=eot, eos_token_id=eot if im_end is None else im_end)
    if im_end is not None:
        hf.generation_config.eos_token_id = [im_end] + ([eot] if eot is not None else [])
    hf.save_pretrained(hf_dir)
    with open(os.path.join(hf_dir, 'meta.json'), 'w', encoding='utf-8') as f:
        json.dump({'vocab_size': n_vocab, **vocab}, f, ensure_ascii=False)
    if chars:  # a tokenizer of single characters, so AutoTokenizer reads the folder too
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast
        # a character outside the vocabulary is the unknown token, id n_vocab: a single character that is
        # not a token either, so finding it in a text means the same (U+FFFD unless the vocabulary has it)
        unk = next(c for c in map(chr, (0xFFFD, *range(0xE000, 0xF900))) if c not in chars)
        tok = Tokenizer(models.WordLevel({**{c: i for i, c in enumerate(chars + special)}, unk: n_vocab},
                                         unk_token=unk))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r'[\s\S]'), 'isolated')  # every character alone
        tok.decoder = decoders.Fuse()
        hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=unk, model_max_length=model.config.block_size)
    else:
        from tiktoken.load import read_file_cached
        from transformers import GPT2Tokenizer
        try:
            files = {name: read_file_cached(GPT2_URL + src, sha) for name, (src, sha) in GPT2_FILES.items()}
        except Exception as e:  # offline, without tiktoken's cache of them
            fail(f"the model is in {hf_dir}, but GPT-2's tokenizer files are not: tiktoken has no cached copy "
                 f"of {GPT2_URL}encoder.json and vocab.bpe ({oneline(e)}); set TIKTOKEN_CACHE_DIR to a folder "
                 f"holding its gpt2 cache and rerun")
        for name, data in files.items():
            with open(os.path.join(hf_dir, name), 'wb') as f:
                f.write(data)
        # read back from those two files, it writes tokenizer.json and tokenizer_config.json beside them
        hf_tok = GPT2Tokenizer.from_pretrained(hf_dir, model_max_length=model.config.block_size)
    if special:  # the chat tokens, with our ids (after the vocabulary's own), and the template that renders
        hf_tok.add_special_tokens({'additional_special_tokens': special})  # them (transformers 5 writes
        hf_tok.chat_template, hf_tok.eos_token = chat.TEMPLATE, chat.IM_END   # chat_template.jinja)
        if [hf_tok.convert_tokens_to_ids(t) for t in special] != [n_vocab - len(special) + i for i in range(len(special))]:
            fail("the exported tokenizer gives the chat tokens other ids than ours; please report this as a bug")
    hf_tok.save_pretrained(hf_dir)
    from transformers import AutoModelForCausalLM
    loaded = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    x = torch.randint(n_vocab, (2, min(64, model.config.block_size)), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (loaded(x).logits - model(x, x)[0][..., :n_vocab]).abs().max().item()
    print(f"wrote {hf_dir}: {', '.join(sorted(os.listdir(hf_dir)))}; read back by transformers, its logits are "
          f"within {diff:.1e} of ours")
    if diff > 1e-4:
        fail(f"the export's logits differ from ours by {diff:.2e}; please report this as a bug")
