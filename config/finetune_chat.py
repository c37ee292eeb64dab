# The chat stage on GPUs: finetune GPT-2 (124M) on smol-smoltalk's conversations, ChatML, loss on the
# assistant's tokens only. Not run here (no GPU, no download); the settings follow nanochat's SFT in spirit:
#   python data/chat/prepare.py                          # HuggingFaceTB/smol-smoltalk, GPT-2 BPE (~0.5M rows)
#   torchrun --standalone --nproc_per_node=8 train.py config/finetune_chat.py
#   python sample.py --out_dir=out-chat --chat=True
#   python export.py --out_dir=out-chat --hf_dir=hf-chat  # then transformers/vLLM (README: Chat)
out_dir = 'out-chat'
init_from = 'gpt2'  # or the out_dir of your own pretraining run: its weights alone are taken
eval_interval = 250
eval_iters = 50
eval_tasks = 'chat'
always_save_checkpoint = False  # keep the best val loss

dataset = 'chat'
# 8 GPUs * 8 rows * 4 micro-steps * 1024 tokens = 262,144 tokens per step, ~1/4 of them trained (the
# assistant's); rows start at conversations and run on into the next ones (packed)
batch_size = 8
block_size = 1024
gradient_accumulation_steps = 4 * 8

# a finetune: a small peak learning rate (about a third of pretraining's 6e-4), a short warmup, linear-ish
# decay to zero over about two epochs of smol-smoltalk's ~200M tokens; no weight decay on the new skill
learning_rate = 2e-4
max_iters = 1500
lr_decay_iters = 1500
warmup_iters = 50
min_lr = 0.0
weight_decay = 0.0
dropout = 0.0
