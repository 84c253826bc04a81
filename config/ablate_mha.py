# Ablation: plain multi-head attention in the decoder instead of grouped-query (as many key/value heads as query heads)
# $ python train.py config/small.py config/ablate_mha.py
out_dir = 'out-ablate-mha'
dec_kv_heads = 4
