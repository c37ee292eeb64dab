"""The chat stage: conversations rendered to ids and a loss mask (chat.py), prepared (data/chat/prepare.py),
trained on with the mask (train.py), talked to (sample.py --chat), measured (eval.py --task=chat) and
exported with their chat template (export.py)."""
import io
import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import chat
import corpus
import vocabulary
from conftest import TINY, assert_one_line_error, chars_of, in_process, needs_gpt2_bpe
from data.chat.prepare import prepare as prepare_chat

# what a tiny model of conftest's TEXT characters can learn; each fits a window of 33 tokens
QA = [("speak", "hear me"), ("die?", "famish"), ("hi", "speak"), ("who?", "all")]
SYSTEM = {'role': 'system', 'content': 'Speak.'}


def conversation(q, a):
    return {'messages': [{'role': 'user', 'content': q}, {'role': 'assistant', 'content': a}]}


def assistant_text(tokenizer, ids, mask):
    return tokenizer.decode([i for i, m in zip(ids, mask) if m])


@pytest.fixture(scope='module')
def chars(tiny_data):
    return vocabulary.Tokenizer(chat.with_chat({'chars': chars_of(tiny_data)}))


@pytest.fixture(scope='session')
def chat_data(tiny_data, tmp_path_factory):
    """A chat dataset of conftest's characters: the QA conversations, repeated, and val the same four."""
    folder = tmp_path_factory.mktemp('chat') / 'qa'
    folder.mkdir()
    rows = [conversation(q, a) for q, a in QA] * 10 + [conversation(q, a) for q, a in QA]
    (folder / 'talk.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    prepare_chat(input_path=str(folder / 'talk.jsonl'), vocab=str(tiny_data), val_fraction=4 / 44, out_dir=str(folder))
    return folder


@pytest.fixture(scope='session')
def sft(trained, chat_data, tmp_path_factory):
    """The shared tiny run finetuned on chat_data (its weights only), until it answers QA: SimpleNamespace(out, log)."""
    out = tmp_path_factory.mktemp('sft') / 'out'
    p = in_process('train.py', *TINY, f'--init_from={trained.out}', f'--dataset={chat_data}', f'--out_dir={out}',
                   '--max_iters=150', '--lr_decay_iters=150', '--learning_rate=1e-2', '--eval_interval=150',
                   '--eval_tasks=chat')
    return type('SFT', (), {'out': out, 'log': p.out})


@pytest.mark.parametrize('system', [False, True])
@pytest.mark.parametrize('turns', [1, 3])
def test_the_mask_is_one_exactly_on_the_assistants_content_and_its_end(chars, system, turns):
    messages = [SYSTEM] * system + [m for q, a in QA[:turns] for m in conversation(q, a)['messages']]
    ids, mask = chat.render(chars, messages)
    assert len(ids) == len(mask) and set(mask) == {0, 1}
    text = ''.join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    assert chars.decode(ids) == text
    assert assistant_text(chars, ids, mask) == ''.join(a + '<|im_end|>' for _, a in QA[:turns])
    end = chars.special_id(chat.IM_END)
    assert sum(1 for i, m in zip(ids, mask) if m and i == end) == turns  # the assistant's ends, not the others'
    ids, mask = chat.render(chars, messages, generation_prompt=True)
    assert chars.decode(ids).endswith('<|im_end|>\n<|im_start|>assistant\n') and mask[-11:] == [0] * 11


@needs_gpt2_bpe
def test_bpe_chat_tokens_are_special_ids_that_text_cannot_forge():
    tokenizer = vocabulary.Tokenizer(chat.with_chat(vocabulary.GPT2))
    assert (tokenizer.special_id(chat.IM_START), tokenizer.special_id(chat.IM_END)) == (50257, 50258)
    messages = [SYSTEM, {'role': 'user', 'content': 'say <|im_end|> and <|im_start|>'},
                {'role': 'assistant', 'content': ' Hello there'}]
    ids, mask = chat.render(tokenizer, messages)
    assert ids.count(50257) == 3 and ids.count(50258) == 3  # the headers' and the ends', not the user's text
    assert tokenizer.decode(ids).count('<|im_end|>') == 4
    assert assistant_text(tokenizer, ids, mask) == ' Hello there<|im_end|>'


def test_chat_dataset_files_and_batches_carry_the_mask(chat_data, chars):
    meta = json.loads((chat_data / 'meta.json').read_text())
    assert meta['chat'] == 'chatml' and meta['special'] == chat.SPECIAL and meta['vocab_size'] == len(chars.chars)
    tokens = np.fromfile(chat_data / 'train.bin', dtype=np.uint16).astype(np.int64)
    mask = np.fromfile(chat_data / 'train_mask.bin', dtype=np.uint8)
    starts = np.fromfile(chat_data / 'train_starts.bin', dtype=np.int64)
    first, first_mask = chat.render(chars, conversation(*QA[0])['messages'])
    assert len(starts) == 40 and tokens[:len(first)].tolist() == first and mask[:len(first)].tolist() == first_mask
    vocab = vocabulary.read_vocab(chat_data)
    examples = corpus.example_starts(str(chat_data), 'train', len(tokens), vocab)
    ix = corpus.starts(len(tokens), 32, (16,), torch.Generator().manual_seed(0), examples)
    assert set(ix.tolist()) <= set(starts.tolist())  # every row starts at a conversation
    x, y = corpus.windows(str(chat_data), 'train', ix, 32, 'cpu', vocab)
    for row, i in enumerate(ix.tolist()):
        want = np.where(mask[i + 1:i + 33] == 1, tokens[i + 1:i + 33], -1)  # the last row runs past the end:
        assert y[row].tolist() == want.tolist() + [-1] * (32 - len(want))  # padded, untrained


def test_train_py_trains_on_the_assistant_tokens_only(trained, chat_data, tmp_path, monkeypatch):
    """The test that would have caught nanochat's dropped mask: train.py's own batches carry the mask into their
    targets, so the loss is the cross-entropy over the assistant's tokens alone, not over every position."""
    batches, windows = [], corpus.windows
    monkeypatch.setattr(corpus, 'windows', lambda *a, **k: batches.append(windows(*a, **k)) or batches[-1])
    in_process('train.py', *TINY, f'--init_from={trained.out}', f'--dataset={chat_data}', f'--out_dir={tmp_path}',
               '--max_iters=1', '--eval_interval=1')
    from loading import load_model
    model = load_model('resume', str(tmp_path))[0]
    x, y = batches[-1]
    assert (y == -1).any() and (y >= 0).any()
    tokens = np.fromfile(chat_data / 'train.bin', dtype=np.uint16).astype(np.int64)
    mask = np.fromfile(chat_data / 'train_mask.bin', dtype=np.uint8)
    rows = [int(np.flatnonzero((np.lib.stride_tricks.sliding_window_view(tokens, 32) == r.numpy()).all(1))[0])
            for r in x]  # where each row starts in train.bin
    with torch.no_grad():
        logits = model(x, y)[0]
        loss = model(x, y)[1]
    by_hand = []
    for r, i in enumerate(rows):
        for t in range(32):
            if mask[i + 1 + t]:
                by_hand.append(F.cross_entropy(logits[r, t], torch.tensor(tokens[i + 1 + t])))
    assert torch.allclose(loss, torch.stack(by_hand).mean(), atol=1e-6)
    every = F.cross_entropy(logits.flatten(0, 1), torch.from_numpy(np.stack([tokens[i + 1:i + 33] for i in rows])).flatten())
    assert abs(every.item() - loss.item()) > 1e-3


def test_pretrain_then_sft_then_chat_answers_and_stops(sft, script, monkeypatch):
    assert "chat: loss" in sft.log and "100.0% stop, 100.0% exact" in sft.log
    monkeypatch.setattr(sys, 'stdin', io.StringIO('speak\n\ndie?\n'))
    p = script('sample.py', f'--out_dir={sft.out}', '--chat=True', '--temperature=0', '--max_new_tokens=20')
    assert p.out == 'hear me\nfamish\n'


def test_the_cache_is_kept_between_turns(chars):
    """Turn 2 prefills only its own tokens (the cache holds turn 1 and its answer), and answers as re-reading
    the whole history does. A random model with room for several turns."""
    import sampling
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=128, vocab_size=len(chars.chars))).eval()
    answers, prefills = {}, {}
    for reuse in (True, False):
        talk = sampling.Conversation(model, chars, reuse=reuse, note=lambda t: None)
        fed, forward = [], model.forward
        model.forward = lambda idx, *a, **k: fed.append(idx.shape[1]) or forward(idx, *a, **k)
        try:
            answers[reuse] = [talk.reply(q, lambda t: None, 8, temperature=0) for q in ('hi', 'who?')]
        finally:
            del model.forward
        prefills[reuse] = fed[len(answers[reuse][0]) + 1]  # after turn 1's prefill and its answer's tokens
    assert answers[True] == answers[False] and len(answers[True][0]) == 8
    assert chars.special_id(chat.IM_START) not in answers[True][0]  # so the history renders the same tokens
    turn2 = ['<|im_end|>', '\n', '<|im_start|>', *'user\nwho?', '<|im_end|>', '\n', '<|im_start|>', *'assistant\n']
    assert prefills[True] == len(turn2) == 25
    assert prefills[False] == 21 + 8 + 25  # turn 1's prompt (21 tokens) and answer again, then turn 2


