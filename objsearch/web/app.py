"""The web server: a FastAPI app over one shared ``Engine``, its page and its JSON API.

Routes
------
``GET /``                        the page (``static/index.html``; its script and style from ``/static/``)
``POST /api/search``             search an image: a multipart upload (field ``image``), a raw ``image/*`` body, JSON
                                 ``{"url": ...}``, or ``?media_id=`` (an indexed image, its own objects left out);
                                 query parameters ``k``, ``conf``, ``same_class``, ``dims``, ``mode``,
                                 ``include_self``; answers the ``objsearch query --json`` object
``GET /api/thumbnail/{id}``      an indexed object's stored JPEG thumbnail
``GET /api/media/{id}``          an indexed image, decoded and encoded again as JPEG (``max_side`` shrinks it); only
                                 files under the base directory (``Engine.media_path``)
``POST /api/fetch``              JSON ``{"url": ...}`` -> the image at a URL, checked and encoded again as JPEG (the
                                 page shows and crops it, then searches it as an upload)
``GET /api/examples``, ``GET /api/random``   indexed images to start from
``GET /api/info``                what ``objsearch info`` prints, as JSON (``objsearch.summary``)

Safety: bodies over ``max_upload_bytes`` get 413 (from ``Content-Length`` before reading, and while reading); images
over ``max_pixels`` are refused from their header; URLs go through ``objsearch.fetch``; no request names a file:
the page's files are a fixed set and indexed images are reached only by id through ``Engine.media_path``, which
reads only under the index's roots that the user chose (see docs/security.md). Ids and seeds are bounded (a 64-bit
id at most), JSON nested too deeply is refused. Every error is a 4xx (5xx for a bug) with a JSON body
``{"error": line}``; tracebacks go to the server's log only. CPU work (decoding, detection) runs in a bounded thread
pool so the event loop keeps answering; URL fetches wait on the network in a bounded pool of their own (and a full
queue of them is answered 503 at once), so uploads and searches never wait behind slow URLs.

With a ``token`` (``serve --token``, required when listening beyond loopback) every ``/api/`` route answers 401
unless the request carries it: ``Authorization: Bearer TOKEN``, or the ``objsearch_token`` cookie that the page gets
when it is opened once as ``/?token=TOKEN`` (HttpOnly, SameSite=Strict; the page then reloads without it in the
address).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException

from objsearch.errors import ImageReadError, IndexFileError, ObjsearchError
from objsearch.media import DEFAULT_MAX_PIXELS, decode_image, make_thumbnail, read_media
from objsearch.moments import DEFAULT_GROUP_S
from objsearch.roots import UntrustedRootError
from objsearch.summary import summarize
from objsearch.types import MediaRef, printable
from objsearch.fetch import DEFAULT_TIMEOUT_S, UrlFetchError, fetch_image_url

LOGGER = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8"}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
                               "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
}
MODES = ("objects", "image")  # "image" only for an index with whole-image vectors (``modes_of``)
MAX_K = 256
MAX_ID = (1 << 63) - 1  # ids are int64: a larger one is refused as a bad parameter, not an OverflowError
TOKEN_COOKIE = "objsearch_token"
MIN_TOKEN_CHARS = 16


@dataclass
class WebSettings:
    """What the server allows.

    max_upload_bytes : largest request body (uploads, JSON), bytes.
    max_pixels : largest image, pixels (checked from the header before decoding).
    allow_private_urls : URL queries may reach loopback, private and link-local addresses.
    url_timeout_s : deadline of one URL fetch, seconds.
    workers : searches (and decodes) that run at once; more wait their turn.
    url_workers : URL fetches that run at once, in a pool of their own (a fetch mostly waits on the network, for
        at most ``url_timeout_s``); more wait their turn, and past ``url_queue`` waiting ones a URL request is
        answered 503 at once.
    url_queue : URL fetches that may wait for a place.
    token : the secret every ``/api/`` request must carry (None: none asked; see the module docstring).
    refresh_s : how often, at most, a request checks whether another process (``objsearch add``, ``remove``,
        ``sync``) committed to the index, seconds; what it committed is then searched (``Engine.refresh``).
    """

    max_upload_bytes: int = 20 << 20
    max_pixels: int = DEFAULT_MAX_PIXELS
    allow_private_urls: bool = False
    url_timeout_s: float = DEFAULT_TIMEOUT_S
    workers: int = 2
    url_workers: int = 16
    url_queue: int = 32
    token: str | None = None
    refresh_s: float = 1.0


class _ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": _one_line(message)}, status_code=status, headers=SECURITY_HEADERS)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (announced or received)."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise _ApiError(400, "bad Content-Length")
        if int(length) > limit:
            raise _ApiError(413, f"the request is {int(length) / 1e6:.1f} MB, more than the limit of "
                                 f"{limit / 1e6:.0f} MB")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _ApiError(413, f"the request is more than the limit of {limit / 1e6:.0f} MB")
        chunks.append(chunk)
    return b"".join(chunks)


async def _parse_multipart(request: Request, body: bytes, limit: int) -> tuple[bytes, str]:
    """(image bytes, file name) of the ``image`` field (or the first file) of a multipart body already read."""

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form(max_files=2, max_fields=20, max_part_size=limit)
    try:
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            upload = next((v for _, v in form.multi_items() if not isinstance(v, str)), None)
        if upload is None:
            raise _ApiError(400, "no image in the upload (send it as the form field 'image')")
        data = await upload.read()
        return data, upload.filename or "upload"
    finally:
        await form.close()


def modes_of(engine) -> list[str]:
    """The search modes ``engine``'s index answers: ``objects``, and ``image`` when it holds whole-image vectors."""
    return [m for m in MODES if m == "objects" or engine.catalog.has_image_vectors]


