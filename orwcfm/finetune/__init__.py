"""Reward fine-tuning algorithms. ORW-CFM-W2: the loss in :mod:`.orw`, the loop in :mod:`.trainer`."""