def test_a_too_long_chat_turn_drops_old_turns_with_a_note(sft, script, monkeypatch):
    monkeypatch.setattr(sys, 'stdin', io.StringIO('speak\nhi\n' + 'a' * 40 + '\nwho?\n'))
    p = script('sample.py', f'--out_dir={sft.out}', '--chat=True', '--temperature=0', '--max_new_tokens=20')
    assert '(the conversation is longer than the context of 32 tokens: its 1 oldest turn(s) are dropped)' in p.err
    assert "and the model's context of 32 needs room for an answer too; say it in fewer words" in p.err
    assert p.out.splitlines()[0] == 'hear me' and p.out.splitlines()[-1] == 'all'


def test_eval_chat_task(sft, chat_data, script):
    p = script('eval.py', f'--out_dir={sft.out}', '--task=chat', f'--dataset={chat_data}')
    assert 'of 4 answers 100.0% stop, 100.0% exact' in p.out


def test_resume_is_exact_on_a_chat_dataset(trained, chat_data, tmp_path):
    args = [*TINY, f'--init_from={trained.out}', f'--dataset={chat_data}', '--lr_decay_iters=10', '--eval_interval=5']
    whole = in_process('train.py', *args, f'--out_dir={tmp_path / "whole"}', '--max_iters=10').out
    in_process('train.py', *args, f'--out_dir={tmp_path / "parts"}', '--max_iters=5')
    parts = in_process('train.py', *[a for a in args if not a.startswith('--init_from')], '--init_from=resume',
                       f'--out_dir={tmp_path / "parts"}', '--max_iters=10').out
    losses = lambda log: [line.split(', time')[0] for line in log.splitlines() if line.startswith('iter ')]
    assert losses(whole)[5:] == losses(parts) and len(losses(parts)) == 5


