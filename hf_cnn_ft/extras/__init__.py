"""Offline helpers outside the pipeline: real datasets and pretrained weights fetched from package registries."""
