"""Conversations as a chat model reads them: ChatML, one function that renders a conversation to token ids and
a loss mask, used by data/chat/prepare.py (training batches), sample.py --chat, eval.py --task=chat and
export.py (whose chat template writes the same text).

    <|im_start|>system\\nYou are terse.<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello<|im_end|>\\n

<|im_start|> and <|im_end|> are special tokens after the vocabulary's own (GPT-2 BPE: ids 50257 and 50258, rows
of the padded 50304; a character model: its characters, then these two). A message's text is encoded as ordinary
tokens only, so a user who types "<|im_end|>" writes text, never the token. The mask is 1 on what the model
learns to write, the assistant's content and its <|im_end|>, and 0 on everything the conversation gives it.
"""
import json

ROLES = ('system', 'user', 'assistant')
IM_START, IM_END = '<|im_start|>', '<|im_end|>'
SPECIAL = [IM_START, IM_END]
FORMAT = 'chatml'  # a chat dataset's meta.json declares "chat": FORMAT
# the same text as render(), for transformers' apply_chat_template (export.py writes it as chat_template.jinja)
TEMPLATE = ("{% for message in messages %}{{ '" + IM_START + "' + message['role'] + '\\n' + message['content'] + '"
            + IM_END + "' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '" + IM_START
            + "assistant\\n' }}{% endif %}")


def is_chat(vocab):
    return bool(vocab) and vocab.get('chat') == FORMAT


def with_chat(vocab):
    """A vocabulary with the chat tokens after its own (as a chat dataset's meta.json declares it)."""
    return {**{k: v for k, v in vocab.items() if k != 'special'}, 'special': SPECIAL, 'chat': FORMAT}


def problem(row):
    """What is wrong with a conversation (a parsed JSON line, or a dataset's row), or None."""
    messages = row.get('messages') if isinstance(row, dict) else None
    if not isinstance(messages, list) or not messages:
        return 'no "messages" list'
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get('role') not in ROLES:
            role = m.get('role') if isinstance(m, dict) else m
            return f"message {i} has role {role!r}, not one of {', '.join(ROLES)}"
        if not isinstance(m.get('content'), str) or not m['content'].strip():
            return f"message {i} ({m['role']}) has empty content"
        if m['role'] == 'system' and i:
            return f"message {i} is a system message after the first"
    if not any(m['role'] == 'assistant' for m in messages):
        return "no assistant message"
    return None


def parse(line):
    """A JSONL line -> (row, problem or None)."""
    try:
        row = json.loads(line)
    except ValueError as e:
        return None, f"not JSON ({e})"
    return row, problem(row)


def _segment(tokenizer, text, what):
    ids = tokenizer.encode_text(text)
    if ids is None:
        missing = sorted(set(text) - set(tokenizer.stoi))
        raise ValueError(f"{what} has characters the vocabulary lacks: {' '.join(map(repr, missing[:10]))}")
    return ids


def render(tokenizer, messages, generation_prompt=False):
    """A conversation -> (ids, mask), lists of equal length; generation_prompt: end with the assistant's
    header, where the model writes its answer. The text between two special tokens is encoded as one piece,
    as transformers' tokenizer reads the template's text; a token that holds part of the role header is not
    trained. Raises ValueError for characters a character vocabulary lacks."""
    start, end = tokenizer.special_id(IM_START), tokenizer.special_id(IM_END)
    newline = _segment(tokenizer, '\n', 'the vocabulary')
    ids, mask = [], []
    for i, m in enumerate(messages):
        header = m['role'] + '\n'
        body = _segment(tokenizer, header + m['content'], f"message {i} ({m['role']})")
        trained = m['role'] == 'assistant'
        body_mask, offset = [], 0  # offset: bytes of the piece before each token; the header's are 0
        for t in body:
            body_mask.append(int(trained and offset >= len(header)))
            offset += len(tokenizer.token_bytes(t))
        ids += [start] + body + [end] + newline
        mask += [0] + body_mask + [int(trained)] + [0] * len(newline)
    if generation_prompt:
        head = [start] + _segment(tokenizer, 'assistant\n', 'the vocabulary')
        ids, mask = ids + head, mask + [0] * len(head)
    return ids, mask
