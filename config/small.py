# The CPU quickstart: the embedded synthetic world (python prepare.py), ~1.5M parameters,
# a few minutes on a 2-core laptop CPU.
data_dir = 'data/synthetic'
out_dir = 'out-small'
patch = 16
vit_width, vit_depth, vit_heads, vit_mlp = 128, 4, 4, 512
dec_width, dec_depth, dec_heads, dec_kv_heads, dec_mlp = 128, 2, 4, 2, 512
fusion = 'cross'
batch_size = 64
questions_per_image = 4
lr = 7e-4                     # 2e-3 spiked and stalled the ViT; 7e-4 is stable
min_lr = 7e-5
max_iters = 2500
warmup_iters = 200
lr_decay_iters = 2500
eval_interval = 250
log_interval = 50
