"""Losses of the vision-language trainers; nnU-Net's Dice+CE stays unchanged (import from the submodules)."""
