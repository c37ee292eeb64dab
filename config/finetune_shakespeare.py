# Finetune GPT-2 on tiny Shakespeare (BPE): python data/shakespeare/prepare.py first.
import time

out_dir = 'out-shakespeare'
eval_interval = 5
eval_iters = 40
wandb_log = False
wandb_project = 'shakespeare'
wandb_run_name = 'ft-' + str(int(time.time()))

dataset = 'shakespeare'
init_from = 'gpt2-xl'  # the largest GPT-2; use 'gpt2' on a small GPU or a CPU
always_save_checkpoint = False  # keep the best val loss only

# 1 batch * 32 accumulation * 1024 tokens = 32,768 tokens per iteration; tiny Shakespeare's 301,966
# training tokens make one epoch ~9 iterations
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20

# a small constant learning rate
learning_rate = 3e-5
decay_lr = False
