# A GPT that learns 2-digit addition on a CPU in minutes (minGPT's play_math), then answers held-out problems:
#   python data/addition/prepare.py
#   python train.py config/train_addition.py
#   python eval.py --out_dir=out-addition --task=addition
#   python sample.py --out_dir=out-addition --start=23+45=
out_dir = 'out-addition'
dataset = 'addition'
eval_tasks = 'addition'  # the held-out accuracy at each evaluation
eval_interval = 250
eval_iters = 4           # 4 x 256 problems: about the whole held-out set
log_interval = 50
always_save_checkpoint = True

# each example is 9 tokens (23+45=860): 8 inputs
block_size = 8
batch_size = 256
gradient_accumulation_steps = 1

n_layer = 2
n_head = 4
n_embd = 128
dropout = 0.0

learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
warmup_iters = 100
weight_decay = 0.1

device = 'cpu'
compile = False