def create_app(engine, settings: WebSettings | None = None, *, watch_stats=None) -> FastAPI:
    """The FastAPI app serving ``engine`` (an ``objsearch.engine.Engine``, shared by every request).

    Parameters
    ----------
    engine : Engine, re-entrant; searches run at most ``settings.workers`` at once.
    settings : limits and permissions (defaults: ``WebSettings()``).
    watch_stats : the ``objsearch.watch.WatchStats`` of a watcher running beside the server (``GET /api/status``).
    """
    settings = settings or WebSettings()
    app = FastAPI(title="objsearch", docs_url=None, redoc_url=None, openapi_url=None)
    limiter = anyio.CapacityLimiter(max(1, int(settings.workers)))
    url_limiter = anyio.CapacityLimiter(max(1, int(settings.url_workers)))
    url_fetches = [0]  # URL fetches running or waiting for url_limiter
    catalog_lock = threading.Lock()
    cache: dict = {}

    checked = [time.monotonic()]

    async def cpu(fn, *args):
        return await anyio.to_thread.run_sync(lambda: fn(*args), limiter=limiter)

    def follow_index() -> None:
        """Pick up other writers' commits, at most every ``settings.refresh_s``."""
        now = time.monotonic()
        if now - checked[0] < settings.refresh_s:
            return
        checked[0] = now
        try:
            changed = engine.refresh()
        except ObjsearchError as exc:
            raise _ApiError(503, str(exc)) from None
        if changed:
            with catalog_lock:
                cache.clear()

    def image_media_ids() -> np.ndarray:
        with catalog_lock:
            if "image_ids" not in cache:
                c = engine.catalog
                cache["image_ids"] = np.asarray(c.media_id)[np.asarray(c.media_frame_index) < 0]
                ids, first = np.unique(np.asarray(c.object_media_id), return_index=True)
                cache["first_object"] = dict(zip(ids.tolist(), np.asarray(c.object_id)[first].tolist()))
            return cache["image_ids"]

    def describe(media_id: int) -> dict:
        ref = engine.media(media_id)
        image_media_ids()
        return {"media_id": int(media_id), "path": printable(ref.path), "width": int(ref.width),
                "height": int(ref.height), "object_id": cache["first_object"].get(int(media_id))}

    def indexed_image(media_id: int) -> tuple[np.ndarray, MediaRef]:
        try:
            ref = engine.media(media_id)
        except KeyError:
            raise _ApiError(404, f"no indexed image has id {media_id}") from None
        try:
            path = engine.media_path(media_id)
        except UntrustedRootError as exc:  # a root the user did not choose (a crafted index names "/")
            raise _ApiError(403, str(exc)) from None
        if path is None:
            raise _ApiError(403, f"the indexed path of media {media_id} leaves the base directory; refused")
        try:
            return read_media(path, ref.frame_index, settings.max_pixels), ref  # a video's frame: decoded from it
        except ImageReadError:
            raise _ApiError(404, f"the file of media {media_id} cannot be read under the base directory") from None

    # ------------------------------------------------------------------------------------------ errors
    @app.exception_handler(_ApiError)
    async def _api_error(request, exc: _ApiError):
        return _error(exc.status, str(exc))

    @app.exception_handler(UrlFetchError)
    async def _url_error(request, exc):
        return _error(400, str(exc))

    @app.exception_handler(ImageReadError)
    async def _image_error(request, exc):
        return _error(422, str(exc))

    @app.exception_handler(ObjsearchError)
    async def _objsearch_error(request, exc):
        return _error(400, str(exc))

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        return _error(400, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(Exception)
    async def _bug(request, exc):
        LOGGER.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the server's log")

    def token_ok(request: Request) -> bool:
        given = request.cookies.get(TOKEN_COOKIE, "")
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        return hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                                   settings.token.encode("utf-8", "surrogateescape"))

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        if settings.token and request.url.path.startswith("/api/") and not token_ok(request):
            response = _error(401, "this server asks for its token: open the page once at the address `objsearch "
                                   "serve` printed (…/?token=…), or send Authorization: Bearer TOKEN")
        else:
            response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    # ------------------------------------------------------------------------------------------ the page
    def static(name: str) -> Response:
        data = (STATIC_DIR / name).read_bytes()
        return Response(data, media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})

    @app.get("/", include_in_schema=False)
    async def page(request: Request):
        given = request.query_params.get("token")
        if settings.token and given is not None:  # the token once in the address: kept as a cookie, then dropped
            response = RedirectResponse("/", status_code=303)
            if hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                                   settings.token.encode("utf-8", "surrogateescape")):
                response.set_cookie(TOKEN_COOKIE, settings.token, httponly=True, samesite="strict", path="/")
            return response
        return static("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str):
        if name not in STATIC_FILES:  # a fixed set: no name reaches the file system
            raise _ApiError(404, "not found")
        return static(name)

    # ------------------------------------------------------------------------------------------ the API
    @app.get("/api/info")
    async def info():
        await cpu(follow_index)
        data = summarize(engine.catalog).to_dict()
        data.update(roots=[{"path": printable(str(folder)), "readable": bool(ok)}
                           for folder, ok in zip(engine.roots.folders, engine.roots.trusted)])
        data.update(backend=engine.method, search_dims=int(engine.dims), conf=engine.conf, modes=modes_of(engine),
                    max_upload_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels,
                    allow_private_urls=settings.allow_private_urls)
        return data

    @app.get("/api/thumbnail/{object_id}")
    async def thumbnail(object_id: int = PathParam(ge=0, le=MAX_ID)):
        try:
            data = await cpu(engine.thumbnail, object_id)
        except KeyError:
            raise _ApiError(404, f"no indexed object has id {object_id}") from None
        except IndexFileError as exc:
            raise _ApiError(404, str(exc)) from None
        # ids are never reused, so an object's thumbnail never changes
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/api/media/{media_id}")
    async def media(media_id: int = PathParam(ge=0, le=MAX_ID), max_side: int = Query(0, ge=0, le=8192)):
        def work():
            image, _ = indexed_image(media_id)
            h, w = image.shape[:2]
            side = max(h, w) if not max_side else min(max_side, max(h, w))
            return make_thumbnail(image, np.array([0, 0, w, h], np.float32), size=side, quality=90)

        return Response(await cpu(work), media_type="image/jpeg", headers={"Cache-Control": "no-cache"})

    @app.get("/api/examples")
    async def examples(n: int = Query(12, ge=1, le=64), seed: int = Query(0, ge=0, le=MAX_ID)):
        await cpu(follow_index)
        ids = image_media_ids()
        if len(ids) > n:
            ids = np.sort(np.random.default_rng(seed).choice(ids, n, replace=False))
        return {"images": [describe(int(i)) for i in ids]}

    @app.get("/api/random")
    async def random_image():
        await cpu(follow_index)
        ids = image_media_ids()
        if not len(ids):
            raise _ApiError(404, "the index holds no images")
        return describe(int(ids[random.randrange(len(ids))]))

    async def read_json(request: Request) -> dict:
        body = await _read_body(request, settings.max_upload_bytes)
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise _ApiError(400, "the body is not valid JSON") from None
        except RecursionError:
            raise _ApiError(400, "the JSON body is nested too deeply") from None
        if not isinstance(data, dict):
            raise _ApiError(400, 'expected a JSON object such as {"url": "https://..."}')
        return data

    async def fetch(url) -> tuple[bytes, str]:
        """Fetch ``url`` in the URL pool (never the searches' pool, nor the default one that uploads use)."""
        if not isinstance(url, str):
            raise _ApiError(400, 'expected {"url": "https://..."} with a string')
        most = max(1, int(settings.url_workers)) + max(0, int(settings.url_queue))
        if url_fetches[0] >= most:  # counted here, on the event loop's one thread, before any await
            raise _ApiError(503, f"{most} URL fetches are in progress or waiting; try again shortly (uploads are "
                                 f"served meanwhile)")
        url_fetches[0] += 1
        try:
            return await anyio.to_thread.run_sync(
                lambda: fetch_image_url(url, allow_private=settings.allow_private_urls,
                                        timeout_s=settings.url_timeout_s, max_bytes=settings.max_upload_bytes),
                limiter=url_limiter)
        finally:
            url_fetches[0] -= 1

    @app.post("/api/fetch")
    async def fetch_url(request: Request):
        data = await read_json(request)

        # waiting on the network in the URL pool; decoding and encoding with the searches' CPU limit
        body, final = await fetch(data.get("url"))

        def work():
            image = decode_image(body, printable(final)[:200], max_pixels=settings.max_pixels)
            h, w = image.shape[:2]
            return make_thumbnail(image, np.array([0, 0, w, h], np.float32), size=max(h, w), quality=92)

        return Response(await cpu(work), media_type="image/jpeg")

    @app.post("/api/search")
    async def search(request: Request, k: int = Query(16, ge=1, le=MAX_K), conf: float | None = Query(None, ge=0, le=1),
                     same_class: bool = False, dims: int | None = None, mode: str = "objects",
                     media_id: int | None = Query(None, ge=0, le=MAX_ID), include_self: bool = False,
                     group_s: float = Query(DEFAULT_GROUP_S, ge=0, le=3600), group: bool = True):
        modes = modes_of(engine)
        if mode not in modes:
            raise _ApiError(400, f"mode must be one of {', '.join(modes)} for this index, got {mode!r}")
        stored = engine.catalog.dims if mode == "objects" else engine.catalog.image_dims
        if dims is not None and dims not in stored:
            raise _ApiError(400, f"dims must be one of {stored} (stored in the index), got {dims}")
        kwargs = dict(k=k, conf=conf, same_class=same_class, dims=dims, group_s=group_s if group else None)

        def run_search(image, query: MediaRef, exclude: int, timings: dict) -> dict:
            if mode == "image":  # one row of similar whole images (the query --mode image --json object)
                return engine.search_image(image, k=k, dims=dims, exclude_media_id=exclude, query=query,
                                           timings=timings).to_dict()
            return engine.search(image, exclude_media_id=exclude, query=query, timings=timings, **kwargs).to_dict()
        if media_id is not None:
            def work():
                follow_index()
                t0 = time.perf_counter()
                image, ref = indexed_image(media_id)
                decode = (time.perf_counter() - t0) * 1e3
                exclude = -1 if include_self else int(media_id)
                query = MediaRef(path=ref.path, media_id=exclude, frame_index=ref.frame_index,
                                 timestamp_s=ref.timestamp_s)
                return run_search(image, query, exclude, {"decode": decode})

            return await cpu(work)
        ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        url = None
        if ctype == "application/json":
            data = await read_json(request)
            url = data.get("url")
            if url is None:
                raise _ApiError(400, 'expected {"url": "https://..."}, or an image upload')
            body, name = await fetch(url)
        elif ctype == "multipart/form-data":
            raw = await _read_body(request, settings.max_upload_bytes)
            body, name = await _parse_multipart(request, raw, settings.max_upload_bytes)
        elif ctype.startswith("image/") or ctype == "application/octet-stream":
            body, name = await _read_body(request, settings.max_upload_bytes), "upload"
        else:
            raise _ApiError(415, "send an image as multipart/form-data (field 'image'), as an image/* body, or JSON "
                                 '{"url": ...}')
        name = printable(name)[:300]

        def work():
            follow_index()
            t0 = time.perf_counter()
            image = decode_image(body, name, max_pixels=settings.max_pixels)
            decode = (time.perf_counter() - t0) * 1e3
            return run_search(image, MediaRef(path=name), -1, {"decode": decode})

        return await cpu(work)

    from objsearch.web.map_routes import add_map_routes  # the map and the live status (issue 22)

    add_map_routes(app, engine, follow_index=follow_index, api_error=_ApiError, watch_stats=watch_stats)
    app.state.engine = engine
    app.state.settings = settings
    return app


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable from this machine only."""
    if host.strip().lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_token(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token, and a token too short to guess at.

    Raises
    ------
    ObjsearchError
        (exit 2) With one line saying what to pass.
    """
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ObjsearchError(f"--token must have at least {MIN_TOKEN_CHARS} characters, got {len(token)} (for "
                             f"example: python -c 'import secrets; print(secrets.token_urlsafe())')")
    if token is None and not is_loopback(host):
        raise ObjsearchError(f"--host {host} lets anyone on the network search the index and read its images: pass "
                             f"--token SECRET (or set OBJSEARCH_TOKEN; at least {MIN_TOKEN_CHARS} characters), and "
                             f"open the page once as http://HOST:PORT/?token=SECRET")


def serve(index, *, host: str = "127.0.0.1", port: int = 7860, backend: str = "auto", base_dir=None, weights=None,
          device=None, dims=None, settings: WebSettings | None = None, echo=print, watch=None,
          watch_settings=None) -> None:
    """Open ``index`` and serve the page and the API until interrupted. With ``watch`` (a list of folders; empty:
    the index's base directory) an ``objsearch.watch.Watcher`` keeps the index in step with them meanwhile, with the
    server's detector, and the page shows what it adds (``watch_settings``: its ``WatchSettings``).

    Raises
    ------
    IndexFileError, WeightsMismatchError, WeightsNotFoundError, ConfigError
        When ``index`` is not a file, or from opening it (see ``objsearch.engine.Engine``).
    ObjsearchError
        When the address cannot be bound, or ``host`` is beyond loopback and ``settings.token`` is not set
        (``check_token``).
    """
    import socket

    import uvicorn

    from objsearch.engine import Engine

    settings = settings or WebSettings()
    if not Path(index).is_file():
        raise IndexFileError(f"index file {index} does not exist")
    check_token(host, settings.token)  # before the index and the detector load
    # fail on a taken port before the detector loads (seconds)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise ObjsearchError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    engine = Engine(index, weights=weights, base_dir=base_dir, dims=dims, device=device, backend=backend,
                    max_pixels=settings.max_pixels)
    stop_watch = watcher = app = None
    try:
        if watch is not None:
            from objsearch.watch import Watcher, watch_in_background

            watcher = Watcher(index, list(watch) or None, detector=engine.detector, settings=watch_settings)
        engine.warmup()  # the index's common image sizes and a camera's, and the vector store: no cold first search
        app = create_app(engine, settings, watch_stats=None if watcher is None else watcher.stats)
        if watcher is not None:
            _, stop_watch = watch_in_background(watcher)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                timeout_keep_alive=5, limit_concurrency=256, server_header=False)
        server = uvicorn.Server(config)
        shown = f"[{host}]" if ":" in host else host
        echo(f"serving {index} ({len(engine.catalog.media_id)} images, {len(engine.catalog.object_id)} objects, "
             f"{engine.method}) at http://{shown}:{port}/ (Ctrl-C stops)")
        if not is_loopback(host):
            echo(f"note: listening on {host}: other machines can reach this page; every API request needs the "
                 f"token (open http://HOST:{port}/?token=… once in a browser)")
        if watcher is not None:
            echo(f"watching {', '.join(printable(str(f)) for f in watcher.folders)}")
        server.run()
    finally:
        if stop_watch is not None:
            stop_watch.set()
        if app is not None:
            for service in app.state.maps.values():  # a layout still running in its child process
                service.close()
        engine.close()
