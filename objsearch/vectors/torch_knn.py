"""Exact k-NN with torch on a device (``--backend torch``): the vectors stay in device memory (a GPU's, with
``--device 0``), searched by brute force.

Distances are ``||x||^2 - 2 q.x`` (``||q||^2`` does not change the order) from one matrix product per chunk of rows,
with the class restriction and the image exclusion applied as masks (``inf``) inside the same pass, so a filter never
needs over-fetching: every query gets its k nearest qualifying objects in one scan. Each chunk keeps its k smallest
(``torch.topk``) and the running best k are merged chunk by chunk, so the (Q, N) distance matrix never exists whole:
a chunk holds at most ``chunk_elements`` distances (2^26 by default, 256 MB of float32), which keeps 10,000,000 x 32
vectors (1.3 GB on the device) searchable with any number of queries. The k found are ranked again by their exact
distances ``||x - q||`` (the expanded form loses digits when ``||x||`` is large), and only those k cross to the host.

Measured on an NVIDIA H200 (``../shared/notes/measured-facts.md``): 16 queries, top-64, 376,459 x 32 in 0.26 ms and
10,000,000 x 32 in 3.6 ms, against 5.4 ms for faiss ``IndexFlatL2`` on the 16 CPU cores at 376,459.
``tools/bench_device.py`` measures this store against faiss at 376k and 10M.

Objects are added and removed while the store lives, as in the in-memory store: ``add`` appends rows on the device,
``remove`` drops them (the arrays stay compact; removed objects are never returned). Ids are the given int64 ids,
never rows. On the CPU (the tests run it there) it is correct but no faster than the in-memory methods.

``auto`` picks this store on a CUDA device for an index of at least ``AUTO_MIN_VECTORS`` objects
(``objsearch.vectors.resolve_backend``); on the CPU ``auto`` keeps the in-memory store's calibrated choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from objsearch.types import Hits
from objsearch.vectors.checks import check_new, check_query, int_array, some_values

CHUNK_ELEMENTS = 1 << 26  # distances held at once: (queries x rows of one chunk), 256 MB of float32
# ``auto`` on a CUDA device: this store from this many vectors on. On an H200 it answered 16 queries over 376,459 x 32
# in 0.26 ms against 5.4 ms for faiss on 16 CPU cores; below ~50k objects every exact CPU method answers well under
# a millisecond, where a GPU's launch and copy costs (tens of microseconds each) would be most of the time.
# Re-measure with tools/bench_device.py (its search rows) before moving it.
AUTO_MIN_VECTORS = 50_000



@dataclass(frozen=True)
class TorchOptions:
    """Options of the ``torch`` backend (``objsearch.vectors.registry``); the device is the engine's, not an option.

    Attributes
    ----------
    chunk_elements : int
        Distances held at once (queries x rows of one chunk); see ``CHUNK_ELEMENTS``.
    """

    chunk_elements: int = CHUNK_ELEMENTS

class TorchVectorStore:
    """Exact k-NN over stable ids in torch tensors on ``device``, with class restriction and per-query image exclusion.

    Parameters
    ----------
    ids : ndarray of shape (n,), int64
        Stable object ids, distinct and >= 0 (-1 pads ``Hits``).
    vectors : ndarray of shape (n, dims), float32, finite; shape (0, dims) for an empty store.
    class_id : ndarray of shape (n,), int
    image_id : ndarray of shape (n,), int
    device : str
        A torch device: ``cpu``, ``cuda``, ``cuda:N`` or a bare GPU index (``0``), as ``--device`` takes it.
    chunk_elements : int
        Most distances computed at once (queries x rows of a chunk), >= 1.

    Attributes
    ----------
    backend : str
        ``torch``.
    dims : int
    exact : bool
        True.
    device : torch.device

    Raises
    ------
    ValueError
        For the input ``add`` refuses, or ``chunk_elements`` < 1.
    objsearch.errors.DeviceError
        When ``device`` is not a torch device or not available here.
    """

    backend = "torch"
    exact = True

    def __init__(self, ids, vectors, class_id, image_id, *, device: str = "cpu",
                 chunk_elements: int = CHUNK_ELEMENTS) -> None:
        import torch

        from objsearch.detector import torch_device

        self._torch = torch
        self.device = torch_device(torch, device)
        if int(chunk_elements) < 1:
            raise ValueError(f"chunk_elements must be >= 1, got {chunk_elements}")
        self.chunk_elements = int(chunk_elements)
        vectors = np.asarray(vectors)
        if vectors.ndim != 2:
            raise ValueError(f"vectors must have shape (n, dims), got {vectors.shape}")
        self.dims = int(vectors.shape[1])
        self._closed = False
        ids, vectors, class_id, image_id = check_new(ids, vectors, class_id, image_id, self.dims)
        self._ids = ids
        self._vectors = torch.from_numpy(vectors).to(self.device)
        self._norms = (self._vectors * self._vectors).sum(1)
        self._class_id = torch.from_numpy(class_id).to(self.device)
        self._image_id = torch.from_numpy(image_id).to(self.device)

    # --------------------------------------------------------------------------------------------- protocol
    def __len__(self) -> int:
        return len(self._ids)

    def add(self, ids, vectors, class_id, image_id) -> None:
        """Add objects (appended on the device).

        Parameters
        ----------
        ids : ndarray of shape (n,), int64
            New stable ids: >= 0, not in the store, distinct.
        vectors : ndarray of shape (n, dims), float32, finite
        class_id : ndarray of shape (n,), int
        image_id : ndarray of shape (n,), int

        Raises
        ------
        ValueError
            For a wrong shape or dtype, a non-finite vector, a negative id, or ids already in the store or repeated
            (the message names them).
        """
        self._check_open()
        ids, vectors, class_id, image_id = check_new(ids, vectors, class_id, image_id, self.dims)
        present = ids[np.isin(ids, self._ids)]
        if len(present):
            raise ValueError(f"ids must not be in the store already, got {len(present)} present: "
                             f"{some_values(present)}")
        if not len(ids):
            return
        torch = self._torch
        new = torch.from_numpy(vectors).to(self.device)
        self._vectors = torch.cat([self._vectors, new])
        self._norms = torch.cat([self._norms, (new * new).sum(1)])
        self._class_id = torch.cat([self._class_id, torch.from_numpy(class_id).to(self.device)])
        self._image_id = torch.cat([self._image_id, torch.from_numpy(image_id).to(self.device)])
        self._ids = np.concatenate([self._ids, ids])

    def remove(self, ids) -> int:
        """Remove objects by id; ids not in the store are ignored. Returns how many were removed.

        Parameters
        ----------
        ids : ndarray of shape (m,), int
        """
        self._check_open()
        ids = int_array("ids", ids)
        gone = np.isin(self._ids, ids)
        count = int(gone.sum())
        if not count:
            return 0
        keep = np.flatnonzero(~gone)
        rows = self._torch.from_numpy(keep).to(self.device)
        self._vectors, self._norms = self._vectors[rows], self._norms[rows]
        self._class_id, self._image_id = self._class_id[rows], self._image_id[rows]
        self._ids = self._ids[keep]
        return count

    def search(self, vectors, k: int, *, class_id=None, exclude_image_id=None) -> Hits:
        """The k nearest objects of each query.

        Parameters
        ----------
        vectors : ndarray of shape (Q, dims), float32, finite
        k : int, >= 1
        class_id : None, int or ndarray of shape (Q,), int
            Only neighbours of this class (per query).
        exclude_image_id : None, int or ndarray of shape (Q,), int
            Leave out objects of this image (per query); -1 excludes nothing.

        Returns
        -------
        Hits
            ``distances`` (Q, k) float32 ascending Euclidean, ``inf`` where padded; ``ids`` (Q, k) int64 object ids,
            ``-1`` where padded.

        Raises
        ------
        ValueError
            For a bad ``k``, a query that is not (Q, dims) or not finite, or a filter of the wrong shape.
        """
        self._check_open()
        queries, k, class_id, exclude_image_id = check_query(vectors, k, class_id, exclude_image_id, self.dims)
        q, n = len(queries), len(self)
        hits = Hits.empty(q, k)
        if q == 0 or n == 0:
            return hits
        torch = self._torch
        with torch.inference_mode():
            distances, rows = self._knn(queries, min(k, n), class_id, exclude_image_id)
            distances, rows = distances.cpu().numpy(), rows.cpu().numpy()
        found = np.isfinite(distances)
        width = distances.shape[1]
        hits.distances[:, :width] = np.where(found, distances, np.inf)
        hits.ids[:, :width] = np.where(found, self._ids[np.where(found, rows, 0)], -1)
        return hits

    def close(self) -> None:
        """Free the device memory. Calling it again does nothing; any other call afterwards raises RuntimeError."""
        if self._closed:
            return
        self._closed = True
        self._vectors = self._norms = self._class_id = self._image_id = None

    def __enter__(self) -> TorchVectorStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TorchVectorStore(device={str(self.device)!r}, dims={self.dims}, n={len(self)})"

    # ---------------------------------------------------------------------------------------------- helpers
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this vector store is closed")

    def _knn(self, queries: np.ndarray, k: int, class_id, exclude_image_id):
        """(distances (Q, k) float32 ascending, ``inf`` where fewer than k qualify; rows (Q, k) int64), on the
        device. ``k`` <= the number of rows."""
        torch = self._torch
        n = len(self)
        query = torch.from_numpy(queries).to(self.device)
        wanted = None if class_id is None else torch.from_numpy(class_id).to(self.device)[:, None]
        excluded = None
        if exclude_image_id is not None and (exclude_image_id >= 0).any():
            excluded = torch.from_numpy(exclude_image_id).to(self.device)[:, None]
        step = max(1, self.chunk_elements // len(queries))
        best_d = best_i = None
        for start in range(0, n, step):
            stop = min(n, start + step)
            # ||x||^2 - 2 q.x for this chunk: (Q, rows)
            partial = torch.addmm(self._norms[None, start:stop], query, self._vectors[start:stop].T, alpha=-2.0)
            if wanted is not None:
                partial.masked_fill_(self._class_id[None, start:stop] != wanted, float("inf"))
            if excluded is not None:
                partial.masked_fill_((self._image_id[None, start:stop] == excluded) & (excluded >= 0), float("inf"))
            d, i = torch.topk(partial, min(k, stop - start), dim=1, largest=False, sorted=False)
            i = i + start
            if best_d is not None:
                d, i = torch.cat([best_d, d], 1), torch.cat([best_i, i], 1)
                if d.shape[1] > k:
                    d, pick = torch.topk(d, k, dim=1, largest=False, sorted=False)
                    i = torch.gather(i, 1, pick)
            best_d, best_i = d, i
        # the exact distances of the k found, ranked again (stable: equal distances keep the order of the rows)
        exact = (self._vectors[best_i] - query[:, None, :]).square().sum(2).sqrt()
        exact = torch.where(torch.isinf(best_d), torch.full_like(exact, float("inf")), exact)
        order = torch.argsort(best_i, dim=1, stable=True)  # rows ascending first, so ties break by row as the oracle
        exact, best_i = torch.gather(exact, 1, order), torch.gather(best_i, 1, order)
        exact, order = torch.sort(exact, dim=1, stable=True)
        return exact, torch.gather(best_i, 1, order)
