"""The `hf-cnn-ft` command line: parsing, dispatch, process settings and the demo."""
