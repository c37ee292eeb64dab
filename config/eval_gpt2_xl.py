# The loss of OpenAI's GPT-2 1.5B (gpt2-xl) on OpenWebText: python train.py config/eval_gpt2_xl.py
batch_size = 8
eval_iters = 500  # more batches: a tighter estimate
eval_only = True
wandb_log = False
init_from = 'gpt2-xl'
