# The chat stage on a laptop CPU, after the quick start (python train.py config/train_shakespeare_char_cpu.py):
# teach its Shakespeare model to answer "spell honour" with "H-O-N-O-U-R" (data/spelling), then talk to it:
#   python train.py config/sft_spelling_cpu.py
#   python sample.py --out_dir=out-spelling-chat --chat=True --temperature=0
# Only the weights come from the quick start's checkpoint: a fresh optimizer, iteration 0, its own out_dir.
# Its 65 characters gain <|im_start|> and <|im_end|>, whose rows start at the mean embedding.
out_dir = 'out-spelling-chat'
init_from = 'out-shakespeare-char-cpu'
eval_interval = 100
eval_iters = 20
log_interval = 10
eval_tasks = 'chat'  # each evaluation: the answers' loss, and how many of 200 held-out words it spells exactly

dataset = 'spelling'
prepare = True  # data/spelling/prepare.py on the first run (offline: --prepare_input=tinyshakespeare.txt)
gradient_accumulation_steps = 1
batch_size = 32  # rows of 64 tokens, each from a conversation's start: about 1.5 conversations a row
block_size = 64

# finetuning: a shorter warmup, the same peak as the quick start, decayed over the run
learning_rate = 1e-3
max_iters = 600
lr_decay_iters = 600
min_lr = 1e-4
warmup_iters = 20
beta2 = 0.99
dropout = 0.0

device = 'cpu'
compile = False
