# A baby GPT on tiny Shakespeare, character level: a few minutes on one GPU.
# Laptop CPU: add --device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64
#   --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0
out_dir = 'out-shakespeare-char'
eval_interval = 250  # it overfits, so evaluate often
eval_iters = 200
log_interval = 10
always_save_checkpoint = False  # keep the best val loss only

wandb_log = False
wandb_project = 'shakespeare-char'
wandb_run_name = 'mini-gpt'

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256  # context of up to 256 previous characters

n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

learning_rate = 1e-3  # a small network can take a large step
max_iters = 5000
lr_decay_iters = 5000  # usually max_iters
min_lr = 1e-4  # learning_rate / 10
beta2 = 0.99  # larger than GPT-2's 0.95: few tokens per iteration
warmup_iters = 100
