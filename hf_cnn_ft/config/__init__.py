"""The recipe: its dataclasses, loading from YAML and the command line, and every check, run once at load."""
