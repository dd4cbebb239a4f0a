"""The Gradio page over :class:`~factorportrait.app.session.Renderer` (docs/app.md).

Left: the portrait (or the demo's held-out identity), the driving performance (a video, a
control track, or the demo's driver; two tracks for ``mixed``) and the mode. Middle: the camera
trajectory, a preset with its parameters or a camera file, whose 3D plot redraws on every
change. Right: sampling, then *Preview conditions* (no weights read) and *Render*, which shows
the conditions first, then renders with a progress bar and offers the mp4, the control track
and the contact sheet. A bad input is one line in the status box, the message
``factorportrait-render`` prints; renders are queued one at a time.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from factorportrait.app.session import Renderer, RenderForm, plot_cameras
from factorportrait.diffusion.guidance import GUIDANCE_MODES
from factorportrait.geometry.trajectories import EASINGS, TRAJECTORY_PRESETS
from factorportrait.inference.controls import CONTROL_MODES, MODE_FACTORS

LOG = logging.getLogger(__name__)
SLIDERS = {  # preset parameter -> (label, minimum, maximum, step)
    "degrees": ("sweep (degrees)", -360.0, 360.0, 5.0),
    "yaw_deg": ("start yaw (degrees)", -180.0, 180.0, 5.0),
    "elevation_deg": ("elevation (degrees)", -60.0, 60.0, 1.0),
    "distance": ("distance (m)", 0.2, 2.0, 0.05),
    "end_distance": ("end distance (m)", 0.1, 2.0, 0.05),
}
DISPLAY = 256  # pixels: the reference is shown at least this large (nearest-neighbour)


def error_line(err: BaseException) -> str:
    """The status line of a failed request: the CLI's one-line message for input errors."""
    first = (str(err).strip().splitlines() or [""])[0]
    if isinstance(err, (FileNotFoundError, ValueError)):
        return f"**error:** {first}"
    LOG.exception("request failed")
    return f"**internal error** ({type(err).__name__}): {first} (details in the server's log)"


