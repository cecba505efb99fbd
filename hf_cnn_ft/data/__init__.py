"""Images in, clean splits out: sources, splits, the one decoding pass, preprocessing, model inputs."""
