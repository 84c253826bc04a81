# Fine-tune a trained model on another prepared dataset: the quickstart's synthetic pretraining, then real BDD100K.
# $ python prepare.py --bdd_root=/path/to/bdd100k
# $ python train.py config/finetune.py --init_from=out-small/ckpt.pt --data_dir=data/bdd100k
# The architecture comes from the checkpoint; words and answers it knows keep their weights, new ones start fresh.
init_from = 'out-small/ckpt.pt'
data_dir = 'data/bdd100k'
out_dir = 'out-finetune'
batch_size = 128
questions_per_image = 8
lr = 2e-4                     # a third of config/small.py's: adjust what pretraining learned, don't overwrite it
min_lr = 2e-5
max_iters = 2000
warmup_iters = 100
lr_decay_iters = 2000
eval_interval = 200
log_interval = 50
patch_weight = 2.0            # BDD's boxes teach the patch head as the synthetic ones did
look_weight = 0.5             # ...and where each answer's deciding objects are, the look loss
augment = True
hflip = True
class_weights = True          # real answers are imbalanced (most lanes busy, most lights far)
