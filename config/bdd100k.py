# Real BDD100K on GPUs, the base model with DDP:
# $ python prepare.py --bdd_root=/path/to/bdd100k --img_h=288 --img_w=512
# $ torchrun --standalone --nproc_per_node=8 train.py config/bdd100k.py
# Real answers are imbalanced (most lights are far away, most lanes busy): class weights and
# label smoothing keep the rare answers from being ignored.
data_dir = 'data/bdd100k'
out_dir = 'out-bdd100k'
patch = 16
vit_width, vit_depth, vit_heads, vit_mlp = 768, 6, 12, 2048
dec_width, dec_depth, dec_heads, dec_kv_heads, dec_mlp = 512, 4, 8, 2, 2048
fusion = 'cross'
dropout = 0.1
batch_size = 64               # per GPU: 8 GPUs x 64 = 512 questions per step
questions_per_image = 4
lr = 3e-4
min_lr = 3e-5
max_iters = 30000
warmup_iters = 1000
lr_decay_iters = 30000
eval_interval = 1000
log_interval = 50
eval_max_questions = 20000
lr_vit = 0.5
label_smoothing = 0.1
class_weights = True
augment = True
hflip = True
compile = True
peak_flops = 312e12           # A100 bf16 dense; set your GPU's figure for a meaningful MFU
patience = 5
