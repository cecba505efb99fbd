"""The demo page (Gradio): drop an image, see the most likely classes and where the model looked.

`serve` is what `hf-cnn-ft app` and a pushed Space's app.py both run, so the two pages are the same.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from hf_cnn_ft.app.demo_model import DemoModel, classify, explain, headline, load_demo_model
from hf_cnn_ft.data.images import open_image
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.evaluation.predict import Answer
from hf_cnn_ft.evaluation.rejection import UNKNOWN
from hf_cnn_ft.models.io import folded_temperature_of

# The system's own fonts: the default theme would fetch web fonts, which an offline machine cannot.
THEME = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


SHOWN_HEIGHT = 256  # small model inputs (32 px...) are enlarged to be seen; pixels stay square


def _shown_large(picture: np.ndarray | None) -> np.ndarray | None:
    if picture is None or picture.shape[0] >= SHOWN_HEIGHT:
        return picture
    scale = -(-SHOWN_HEIGHT // picture.shape[0])
    return picture.repeat(scale, axis=0).repeat(scale, axis=1)


def answer_text(answer: Answer) -> str:
    """The page's one-line answer: the class, or that the image looks like none of them; of a multi-label model,
    every label at or above its threshold."""
    if answer.label_set is not None:
        return "**" + ", ".join(answer.label_set) + "**" if answer.label_set else "**No label** reaches its threshold"
    if answer.answer == UNKNOWN:
        return (
            f"**Unknown**: this image looks like none of the classes the model was trained on (familiarity "
            f"{answer.familiarity:.3g}, below the threshold fitted on its validation images); closest: "
            f"{answer.labels[0]}"
        )
    return f"**{answer.answer}**"


def build_page(demo: DemoModel, top_k: int = 3) -> gr.Blocks:
    """The page for one loaded model; `launch` it, or `serve` a source in one call."""

    def on_image(upload: dict[str, Any] | None) -> tuple[str, dict[str, float] | None, np.ndarray | None]:
        if not upload:
            return "", None, None
        path = upload["path"]
        try:
            image = open_image(path)
        except ValueError as exc:
            name = Path(path).name  # the server's own copy of the upload: its folder means nothing to the user
            reason = str(exc).replace(path, name)
            raise gr.Error(
                f"{name} is not an image that can be read ({reason}): choose a JPEG, PNG, WebP or TIFF file",
                print_exception=False,
            ) from None
        answer = classify(demo, image, top_k)
        shown = _shown_large(explain(demo, image, answer.labels[0]))
        return answer_text(answer), dict(zip(answer.labels, answer.scores)), shown

    calibrated = " (calibrated probabilities)" if folded_temperature_of(demo.model) != 1.0 else ""
    with gr.Blocks(title=f"{demo.name} · hf-cnn-ft", analytics_enabled=False) as page:
        gr.Markdown(headline(demo))
        with gr.Row():
            with gr.Column():
                upload = gr.Image(label="Image: drop one here, paste it or click to choose", elem_id="upload")
                if demo.examples:
                    gr.Examples([[str(path)] for path in demo.examples], inputs=upload, label="Test images of this run")
            with gr.Column():
                said = gr.Markdown(elem_id="answer")
                labels = gr.Label(num_top_classes=top_k, label=f"Most likely classes{calibrated}", elem_id="labels")
                cam = gr.Image(
                    label="What the model sees, and where it looked for the top class (Grad-CAM)",
                    interactive=False,
                    elem_id="gradcam",
                    height=320,
                )
        # The handler reads the uploaded file itself (preprocess=False): exactly what `hf-cnn-ft predict` reads,
        # and for a file that is not an image, its own message on the page, where gr.Image's decoding would
        # fail first with a bare "Error".
        upload.change(on_image, upload, [said, labels, cam], preprocess=False)
    return page


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the server binds: a port that a closed connection still lingers on (TIME_WAIT) counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            raise UserError(f"port {port} on {host} is in use: pass --port with a free port") from None


def serve(source: str, port: int | None = None, host: str | None = None, share: bool = False, top_k: int = 3) -> None:
    """Loads `source` (run directory, adapter run or Hub id) and serves its page until interrupted. Host and
    port default to Gradio's (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, which a Space sets)."""
    if port is not None:
        check_port_free(host or "127.0.0.1", port)  # before the model loads: a taken port is one line at once
    demo = load_demo_model(source)
    folders = sorted({str(path.parent) for path in demo.examples})
    build_page(demo, top_k).launch(
        server_name=host, server_port=port, share=share, theme=THEME, allowed_paths=folders, footer_links=["gradio"]
    )
