# Ablation: cross-attention and the image prefix together
# $ python train.py config/small.py config/ablate_both.py
out_dir = 'out-ablate-both'
fusion = 'both'