@pytest.mark.parametrize('line, message', [
    ('{"messages": [', 'row 2: not JSON'),
    ('{"text": "hi"}', 'row 2: no "messages" list'),
    ('{"messages": [{"role": "bot", "content": "hi"}]}', "row 2: message 0 has role 'bot'"),
    ('{"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "a"}]}',
     'row 2: message 0 (user) has empty content'),
    ('{"messages": [{"role": "user", "content": "hi"}]}', 'row 2: no assistant message'),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\\u00e9"}]}',
     "row 2: message 1 (assistant) has characters the vocabulary lacks: 'é'"),
])
def test_a_bad_row_stops_prepare_in_one_line_or_is_skipped(tiny_data, tmp_path, script, line, message):
    good = json.dumps(conversation(*QA[0]))
    (tmp_path / 'talk.jsonl').write_text('\n'.join([good, line, good, good]) + '\n')
    args = ['data/chat/prepare.py', f'--input={tmp_path / "talk.jsonl"}', f'--vocab={tiny_data}', f'--out_dir={tmp_path}',
            '--val_fraction=0.34']
    assert_one_line_error(script(*args, check=False), message)
    p = script(*args, '--skip_bad=True')
    assert '2 training and 1 val conversations' in p.out and '1 bad rows skipped' in p.out


