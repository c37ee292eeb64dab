# An image GPT on a CPU (minGPT's play_image): 16x16 images, each pixel one of 64 colours, in raster order.
#   python data/images/prepare.py --size=16 --k=64        # CIFAR-10 (or --input=FOLDER_OR.npy)
#   python train.py config/train_images.py
#   python sample.py --out_dir=out-images --png=samples.png
out_dir = 'out-images'
dataset = 'images'
eval_interval = 250
eval_iters = 10
log_interval = 25
always_save_checkpoint = True

# each example is the start token then 256 pixels: 256 inputs
block_size = 256
batch_size = 16
gradient_accumulation_steps = 1

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

learning_rate = 2e-3
max_iters = 1500
lr_decay_iters = 1500
min_lr = 2e-4
warmup_iters = 100

device = 'cpu'
compile = False
