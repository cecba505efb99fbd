"""train() as named steps, the Trainer subclass, the learning-rate range test, backbone comparison."""