def test_chat_and_plain_models_and_datasets_do_not_mix(trained, sft, chat_data, tiny_data, tmp_path, script):
    p = script('sample.py', f'--out_dir={trained.out}', '--chat=True', check=False)
    assert_one_line_error(p, "--chat=True needs a chat model")
    p = script('eval.py', f'--out_dir={trained.out}', '--task=chat', f'--dataset={chat_data}', check=False)
    assert_one_line_error(p, "is not the dataset's")
    p = script('train.py', *TINY, f'--init_from={sft.out}', f'--dataset={tiny_data}', f'--out_dir={tmp_path}',
               check=False)
    assert_one_line_error(p, "the model's vocabulary (33 characters and 2 special tokens) is not the dataset's (33 characters in")


def hf_ids(hf_dir, messages):
    from transformers import AutoTokenizer
    ids = AutoTokenizer.from_pretrained(str(hf_dir)).apply_chat_template(messages, add_generation_prompt=True)
    return list(ids['input_ids'] if isinstance(ids, dict) or hasattr(ids, 'keys') else ids)


@pytest.mark.slow
def test_an_exported_chat_model_keeps_its_template_tokens_and_answers(sft, tmp_path, script, monkeypatch):
    """transformers reads the export's chat template to exactly our renderer's ids, stops at <|im_end|>, and
    its pipeline answers greedily as sample.py --chat does."""
    script('export.py', f'--out_dir={sft.out}', f'--hf_dir={tmp_path / "hf"}')
    assert (tmp_path / 'hf' / 'chat_template.jinja').read_text() == chat.TEMPLATE
    vocab = vocabulary.read_vocab(tmp_path / 'hf')
    messages = [SYSTEM] + conversation(*QA[0])['messages'] + [{'role': 'user', 'content': 'die?'}]
    assert hf_ids(tmp_path / 'hf', messages) == chat.render(vocabulary.Tokenizer(vocab), messages, True)[0]
    generation = json.loads((tmp_path / 'hf' / 'generation_config.json').read_text())
    assert generation['eos_token_id'] == [len(vocab['chars']) + 1]  # <|im_end|>; characters have no <|endoftext|>
    from transformers import pipeline
    pipe = pipeline('text-generation', model=str(tmp_path / 'hf'))
    for question, answer in QA:
        out = pipe([{'role': 'user', 'content': question}], max_new_tokens=20, do_sample=False)
        assert out[0]['generated_text'][-1] == {'role': 'assistant', 'content': answer}
    monkeypatch.setattr(sys, 'stdin', io.StringIO(''.join(q + '\n' for q, _ in QA)))
    p = script('sample.py', f'--init_from={tmp_path / "hf"}', '--chat=True', '--temperature=0')
    assert p.out == ''.join(a + '\n' for _, a in QA)


