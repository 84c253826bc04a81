# The reference model for speed comparisons across machines and projects; change nothing here, override on
# the command line instead, so every "config/bench.py" figure in a README means the same model.
# $ python bench.py config/bench.py
img_h, img_w, patch = 224, 224, 16
vit_width, vit_depth, vit_heads, vit_mlp = 256, 4, 4, 1024
dec_width, dec_depth, dec_heads, dec_kv_heads, dec_mlp = 256, 4, 4, 2, 1024
vocab_size = 1000
max_q_len = 16
n_answers = 32
batch_size = 32
questions_per_image = 1
fusion = 'cross'
patch_weight = 0.0            # the reference step is the answer loss alone
dtype = 'float32'
data_dir = 'data/bench'       # none by default: bench.py then builds a temporary one of random images
