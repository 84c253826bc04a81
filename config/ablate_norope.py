# Ablation: learned absolute positions in the decoder instead of RoPE
# $ python train.py config/small.py config/ablate_norope.py
out_dir = 'out-ablate-norope'
pos = 'learned'
