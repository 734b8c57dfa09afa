"""objsearch in the browser: ``objsearch serve`` runs a FastAPI app (``objsearch.web.app``) with one plain HTML page
(``static/``, no build step, nothing from another host) and a JSON API over one shared ``Engine``.

This package is the only place fastapi and uvicorn are imported; importing it imports neither (``serve`` and
``create_app`` load them on call), so the command line stays fast to start.
"""

from __future__ import annotations

from objsearch.fetch import UrlFetchError, address_allowed, fetch_image_url

__all__ = ["UrlFetchError", "WebSettings", "address_allowed", "create_app", "fetch_image_url", "serve"]


def __getattr__(name):
    if name in ("WebSettings", "create_app", "serve"):
        from objsearch.web import app

        return getattr(app, name)
    raise AttributeError(name)