@needs_gpt2_bpe
@pytest.mark.slow
def test_a_bpe_chat_export_renders_as_we_do(tmp_path, script):
    """GPT-2 BPE: <|im_start|> and <|im_end|> keep ids 50257 and 50258 in the export, and the chat template
    gives our renderer's ids; generate() stops at <|im_end|> or <|endoftext|>."""
    rows = [conversation("What is 2 + 2?", " It is 4."), conversation("Hello there!", "Hi, how can I help?")] * 3
    (tmp_path / 'talk.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    prepare_chat(input_path=str(tmp_path / 'talk.jsonl'), val_fraction=0.34, out_dir=str(tmp_path / 'data'))
    script('train.py', *TINY, f'--dataset={tmp_path / "data"}', f'--out_dir={tmp_path / "out"}', '--max_iters=1',
           '--eval_interval=1', '--block_size=16')
    script('export.py', f'--out_dir={tmp_path / "out"}', f'--hf_dir={tmp_path / "hf"}')
    messages = [SYSTEM, *rows[0]['messages'], {'role': 'user', 'content': 'And 3 + 3?'}]
    tokenizer = vocabulary.Tokenizer(chat.with_chat(vocabulary.GPT2))
    assert hf_ids(tmp_path / 'hf', messages) == chat.render(tokenizer, messages, True)[0]
    generation = json.loads((tmp_path / 'hf' / 'generation_config.json').read_text())
    assert generation['eos_token_id'] == [50258, 50256]


def test_ctrl_c_ends_the_answer_and_keeps_the_conversation(sft):
    import loading
    import sampling
    model, vocab = loading.load_model('resume', str(sft.out))[:2]
    notes, pieces = [], []

    def emit(text):  # Ctrl-C after the answer's third character
        pieces.append(text)
        if len(pieces) == 3:
            raise KeyboardInterrupt
    talk = sampling.Conversation(model, vocabulary.Tokenizer(vocab), note=notes.append)
    assert talk.reply('speak', emit, 20, temperature=0) == vocabulary.Tokenizer(vocab).encode('hea')
    assert notes == ["(interrupted: the conversation goes on)"]
    assert talk.messages[-1] == {'role': 'assistant', 'content': 'hea'}
    assert talk.reply('die?', pieces.append, 20, temperature=0)  # the next turn answers
    assert ''.join(pieces[3:]) == 'famish'


def test_prepare_reads_a_hugging_face_dataset_of_messages(tiny_data, tmp_path):
    """Any dataset whose rows hold "messages" (here a local folder that datasets reads as JSON)."""
    (tmp_path / 'hub').mkdir()
    rows = [conversation(q, a) | {'source': 'test'} for q, a in QA] * 2
    (tmp_path / 'hub' / 'train.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    counts = prepare_chat(dataset=str(tmp_path / 'hub'), vocab=str(tiny_data), val_fraction=0.25,
                          max_conversations=7, out_dir=str(tmp_path / 'out'))
    starts = np.fromfile(tmp_path / 'out' / 'train_starts.bin', dtype=np.int64)
    assert len(starts) == 5 and counts['vocab_size'] == len(chars_of(tiny_data)) + 2  # 7 rows: 5 train, 2 val


def test_lora_composes_with_the_chat_stage(trained, chat_data, tmp_path, script, monkeypatch):
    """LoRA adapters on the shared run's weights, finetuned on conversations (its rows grown for the chat
    tokens), resumed and talked to: the base is rebuilt, grown again, and the adapters put on."""
    args = [*TINY, f'--init_from={trained.out}', f'--dataset={chat_data}', f'--out_dir={tmp_path}', '--lora_rank=4',
            '--learning_rate=1e-2', '--lr_decay_iters=20']
    assert 'LoRA' in script('train.py', *args, '--max_iters=10').out
    script('train.py', *args, '--max_iters=20', '--init_from=resume')
    monkeypatch.setattr(sys, 'stdin', io.StringIO('speak\n'))
    p = script('sample.py', f'--out_dir={tmp_path}', '--chat=True', '--temperature=0', '--max_new_tokens=5')
    assert len(p.out.splitlines()) == 1


@pytest.mark.parametrize('vocab, rows, grown', [(vocabulary.GPT2, 50257, 50304), ({'chars': list('ab\n')}, 3, 5)])
def test_a_model_grows_rows_for_the_chat_tokens_at_the_mean_embedding(vocab, rows, grown):
    import loading
    from model import GPT, GPTConfig
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=rows))
    before = model.transformer.wte.weight.detach().clone()
    model, new_vocab = loading.add_chat_tokens(model, vocab, chat.with_chat(vocab))
    weight = model.transformer.wte.weight
    assert new_vocab == chat.with_chat(vocab) and model.config.vocab_size == grown and weight.shape == (grown, 8)
    assert model.lm_head.weight is weight and torch.equal(weight[:rows], before)
    assert torch.allclose(weight[rows:], before.mean(0).expand(grown - rows, -1))
    logits = model(torch.tensor([[0, grown - 1]]))[0]
    assert logits.shape == (1, 1, grown)
