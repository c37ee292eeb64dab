# Finetune gpt2-xl (1.5B) on tiny Shakespeare (BPE) with LoRA on one 16 GB GPU: python data/shakespeare/prepare.py
# first. Not run here (no GPU and no GPT-2 weights where this was written): the memory budget is computed in
# README, "Finetuning on one GPU (LoRA)": about 3.2 GiB of training state, ~11 GiB with the activations.
import time

out_dir = 'out-shakespeare-lora'
eval_interval = 5
eval_iters = 40
wandb_log = False
wandb_project = 'shakespeare'
wandb_run_name = 'lora-' + str(int(time.time()))

dataset = 'shakespeare'
init_from = 'gpt2-xl'  # kept frozen, in bfloat16 (float16 on a GPU without it)
always_save_checkpoint = False  # keep the best val loss only

# adapters of rank 16 on the attention and MLP projections: 19.7M trainable parameters, 1.3% of the model
lora_rank = 16
lora_alpha = 32.0  # alpha = 2 r, a common choice: the update B A is scaled by 2
lora_dropout = 0.05
lora_targets = 'c_attn,c_proj,c_fc'

# 1 batch * 32 accumulation * 1024 tokens = 32,768 tokens per iteration, as finetune_shakespeare.py
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20
# activations of gpt2-xl at 1 x 1024 take about 6-7 GiB; on a 12 GB card set this (about 1-2 GiB then)
activation_checkpointing = False

# adapters start from B = 0 and train at a larger rate than a full finetune's 3e-5
learning_rate = 2e-4
decay_lr = False
