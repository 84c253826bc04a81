# The medium model, for one GPU and real BDD100K frames at 144x256 (52.1M parameters):
# vision 768 wide x 6 layers x 12 heads, text 512 wide x 4 layers, 8 query / 2 key-value heads, MLP 2048.
# $ python prepare.py --bdd_root=/path/to/bdd100k && python train.py config/base.py
data_dir = 'data/bdd100k'
out_dir = 'out-base'
patch = 16
vit_width, vit_depth, vit_heads, vit_mlp = 768, 6, 12, 2048
dec_width, dec_depth, dec_heads, dec_kv_heads, dec_mlp = 512, 4, 8, 2, 2048
fusion = 'cross'
dropout = 0.1
batch_size = 128
questions_per_image = 4
lr = 3e-4
min_lr = 3e-5
max_iters = 20000
warmup_iters = 1000
lr_decay_iters = 20000
eval_interval = 1000
log_interval = 50
lr_vit = 0.5                  # a from-scratch ViT is the least stable part: a gentler step
label_smoothing = 0.1
compile = True
