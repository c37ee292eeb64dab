# GPT-2 124M with Muon on the blocks' weight matrices (optimizers.py), for GPUs; give it after train_gpt2.py:
# torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py config/train_gpt2_muon.py
# NOT RUN HERE (no GPU): the values are its sources', untuned for this code. The Newton-Schulz cost at
# this size: python bench.py --optimizer=muon (against --optimizer=adamw).
wandb_run_name = 'gpt2-124M-muon'
optimizer = 'muon'
muon_lr = 0.02            # Keller Jordan's Muon README (github.com/KellerJordan/Muon): lr=0.02 for hidden matrices
muon_momentum = 0.95      # the same, Nesterov momentum
muon_weight_decay = 0.01  # the same (weight_decay=0.01), on the matrices; AdamW keeps weight_decay for the rest
muon_adjust_lr = 'original'  # Keller Jordan's rule; 'match_rms_adamw' would want AdamW's lr and decay instead
# AdamW (embeddings, the tied head, biases, gains) keeps train_gpt2.py's learning_rate 6e-4 and betas.
# Warmup, a stable phase, then a linear decay to zero over the last 20%, as modded-nanogpt's speedrun does.
lr_schedule = 'wsd'
warmdown_frac = 0.2
min_lr = 0.0
