"""The web server's map of the index and its live status (issue 22), added to the app by ``add_map_routes``.

Routes
------
``GET /api/status``             the index's generation, counts and class names, the watcher's (``serve --watch``) and the maps'
                                states: what the page polls to show new items without a reload
``GET /api/map``                ``?kind=objects|images&points=true|false``: the map's state (``missing``,
                                ``computing`` with ``progress`` 0..1 and ``phase``, ``ready``, ``failed`` with
                                ``error``); when ready and ``points``, ``points: {id, x, y, class_id, media_id}`` (lists,
                                one entry per live item). Asking starts the layout when there is none.
``GET /api/map/points``         ``?kind=``: the same points as little-endian binary for the page's canvas: ``n``
                                uint32 and 4 bytes of padding, then ids float64 (n), media ids float64 (n), x, y float32 interleaved (2n),
                                class ids int16 (n; -1: an image without objects); 409 while there is no map
``GET /api/map/item/{id}``      ``?kind=``: one point's item: its media id, path, frame, and for an object its box
                                (pixels xyxy), class and confidence (the page's hover and click)

The layout runs in a child process (``objsearch.layout_map.MapService``); map work in the server runs in the default
thread pool, not in the searches' bounded pool, so it never takes a search's turn.
"""

from __future__ import annotations

import struct

import anyio
import numpy as np
from fastapi import Query
from fastapi.responses import Response

from objsearch.layout_map import KINDS, MapService
from objsearch.types import printable


def _image_classes(catalog) -> np.ndarray:
    """(M,) int16: the class of each media item's most confident object, -1 for one without objects."""
    out = np.full(len(catalog.media_id), -1, np.int16)
    if len(catalog.object_id):
        order = np.lexsort((-catalog.confidence, catalog.object_media_id))
        media, first = np.unique(catalog.object_media_id[order], return_index=True)
        rows = catalog.media_rows(media)
        ok = rows >= 0
        out[rows[ok]] = catalog.class_id[order][first][ok]
    return out


def add_map_routes(app, engine, *, follow_index, api_error, watch_stats=None, dims: int | None = None) -> dict:
    """Add the routes above to ``app`` (``objsearch.web.app.create_app`` calls it); returns the ``MapService`` per
    kind (closed by the caller on shutdown).

    Parameters
    ----------
    follow_index : the app's function that picks up other writers' commits (called before answering).
    api_error : the app's error type, ``api_error(status, message)``.
    watch_stats : a ``objsearch.watch.WatchStats`` when the server watches folders.
    dims : the projection dimension laid out; None: the engine's.
    """
    services = {kind: MapService(engine, kind, dims=dims) for kind in KINDS}
    app.state.maps = services

    def service(kind: str) -> MapService:
        if kind not in services:
            raise api_error(400, f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        return services[kind]

    async def run(fn, *args):  # the default thread pool: map work never takes a search's turn
        return await anyio.to_thread.run_sync(lambda: fn(*args))

    def points(kind: str):
        """(status, ids, media ids, xy, class ids) of the map in step with the index; arrays None without one."""
        follow_index()
        s = service(kind)
        with engine._lock:  # Engine.refresh swaps the catalog under this lock: read one catalog throughout
            return _points(s, engine.catalog, kind)

    def _points(s: MapService, c, kind: str):
        m = s.current()
        status = s.status()
        if m is None:
            return status, None, None, None, None
        if kind == "objects":
            rows = c.object_rows(m.ids)
            ok = rows >= 0
            media = np.where(ok, c.object_media_id[np.maximum(rows, 0)], -1)
            cls = np.where(ok, c.class_id[np.maximum(rows, 0)], -1).astype(np.int16)
        else:
            rows = c.media_rows(m.ids)
            media = m.ids
            cls = _image_classes(c)[np.maximum(rows, 0)]
            cls[rows < 0] = -1
        return status, m.ids, media, m.xy, cls

    @app.get("/api/status")
    async def status():
        def work():
            follow_index()
            c = engine.catalog
            return {"generation": int(c.generation), "images": int(len(c.media_id)), "objects": int(len(c.object_id)),
                    "class_names": list(c.class_names),
                    "watch": None if watch_stats is None else watch_stats.to_dict(),
                    "maps": {kind: s.status() for kind, s in services.items()}}

        return await run(work)

    @app.get("/api/map")
    async def map_json(kind: str = "objects", with_points: bool = Query(True, alias="points")):
        def work():
            status, ids, media, xy, cls = points(kind)
            if ids is not None and with_points:
                status["points"] = {"id": ids.tolist(), "x": np.round(xy[:, 0].astype(np.float64), 3).tolist(),
                                    "y": np.round(xy[:, 1].astype(np.float64), 3).tolist(),
                                    "class_id": cls.tolist(), "media_id": media.tolist()}
            return status

        return await run(work)

    @app.get("/api/map/points")
    async def map_binary(kind: str = "objects"):
        def work():
            status, ids, media, xy, cls = points(kind)
            if ids is None:
                raise api_error(409, f"the {kind} map is {status['state']}" +
                                (f" ({status['phase']}, {status['progress']:.0%})" if status["computing"] else ""))
            n = len(ids)
            body = b"".join([struct.pack("<II", n, 0), np.asarray(ids, "<f8").tobytes(), np.asarray(media, "<f8").tobytes(),
                             np.asarray(xy, "<f4").tobytes(), np.asarray(cls, "<i2").tobytes()])
            return Response(body, media_type="application/octet-stream",
                            headers={"Cache-Control": "no-cache", "X-Map-Version": str(status["version"])})

        return await run(work)

    @app.get("/api/map/item/{item_id}")
    async def map_item(item_id: int, kind: str = "objects"):
        def work():
            service(kind)
            c = engine.catalog
            if kind == "objects":
                row = int(c.object_rows([item_id])[0])
                if row < 0:
                    raise api_error(404, f"no indexed object has id {item_id}")
                media_id = int(c.object_media_id[row])
            else:
                media_id = item_id
            try:
                ref = c.media(media_id)
            except KeyError:
                raise api_error(404, f"no indexed image has id {media_id}") from None
            out = {"media_id": media_id, "path": printable(ref.path), "width": int(ref.width),
                   "height": int(ref.height)}
            if ref.frame_index >= 0:
                out.update(frame_index=int(ref.frame_index), timestamp_s=float(ref.timestamp_s))
            if kind == "objects":
                cid = int(c.class_id[row])
                names = c.class_names
                out.update(object_id=int(item_id), box=[float(v) for v in c.xyxy[row]], class_id=cid,
                           label=names[cid] if 0 <= cid < len(names) else str(cid),
                           confidence=float(c.confidence[row]))
            return out

        return await run(work)

    return services
