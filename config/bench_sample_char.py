# Sampling speed of the config/train_shakespeare_char.py shape: 255 tokens from a 1-token prompt, batch 1,
# with the KV cache and with a full recompute, interleaved; random weights (speed does not depend on them)
# python bench.py config/bench_sample_char.py                  # torch's default threads
# python bench.py config/bench_sample_char.py --num_threads=1
mode = 'sample'
device = 'cpu'
dtype = 'float32'
batch_size = 1
max_new_tokens = 255
steps = 3
block_size = 256
n_layer = 6
n_head = 6
n_embd = 384
vocab_size = 65 # shakespeare_char's characters
dropout = 0.0
