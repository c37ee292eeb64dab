# The quick start: a small character-level GPT of tiny Shakespeare on a laptop CPU, 1-3 minutes.
# python train.py config/train_shakespeare_char_cpu.py
# It runs data/shakespeare_char/prepare.py first if that has not been done (the text is downloaded once;
# offline, add --prepare_input=path/to/tinyshakespeare.txt), and prints a sample at each evaluation.
out_dir = 'out-shakespeare-char-cpu'
eval_interval = 175
eval_iters = 20
log_interval = 10
always_save_checkpoint = False  # keep the best val loss only
sample_tokens = 200  # watch the text improve

dataset = 'shakespeare_char'
prepare = True
gradient_accumulation_steps = 1
batch_size = 12
block_size = 64

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

# Muon on the blocks' matrices (AdamW at learning_rate on the rest) and a WSD schedule sized to the run:
# val loss 1.91 in 650-700 iterations where AdamW with cosine decay needs 2000. A Muon step costs 1.4-1.5x
# an AdamW step here (its Newton-Schulz steps), so that is about 0.5x the time: 42 s of training against
# 88 s on a quiet 2-core CPU (README: "Speed to a loss"). AdamW as before: --optimizer=adamw
# --lr_schedule=cosine --max_iters=2000 --lr_decay_iters=2000 --min_lr=1e-4 --eval_interval=250
optimizer = 'muon'
muon_lr = 0.02
learning_rate = 1e-3
lr_schedule = 'wsd'  # warmup, stable, then linear to zero over the last 20% (warmdown_frac)
max_iters = 700
lr_decay_iters = 700
min_lr = 0.0
beta2 = 0.99
warmup_iters = 100

device = 'cpu'
compile = False
