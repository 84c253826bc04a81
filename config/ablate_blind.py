# Ablation: the question-only model: it never sees the image, so it measures what the questions give away
# $ python train.py config/small.py config/ablate_blind.py
out_dir = 'out-ablate-blind'
fusion = 'none'
look_weight = 0.0             # no image, so nowhere to look
