# Ablation: PaliGemma's image-prefix fusion only: image tokens before the question, full attention over them
# $ python train.py config/small.py config/ablate_prefix.py
out_dir = 'out-ablate-prefix'
fusion = 'prefix'
look_weight = 0.0             # the look loss teaches cross-attention, which this fusion does not have
