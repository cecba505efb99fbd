"""Pretrained backbones from timm, transformers or a local directory: building, anatomy, weights, saving."""
