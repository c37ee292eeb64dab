# bench.py on a laptop CPU in a few seconds: the shape of the README's CPU recipe (shakespeare_char)
# python bench.py config/bench_cpu_tiny.py
device = 'cpu'
dtype = 'float32'
compile = False # works on a CPU with a C++ compiler, but compiling takes far longer than this run
batch_size = 12
block_size = 64
n_layer = 4
n_head = 4
n_embd = 128
vocab_size = 65 # shakespeare_char's characters
dropout = 0.0
