"""The web app (``factorportrait-app``, docs/app.md): a Gradio page over the public pipeline.

- :mod:`~factorportrait.app.session`: the work behind the page, usable without it.
- :mod:`~factorportrait.app.ui`: the page.
"""

from __future__ import annotations

from typing import Any

from factorportrait.app.session import AppResult, DemoIdentity, Renderer, RenderForm


def launch(renderer: Renderer, host: str = "127.0.0.1", port: int = 7860, *,
           block: bool = True, **launch_kwargs: Any):
    """Serve the page for ``renderer`` on ``host:port`` (127.0.0.1: this machine only). One
    request runs at a time; others wait in the queue. ``block=False`` returns the running
    ``gr.Blocks`` (``app.close()`` stops it)."""
    import gradio as gr

    from factorportrait.app.ui import build_app

    app = build_app(renderer)
    app.queue(default_concurrency_limit=1)
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # no web fonts
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block,
               allowed_paths=[str(renderer.output_dir.resolve())], theme=theme,
               footer_links=[], quiet=not block, **launch_kwargs)
    return app


__all__ = ["AppResult", "DemoIdentity", "RenderForm", "Renderer", "launch"]
