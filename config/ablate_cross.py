# Ablation: cross-attention only (the default fusion), as the reference of the ablation table
# $ python train.py config/small.py config/ablate_cross.py
out_dir = 'out-ablate-cross'
fusion = 'cross'
