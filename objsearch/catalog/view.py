"""The read surface of an index, declared once for the reader (``Catalog``) and the writer (``CatalogWriter``).

Both show the same root attributes, roots, projections and live media and object columns; they differ only in where
the columns come from (the reader loads them once when it opens the file; the writer reads the committed rows each
time it is asked) and the writer's roots include those set since the last commit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from objsearch.catalog.attrs import roots_of
from objsearch.catalog.schema import rerank_dims, search_dims
from objsearch.errors import IndexFileError
from objsearch.projection import Projection


class CatalogView:
    """What an index shows of itself; ids are stable (format 1: rows).

    Attributes
    ----------
    path : Path
    attrs : dict, the root attributes decoded (JSON ones as Python values), as committed
    uuid : str (32 hex digits; "" for format 1)
    generation : int, +1 per committed transaction
    state : str, "ready" or "analyzing"
    class_names : list of str
    n_features : int, D
    weights_sha256, base_dir : str
    roots : list of str, the root folders media paths are relative to (roots[0] == base_dir; see
        ``objsearch.roots`` for which of them may be read)
    root_macs : list of str, one per root: how this machine's user recorded it ("" when not)
    dims : list of int, the stored search projections' dimensions
    rerank_dims : int or None, the rerank projection's (``objsearch.rerank``), None for an index made without
    vector_backend : dict or None, the vector backend chosen for the index and its options (``{"name", "options"}``)
    media_id : ndarray of shape (M,), int64, live media items in increasing id order
    media_path : list of M str, relative to their root (non-UTF-8 bytes as surrogate escapes)
    media_root : ndarray of shape (M,), int32, which root each path is relative to
    media_width, media_height : ndarray of shape (M,), int32 pixels
    media_frame_index : ndarray of shape (M,), int64 (-1 for an image)
    media_timestamp_s : ndarray of shape (M,), float64 seconds (-1.0 for an image)
    media_file_size, media_file_mtime_ns : ndarray of shape (M,), int64 (-1 unknown)
    object_id : ndarray of shape (N,), int64, live objects in increasing id order
    object_media_id : ndarray of shape (N,), int64
    xyxy : ndarray of shape (N, 4), float32 pixels in the media item
    confidence : ndarray of shape (N,), float32
    class_id : ndarray of shape (N,), int64

    A subclass sets ``path`` and ``attrs`` and provides the live columns (``_live_media_column``,
    ``_live_object_column``) and the stored projections (``_stored_projections``).
    """

    path: Path
    attrs: dict

    # -- what a subclass provides
    def _attrs_now(self) -> dict:
        """The root attributes the roots are read from (a writer adds those set since its last commit)."""
        return self.attrs

    def _stored_projections(self) -> dict[int, Projection]:
        raise NotImplementedError

    def _live_media_column(self, name: str):
        """``name`` (a /media column, or ``path``, ``root``) of the live media items, in id order."""
        raise NotImplementedError

    def _live_object_column(self, name: str) -> np.ndarray:
        """``name`` (an /objects column) of the live objects, in id order."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- root attributes
    @property
    def uuid(self) -> str:
        return str(self.attrs.get("uuid", ""))

    @property
    def generation(self) -> int:
        return int(self.attrs.get("generation", 0))

    @property
    def state(self) -> str:
        return str(self.attrs.get("state", "ready"))

    @property
    def class_names(self) -> list[str]:
        return list(self.attrs.get("class_names", []))

    @property
    def n_features(self) -> int:
        return int(self.attrs["n_features"])

    @property
    def weights_sha256(self) -> str:
        return str(self.attrs.get("weights_sha256", ""))

    @property
    def base_dir(self) -> str:
        return str(self.attrs.get("base_dir", ""))

    @property
    def vector_backend(self) -> dict | None:
        """The vector backend chosen for this index, as stored: ``{"name": str, "options": dict}``; None when none was
        (indexes made before backends were recorded, or never given one). ``objsearch.vectors.registry`` reads it."""
        value = self.attrs.get("vector_backend")
        return None if value is None else {"name": value["name"], "options": dict(value["options"])}

    @property
    def roots(self) -> list[str]:
        """The root folders (a writer's: committed, or set since with ``set_attrs(roots=...)``)."""
        return roots_of(self._attrs_now())[0]

    @property
    def root_macs(self) -> list[str]:
        """One MAC per root, "" when none (a writer's: committed, or set since)."""
        return roots_of(self._attrs_now())[1]

    # -- projections
    @property
    def dims(self) -> list[int]:
        """The search vectors' dimensions (the rerank projection's is ``rerank_dims``)."""
        return search_dims(self._stored_projections())

    @property
    def rerank_dims(self) -> int | None:
        return rerank_dims(self._stored_projections())

    def projection(self, dims: int) -> Projection:
        """The stored projection to ``dims`` dimensions (one of ``dims``, or ``rerank_dims``). Raises IndexFileError
        when the index has none."""
        projections = self._stored_projections()
        if dims not in projections:
            raise IndexFileError(f"{self.path} holds projections to {self.dims} dims, not {dims}")
        return projections[dims]

    # -- live media items
    @property
    def media_id(self) -> np.ndarray:
        return self._live_media_column("id")

    @property
    def media_path(self) -> list[str]:
        return self._live_media_column("path")

    @property
    def media_root(self) -> np.ndarray:
        return self._live_media_column("root")

    @property
    def media_width(self) -> np.ndarray:
        return self._live_media_column("width")

    @property
    def media_height(self) -> np.ndarray:
        return self._live_media_column("height")

    @property
    def media_frame_index(self) -> np.ndarray:
        return self._live_media_column("frame_index")

    @property
    def media_timestamp_s(self) -> np.ndarray:
        return self._live_media_column("timestamp_s")

    @property
    def media_file_size(self) -> np.ndarray:
        return self._live_media_column("file_size")

    @property
    def media_file_mtime_ns(self) -> np.ndarray:
        return self._live_media_column("file_mtime_ns")

    # -- live objects
    @property
    def object_id(self) -> np.ndarray:
        return self._live_object_column("id")

    @property
    def object_media_id(self) -> np.ndarray:
        return self._live_object_column("media_id")

    @property
    def xyxy(self) -> np.ndarray:
        return self._live_object_column("xyxy")

    @property
    def confidence(self) -> np.ndarray:
        return self._live_object_column("confidence")

    @property
    def class_id(self) -> np.ndarray:
        return self._live_object_column("class_id")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
