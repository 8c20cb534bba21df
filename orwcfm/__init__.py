"""orwcfm: reward fine-tuning of flow-matching models (ORW-CFM-W2)."""

__version__ = "0.1.0"