def _enlarged(image: np.ndarray) -> np.ndarray:
    factor = max(1, DISPLAY // max(image.shape[:2]))
    return image.repeat(factor, 0).repeat(factor, 1)


def build_app(renderer: Renderer):
    """The ``gr.Blocks`` page (not launched). Every input passes through
    :class:`~factorportrait.app.session.RenderForm`."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    defaults = renderer.defaults
    height, width = renderer.size
    orbit = _preset_values("orbit")
    with gr.Blocks(title="FactorPortrait", analytics_enabled=False) as app:
        gr.Markdown("# FactorPortrait\nExpression, pose and camera, controlled independently. "
                    f"Checkpoint `{renderer.checkpoint}` ({height}×{width}, "
                    f"{renderer.default_frames} frames by default).")
        demo = gr.State(False)
        with gr.Row():
            with gr.Column():
                portrait = gr.File(label="portrait image", type="filepath", elem_id="portrait")
                demo_button = gr.Button("use the demo's held-out identity", size="sm",
                                        elem_id="demo-identity")
                shown = gr.Image(label="reference", interactive=False, height=DISPLAY,
                                 elem_id="reference-view")
                mode = gr.Radio(list(CONTROL_MODES), value="camera_only", label="mode",
                                elem_id="mode")
                driving_video = gr.File(label="driving video", type="filepath",
                                        elem_id="driving-video")
                control_track = gr.File(label="control track (.safetensors)", type="filepath",
                                        elem_id="control-track")
                driver_button = gr.Button("use the demo's driver", size="sm",
                                          elem_id="demo-driver")
                with gr.Group(visible=False) as mixed:
                    expression_track = gr.File(label="mixed: expression track (clip A)",
                                               type="filepath", elem_id="expression-track")
                    pose_track = gr.File(label="mixed: pose track (clip B)", type="filepath",
                                         elem_id="pose-track")
            with gr.Column():
                trajectory = gr.Radio(list(TRAJECTORY_PRESETS), value="orbit",
                                      label="camera trajectory", elem_id="trajectory")
                sliders = {key: gr.Slider(low, high, value=orbit.get(key, low), step=step,
                                          label=label, visible=key in orbit,
                                          elem_id=f"param-{key}")
                           for key, (label, low, high, step) in SLIDERS.items()}
                easing = gr.Radio(list(EASINGS), value="linear", label="easing",
                                  elem_id="param-easing")
                extra = gr.Textbox(label="more preset parameters (key=value, ...)",
                                   placeholder="end_focal=120, fov_deg=30", elem_id="extra")
                camera_file = gr.File(label="custom camera file (.json, transforms.json, .txt)",
                                      type="filepath", elem_id="camera-file")
                plot = gr.Image(label="trajectory", interactive=False, elem_id="trajectory-plot")
            with gr.Column():
                frames = gr.Number(renderer.default_frames, precision=0,
                                   label="frames (4k + 1; 0: the sources' length)",
                                   elem_id="frames")
                steps = gr.Number(defaults["steps"], precision=0, label="denoising steps",
                                  elem_id="steps")
                guidance = gr.Radio(list(GUIDANCE_MODES), value=defaults["guidance"],
                                    label="guidance", elem_id="guidance")
                scale = gr.Number(defaults["guidance_scale"], label="guidance scale",
                                  elem_id="guidance-scale")
                seed = gr.Number(defaults["seed"], precision=0, label="seed", elem_id="seed")
                paste_back = gr.Checkbox(False, label="paste back into the full photo",
                                         elem_id="paste-back")
                with gr.Row():
                    preview_button = gr.Button("preview conditions", elem_id="preview-button")
                    render_button = gr.Button("render", variant="primary",
                                              elem_id="render-button")
                status = gr.Markdown("", elem_id="status")
                video = gr.Video(label="result", interactive=False, height=DISPLAY,
                                 elem_id="result")
                downloads = gr.File(label="downloads", file_count="multiple",
                                    interactive=False, elem_id="downloads")
        sheet = gr.Image(label="conditions", interactive=False, elem_id="conditions")

        ready = gr.State(False)  # the conditions step passed: the render step may run
        form_inputs = [portrait, demo, driving_video, control_track, expression_track,
                       pose_track, mode, trajectory, *sliders.values(), easing, extra,
                       camera_file, frames, steps, guidance, scale, seed, paste_back]
        camera_inputs = [trajectory, *sliders.values(), easing, extra, camera_file, frames]

        def form(*values: Any) -> RenderForm:
            (portrait_, demo_, video_, track_, expression_, pose_, mode_, preset, *rest) = values
            shown = _preset_values(preset)  # hidden sliders keep stale values: not sent
            params = {key: value for key, value in zip(SLIDERS, rest[:len(SLIDERS)])
                      if key in shown}
            easing_, extra_, camera_, frames_, steps_, guidance_, scale_, seed_, paste_ = \
                rest[len(SLIDERS):]
            return RenderForm(
                portrait=portrait_, demo_identity=bool(demo_), driving_video=video_,
                control_track=track_, expression_track=expression_, pose_track=pose_,
                mode=mode_, trajectory=preset, params={**params, "easing": easing_},
                extra=extra_ or "", camera_file=camera_,
                frames=_integer(frames_, "frames", allow_zero=True),
                steps=_integer(steps_, "steps"), guidance=guidance_,
                guidance_scale=float(scale_ if scale_ is not None else 1.0),
                seed=_integer(seed_, "seed", allow_zero=True) or 0, paste_back=bool(paste_))

        def camera_form(preset, *values):
            shown = _preset_values(preset)
            params = {key: value for key, value in zip(SLIDERS, values[:len(SLIDERS)])
                      if key in shown}
            easing_, extra_, camera_, frames_ = values[len(SLIDERS):]
            return RenderForm(mode="camera_only", trajectory=preset,
                              params={**params, "easing": easing_}, extra=extra_ or "",
                              camera_file=camera_), frames_

        def draw(*values):
            try:
                camera, frames_ = camera_form(*values)
                count = _integer(frames_, "frames", allow_zero=True) or \
                    renderer.default_frames
                # the status is left alone: a late plot must not wipe an error line
                return plot_cameras(camera, count, height, width), gr.update()
            except Exception as err:  # noqa: BLE001 - every failure is a status line
                return None, error_line(err)

        def choose_preset(preset, *values):
            defaults_ = _preset_values(preset)
            updates = [gr.update(visible=key in defaults_, value=defaults_.get(key))
                       if key in defaults_ else gr.update(visible=False) for key in SLIDERS]
            slider_values = [defaults_.get(key, value) for key, value in
                             zip(SLIDERS, values[:len(SLIDERS)])]
            image, line = draw(preset, *slider_values, *values[len(SLIDERS):])
            return [*updates, image, line]

        def show_portrait(path):
            if not path:
                return None, False, ""
            from factorportrait.io.video import read_image
            try:
                return _enlarged(np.asarray(read_image(path))), False, ""
            except Exception as err:  # noqa: BLE001 - every failure is a status line
                return None, False, error_line(err)

        def pick_demo():
            try:
                identity = renderer.demo_identity()
            except Exception as err:  # noqa: BLE001
                return gr.update(), None, False, error_line(err)
            return None, _enlarged(identity.photo), True, f"reference: the demo's held-out " \
                f"identity `{identity.name}` (its avatar renders the pose)"

        def pick_driver():
            try:
                return str(renderer.demo_driver()), "driver: the demo's other held-out identity"
            except Exception as err:  # noqa: BLE001
                return None, error_line(err)

        def preview(*values):
            try:
                return renderer.preview(form(*values)), "conditions ready (no weights read)"
            except Exception as err:  # noqa: BLE001
                return None, error_line(err)

        def conditions(*values):
            """Render, first half: the conditions preview (no weights) -> (status, sheet,
            whether to go on)."""
            try:
                return ("conditions ready; rendering…", renderer.preview(form(*values)),
                        True)
            except Exception as err:  # noqa: BLE001
                return error_line(err), None, False

        def render(data, progress=gr.Progress(track_tqdm=True)):
            """Render, second half (after :func:`conditions` passed): the video and the
            downloads, with the sampler's tqdm bar on the page. ``data`` maps each input
            component to its value (Gradio finds ``progress`` among positional parameters
            only, so the inputs cannot be ``*values``)."""
            if not data[ready]:
                return gr.update(), None, None
            try:
                result = renderer.render(form(*(data[component] for component in
                                                form_inputs)))
            except Exception as err:  # noqa: BLE001
                return error_line(err), None, None
            return (result.message, str(result.video),
                    [str(result.video), str(result.track), str(result.sheet)])

        portrait.upload(show_portrait, portrait, [shown, demo, status])
        portrait.clear(lambda: (None, False, ""), None, [shown, demo, status])
        demo_button.click(pick_demo, None, [portrait, shown, demo, status])
        driver_button.click(pick_driver, None, [control_track, status])
        mode.change(lambda value: gr.update(visible=value == "mixed"), mode, mixed)
        mode.change(_camera_note, mode, status)
        trajectory.change(choose_preset, camera_inputs, [*sliders.values(), plot, status],
                          trigger_mode="always_last")
        gr.on([slider.release for slider in sliders.values()]
              + [easing.change, extra.submit, extra.blur, camera_file.change, frames.change],
              draw, camera_inputs, [plot, status], trigger_mode="always_last")
        app.load(draw, camera_inputs, [plot, status])
        preview_button.click(preview, form_inputs, [sheet, status], concurrency_id="model",
                             concurrency_limit=1)
        render_button.click(conditions, form_inputs, [status, sheet, ready],
                            concurrency_id="model", concurrency_limit=1).then(
            render, {ready, *form_inputs}, [status, video, downloads],
            concurrency_id="model", concurrency_limit=1)
    return app


def _preset_values(name: str) -> dict[str, Any]:
    from factorportrait.app.session import preset_defaults

    return {key: value for key, value in preset_defaults(name).items()
            if key in SLIDERS and value is not None}


def _camera_note(mode: str) -> str:
    if MODE_FACTORS[mode].camera == "reference":
        return f"mode `{mode}` keeps the reference camera: the trajectory is not used"
    return ""


def _integer(value: Any, name: str, allow_zero: bool = False) -> int | None:
    """A page number field -> int (None stays None for optional fields)."""
    if value is None or value == "":
        if allow_zero:
            return None
        raise ValueError(f"{name}: enter a whole number")
    number = float(value)
    if not number.is_integer():
        raise ValueError(f"{name}: expected a whole number, got {value}")
    return int(number)

