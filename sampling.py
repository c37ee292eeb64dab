"""Text drawn from a model for a person to read: the sample train.py prints at each evaluation."""
import torch

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
