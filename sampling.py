"""Text drawn from a model for a person to read: the sample train.py prints at each evaluation, and a chat
with a chat model (sample.py --chat)."""
import codecs

import torch

import chat
from model import KVCache, sample_logits
from vocabulary import Tokenizer


@torch.no_grad()
def sample_text(model, vocab, n, ctx, seed):
    """n tokens from the model after a newline (BPE: after <|endoftext|>), drawn from seed (the iteration),
    leaving the random state of training as it was: a run with samples trains exactly as one without."""
    tokenizer = Tokenizer(vocab)
    start = (tokenizer.start if 'image' in vocab else tokenizer.stoi.get('\n', 0) if 'chars' in vocab
             else tokenizer.enc.eot_token)
    device = model.lm_head.weight.device
    with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []), ctx:
        torch.manual_seed(seed)
        model.eval()
        out = model.generate(torch.tensor([[start]], device=device), n, temperature=0.8, top_k=200)
        model.train()
    return tokenizer.decode(out[0, 1:].tolist())


class Conversation:
    """A chat with a chat model (a vocabulary with chat.SPECIAL), one turn at a time. The KV cache is kept
    between turns, so a new turn prefills only the tokens the cache does not hold yet (reuse=False re-reads
    the whole history, to compare). Where the history leaves less than max_new_tokens (at most a quarter of the
    context) for the answer, its oldest turns are dropped (a system message stays). Notes go to note()."""

    def __init__(self, model, tokenizer, system='', note=print, reuse=True):
        self.model, self.tokenizer, self.note, self.reuse = model, tokenizer, note, reuse
        self.messages = [{'role': 'system', 'content': system}] if system else []
        self.cache, self.cached = KVCache(model.config), []  # the cache, and the ids it holds
        self.end = tokenizer.special_id(chat.IM_END)

    def _prompt(self, text, room):
        """The rendered history with the new user turn and the assistant's header, leaving room tokens of the
        context for the answer: the oldest turns (a user's message and its answer) are dropped until it fits.
        None if the new message alone does not fit."""
        messages = self.messages + [{'role': 'user', 'content': text}]
        first = 1 if messages[0]['role'] == 'system' else 0
        dropped = 0
        while True:
            try:
                ids, _ = chat.render(self.tokenizer, messages, generation_prompt=True)
            except ValueError as e:  # characters a character model lacks
                self.note(f"{e}; say it another way")
                return None
            if len(ids) + room <= self.model.config.block_size:
                break
            if len(messages) - first <= 1:
                self.note(f"this message is {len(ids):,} tokens with the chat's headers, and the model's context of "
                          f"{self.model.config.block_size} needs room for an answer too; say it in fewer words")
                return None
            del messages[first:first + 2]  # the oldest turn: a user's message and the answer to it
            dropped += 1
        if dropped:
            self.note(f"(the conversation is longer than the context of {self.model.config.block_size} tokens: "
                      f"its {dropped} oldest turn(s) are dropped)")
        self.messages = messages
        return ids

    @torch.no_grad()
    def reply(self, text, emit, max_new_tokens, temperature=0.8, top_k=None, top_p=None):
        """Answer a user's message, passing the answer's text to emit() piece by piece as it is drawn. It ends
        at <|im_end|>, at max_new_tokens or where the context is full (with a note), or at Ctrl-C
        (KeyboardInterrupt), and goes into the history as far as it got. -> the answer's token ids."""
        ids = self._prompt(text, room=min(max_new_tokens, self.model.config.block_size // 4))
        if ids is None:
            return []
        same = 0  # the cache keeps the longest prefix it shares with the new history
        if self.reuse:
            while same < min(len(ids) - 1, len(self.cached)) and ids[same] == self.cached[same]:
                same += 1
        self.cache.pos, self.cached = same, ids
        decoder = codecs.getincrementaldecoder('utf-8')(errors='replace')
        answer, reason = [], f"(the answer reached max_new_tokens={max_new_tokens}; raise it for longer answers)"
        try:
            device = self.model.lm_head.weight.device
            logits, _ = self.model(torch.tensor([ids[same:]], device=device), kv_cache=self.cache)
            for _ in range(max_new_tokens):
                token = sample_logits(logits[:, -1, :], temperature, top_k, top_p)
                if token.item() == self.end:
                    reason = None
                    break
                answer.append(token.item())
                emit(decoder.decode(self.tokenizer.token_bytes(answer[-1])))
                if self.cache.pos >= self.model.config.block_size:
                    reason = f"(the context of {self.model.config.block_size} tokens is full: the answer stops here)"
                    break
                logits, _ = self.model(token, kv_cache=self.cache)
                self.cached.append(answer[-1])
        except KeyboardInterrupt:
            reason = "(interrupted: the conversation goes on)"
        emit(decoder.decode(b'', final=True))
        self.messages.append({'role': 'assistant', 'content': self.tokenizer.decode(answer)})
        if reason:
            self.note(reason)
        return answer
