# Real BDD100K on GPUs: the base model (config/base.py) with DDP, on top of which this file applies.
# $ python prepare.py --bdd_root=/path/to/bdd100k --img_h=288 --img_w=512 --out=data/bdd100k_288x512
# $ torchrun --standalone --nproc_per_node=8 train.py config/base.py config/bdd100k.py
data_dir = 'data/bdd100k_288x512'   # its own folder: config/base.py's data/bdd100k holds 144x256 frames
# Real answers are imbalanced (most lights are far away, most lanes busy): class weights and
# label smoothing keep the rare answers from being ignored.
out_dir = 'out-bdd100k'
batch_size = 64               # per GPU: 8 GPUs x 64 = 512 questions per step
max_iters = 30000
lr_decay_iters = 30000
eval_max_questions = 20000
class_weights = True
augment = True
hflip = True
peak_flops = 312e12           # A100 bf16 dense; set your GPU's figure for a meaningful MFU
patience = 5
