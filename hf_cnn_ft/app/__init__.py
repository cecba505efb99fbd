"""The demo page of a fine-tuned model: `hf-cnn-ft app`, and the Space that `hf-cnn-ft push --space` creates.

Needs the `app` extra (Gradio): pip install 'hf-cnn-ft[app]'. Start it with `hf_cnn_ft.app.page.serve`.
"""
