"""The YOLO detector and per-object features from one detector pass.

This is the only module that imports ultralytics and makes torch models (torchvision is never imported: see
``objsearch.roi``). ``Detector`` runs an ultralytics ``DetectionModel`` once per image (or batch), keeps the head's
intermediate maps with forward hooks (``objsearch.runtimes`` hands them over as ``objsearch.pooling.FeatureMaps``, each
level with its stride), runs ultralytics' NMS with ``return_idxs=True`` to learn which anchor cell produced each kept
box, and pools a feature vector for each object from the maps the head already computed (``objsearch.pooling.pool``,
a pure function of the maps, boxes, anchors and recipe). No second network runs.

Feature blocks (each is L2-normalised on its own, multiplied by its weight and concatenated; the recipe, parsed and
defaulted in ``objsearch.pooling``, is stored in the index so queries use the same one):

``cls_cell``
    The class branch's penultimate activations (``Detect.cv3[level][-2]``, 80 channels in YOLOv8n/YOLO11n) at the
    anchor cell that produced the detection.
``cls_logits``
    The class logits (before the sigmoid) at that cell, one per class, minus their mean (they share a large negative
    offset that would otherwise dominate the direction).
``cls_roi``
    RoIAlign (``objsearch.roi.roi_align_1x1``: torchvision's ``roi_align`` without torchvision) of the box over the
    class branch's penultimate map of the detection's level, averaged to 1x1.
``box_cell``
    The box branch's penultimate activations (``Detect.cv2[level][-2]``) at the anchor cell.
``neck_roi``
    ``roi_align`` of the box over each of the maps that feed the Detect head (P3-P5), 1x1, each level L2-normalised
    on its own, then concatenated (so this block's norm is sqrt(3) times its weight).

Every call also makes one whole-image feature from the same pass (``Detections.image_feature``, (F,) float32; the
blocks of ``objsearch.pooling.image_blocks``, by default pooled P3-P5 plus the per-class sum of scores, ``DEFAULT_IMAGE_RECIPE``).
"""

from __future__ import annotations

import hashlib
import logging
import platform
import threading
import time
from pathlib import Path

import numpy as np

from objsearch.types import Detections, StageTimes
from objsearch.errors import DeviceError, WeightsNotFoundError
from objsearch.pooling import (
    DEFAULT_IMAGE_RECIPE,
    DEFAULT_RECIPE,
    IMAGE_RECIPE_VERSION,
    RECIPE_VERSION,
    FeatureMaps,
    image_feature,
    letterbox_window,
    mirror_anchors,
    parse_image_recipe,
    parse_recipe,
    pool,
)

LOGGER = logging.getLogger(__name__)

def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes.

    Raises
    ------
    OSError
        When the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def device_name(device) -> str:
    """The torch device name of ``device`` as ultralytics spells devices: a bare GPU index (``0``, ``"1"``) means
    ``cuda:N``; anything else is returned as a stripped string (``cpu``, ``cuda``, ``cuda:0``, ``mps``)."""
    name = str(device).strip().lower()
    return f"cuda:{int(name)}" if name.isdigit() else name


def torch_device(torch, device: str):
    """``torch.device(device)``, checked to exist on this machine (``device`` may be a bare GPU index, see
    ``device_name``)."""
    device = device_name(device)
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise DeviceError(f"unknown device {device!r}; expected cpu, N (a GPU index), cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} asked for, but torch sees no CUDA GPU on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"device {device!r} asked for, but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {device!r} asked for, but MPS is not available on this machine")
    return dev


class Detector:
    """A YOLO detector that returns ``Detections`` with a feature vector per object.

    Parameters
    ----------
    weights : str or Path
        An ultralytics detection checkpoint (``.pt``). A bare name such as ``yolov8n.pt`` is downloaded by
        ultralytics when a network is available.
    imgsz : int
        Inference size in pixels (longest side after letterboxing), as in ``YOLO.predict(imgsz=...)``.
    conf : float
        Default minimum confidence of a kept detection (each call may pass its own).
    iou : float
        NMS IoU threshold (ultralytics' default for ``predict`` is 0.7).
    max_det : int
        Most detections kept per image.
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:0"``, ``"mps"``...
    recipe : str or dict
        Feature blocks and weights, see the module docstring.
    runtime : str
        ``"torch"``, ``"onnx"`` (onnxruntime), ``"openvino"`` or ``"auto"`` (the measured fastest installed one):
        what runs the network (see ``objsearch.runtimes``); ``self.runtime`` says which one runs.
        onnx/openvino run a graph exported once from this checkpoint (cached beside it) and give the same boxes and
        features; NMS and pooling are the same code whatever the runtime. CPU only.
    threads : int or None
        Intra-op threads of an onnx/openvino runtime; None: torch's thread count when the detector is made.
    image_recipe : str or dict
        Whole-image feature blocks and weights (see ``objsearch.pooling.image_blocks``); every call also returns the image's feature
        as ``Detections.image_feature`` (``n_image_features``,) float32, from the same forward pass.

    Raises
    ------
    WeightsNotFoundError
        When the checkpoint cannot be found, downloaded or loaded, or is not a detection model.
    DeviceError
        When ``device`` is not a torch device name or is not available here (e.g. ``cuda`` without a GPU).
    ValueError
        For an invalid ``recipe`` (see ``parse_recipe``) or ``runtime``.
    RuntimeUnavailableError
        When the runtime's package is not installed or the export fails.

    Notes
    -----
    Re-entrant: confidence and stage times are per call, the head's intermediate maps are captured per thread, and
    the forward pass holds a lock (ultralytics' Detect head caches its anchors for the last input shape on the
    module, so two shapes at once would race). Two threads may search at once and get what they would get alone.
    """

    def __init__(
        self,
        weights: str | Path,
        *,
        imgsz: int = 640,
        conf: float = 0.25,
        iou: float = 0.7,
        max_det: int = 300,
        device: str = "cpu",
        recipe: str | dict[str, float] = DEFAULT_RECIPE,
        runtime: str = "torch",
        threads: int | None = None,
        image_recipe: str | dict[str, float] = DEFAULT_IMAGE_RECIPE,
    ) -> None:
        import torch
        from ultralytics import YOLO

        self.weights = str(weights)
        self.imgsz = int(imgsz)
        self.conf = float(conf)
        self.iou = float(iou)
        self.max_det = int(max_det)
        self.recipe = parse_recipe(recipe)
        self.image_recipe = parse_image_recipe(image_recipe)
        try:
            yolo = YOLO(self.weights, task="detect")
        except Exception as exc:  # ultralytics raises many kinds for a missing or broken file
            raise WeightsNotFoundError(f"could not load detector weights {self.weights!r}: {exc}") from exc
        model = yolo.model
        head = getattr(model, "model", [None])[-1]
        if not (hasattr(head, "cv2") and hasattr(head, "cv3") and hasattr(head, "nl")):
            raise WeightsNotFoundError(f"{self.weights!r} is not a YOLO detection model with a Detect head")
        if getattr(head, "end2end", False):
            raise WeightsNotFoundError(f"{self.weights!r} has an end-to-end (NMS-free) head, which is not supported")
        self.device = torch_device(torch, device)
        model = model.float()  # fuse in float32: fusing the fp16 checkpoint first makes CPU inference ~20% slower
        model = model.fuse(verbose=False) if hasattr(model, "fuse") else model
        self.model = model.to(self.device).eval()
        if self.device.type == "cuda" or (
            self.device.type == "cpu" and platform.machine() in {"AMD64", "x86_64"} and torch.backends.mkldnn.is_available()
        ):  # channels-last convolutions are ~20% faster there; ultralytics' AutoBackend does the same
            self.model.to(memory_format=torch.channels_last)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.head = self.model.model[-1]
        self.names: list[str] = [str(yolo.names[i]) for i in range(len(yolo.names))]
        self.stride = int(max(int(s) for s in self.head.stride))
        self.strides = [float(s) for s in self.head.stride]
        self.weights_path = getattr(yolo, "ckpt_path", None) or self.weights
        self.weights_sha256 = file_sha256(self.weights_path) if Path(self.weights_path).is_file() else ""
        self._local = threading.local()  # per-thread captures of the head's intermediate maps
        self._forward_lock = threading.Lock()
        self._warm_shapes: set[tuple[int, int, int]] = set()  # (height, width, batch) warmed by ``warmup``
        for level in range(self.head.nl):
            self.head.cv3[level][-2].register_forward_hook(self._hook("cls", level))
            self.head.cv2[level][-2].register_forward_hook(self._hook("box", level))
        self._torch = torch
        from objsearch.runtimes import make_backend

        self.backend = make_backend(self, runtime, threads)
        self.runtime = self.backend.name  # the one that runs (``auto`` resolved)
        self.runtime_requested = str(runtime).strip().lower()
        self._warmup()

    def _warmup(self) -> None:
        """One tiny forward pass, so the first real query does not pay for lazy initialisation."""
        torch = self._torch
        with torch.inference_mode():
            self.backend.forward(torch.zeros((1, 3, 64, 64), device=self.device))

    def warmup(self, image_shape: tuple[int, ...], passes: int = 2, batch: int = 1) -> float:
        """Run the whole detection path untimed at the network input shape an image of ``image_shape`` (H, W[, 3])
        gets, once per shape and batch size: ``passes`` forward passes of ``batch`` blank images, then NMS on the
        output and the pooling of two boxes (the object features and the whole-image feature), so that every kernel
        a real call runs has run once at this shape.

        Why: on a CPU the first passes at a new shape are 2-4x slower (oneDNN builds its kernels), and a one-off
        query would report that as detection time. On a GPU CUDA loads each kernel on its first use (convolutions,
        NMS, the gathers and interpolation of pooling) and cuDNN chooses its convolution algorithms per shape: the
        first query of a process took 173-207 ms against 22 ms warm on an H200 after a forward-only warm-up
        (``../shared/notes/measured-facts.md``). cuDNN's benchmark mode stays off (torch's default): with it, every
        new letterbox shape would pay an autotuning run. Returns the milliseconds spent (0 when this shape and batch
        size were warm already).

        Raises
        ------
        ValueError
            For ``passes`` or ``batch`` < 1.
        """
        if int(passes) < 1 or int(batch) < 1:
            raise ValueError(f"passes and batch must be >= 1, got {passes} and {batch}")
        shape = self.letterbox_shape(image_shape)
        key = (*shape, int(batch))
        if key in self._warm_shapes:
            return 0.0
        from ultralytics.utils.nms import non_max_suppression

        torch = self._torch
        t0 = time.perf_counter()
        x = torch.zeros((int(batch), 3, *shape), device=self.device)
        with torch.inference_mode():
            with self._forward_lock:
                for _ in range(int(passes)):
                    y, maps = self.backend.forward(x)
            non_max_suppression(y, self.conf, self.iou, max_det=self.max_det, nc=len(self.names), return_idxs=True)
            h, w = shape
            boxes = torch.tensor([[0.0, 0.0, w / 2, h / 2], [w / 4, h / 4, float(w), float(h)]], device=y.device)
            anchors = torch.tensor([0, maps.anchor_offsets[-1] - 1], device=y.device)  # first and last level
            pool(maps, 0, boxes, anchors, self.recipe)
            self._image_feature(maps, 0, letterbox_window(shape, (h, w)))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._warm_shapes.add(key)
        return (time.perf_counter() - t0) * 1e3

    def _hook(self, kind: str, level: int):
        def hook(module, inputs, output):
            captured = getattr(self._local, "captured", None)
            if captured is not None:
                captured[kind][level] = output

        return hook

    def block_sizes(self) -> dict[str, int]:
        """Columns of each block of this recipe, in the order the blocks are concatenated."""
        nc = len(self.names)
        cls_ch = self.head.cv3[0][-1].in_channels
        box_ch = self.head.cv2[0][-1].in_channels
        neck = sum(int(self.head.cv2[i][0].conv.in_channels) for i in range(self.head.nl))
        sizes = {"cls_cell": cls_ch, "cls_logits": nc, "cls_roi": cls_ch, "box_cell": box_ch, "neck_roi": neck}
        return {name: int(sizes[name]) for name in self.recipe}

    @property
    def n_features(self) -> int:
        """Length D of the feature vectors this recipe produces."""
        return sum(self.block_sizes().values())

    @property
    def n_image_features(self) -> int:
        """Length F of the whole-image feature this detector's image recipe produces."""
        nc = len(self.names)
        cls_ch = self.head.cv3[0][-1].in_channels * self.head.nl
        neck = sum(int(self.head.cv2[i][0].conv.in_channels) for i in range(self.head.nl))
        sizes = {"neck_gap": neck, "neck_gmp": neck, "cls_gap": cls_ch, "cls_max": nc, "cls_sum": nc}
        return sum(sizes[name] for name in self.image_recipe)

    def image_feature_recipe(self) -> dict:
        """What is stored in the index to describe how whole-image features were made."""
        return {"blocks": self.image_recipe, "n_features": self.n_image_features, "imgsz": self.imgsz,
                "version": IMAGE_RECIPE_VERSION}

    def _image_feature(self, maps: FeatureMaps, b: int, window) -> np.ndarray:
        """The whole-image feature (F,) float32 of batch item ``b`` (``pooling.image_feature``), the runtime named
        when it did not compute a block's maps."""
        try:
            return image_feature(maps, b, window, self.image_recipe)
        except ValueError as exc:
            raise ValueError(f"runtime {self.runtime}: {exc}") from None

    def feature_recipe(self) -> dict:
        """What is stored in the index to describe how features were made."""
        return {"blocks": self.recipe, "n_features": self.n_features, "imgsz": self.imgsz,
                "version": RECIPE_VERSION}

    def _letterbox(self, image: np.ndarray, auto: bool):
        from ultralytics.data.augment import LetterBox

        return LetterBox(new_shape=(self.imgsz, self.imgsz), auto=auto, stride=self.stride)(image=image)

    def letterbox_shape(self, image_shape: tuple[int, ...]) -> tuple[int, int]:
        """(height, width) in pixels of the network input made from an image of ``image_shape`` (H, W[, 3]) with
        minimal (``auto``) letterbox padding, as ``__call__`` makes it. Images with equal letterbox shapes can share
        one ``detect_batch(..., auto=True)`` and get the features they would get alone."""
        from ultralytics.data.augment import LetterBox

        dummy = np.broadcast_to(np.uint8(0), (int(image_shape[0]), int(image_shape[1]), 3))  # only its shape is read
        params = LetterBox(new_shape=(self.imgsz, self.imgsz), auto=True, stride=self.stride).get_params({"img": dummy})
        return (params["new_unpad"][1] + params["top"] + params["bottom"],
                params["new_unpad"][0] + params["left"] + params["right"])

    def __call__(self, image: np.ndarray, *, conf: float | None = None, timings: StageTimes | None = None) -> Detections:
        """Detect the objects of one image and compute their features.

        Parameters
        ----------
        image : ndarray of shape (H, W, 3), uint8, BGR (as ``cv2.imread`` returns)
        conf : minimum confidence for this call; None: the detector's ``conf``.
        timings : when given, filled with this call's milliseconds per stage (``StageTimes``: ``preprocess``,
            ``inference``, ``nms``, ``features`` (per object), ``image_feature`` (the whole-image vector)).

        Returns
        -------
        Detections
            Boxes in pixels of ``image``, with ``features`` of shape (N, ``n_features``) float32 and
            ``image_feature`` of shape (``n_image_features``,) float32 (the whole image, same pass).

        Raises
        ------
        ValueError
            When ``image`` is not an (H, W, 3) uint8 array.
        """
        return self.detect_batch([image], auto=True, conf=conf, timings=timings)[0]

    def detect_batch(self, images: list[np.ndarray], auto: bool | None = None, *, conf: float | None = None,
                     timings: StageTimes | None = None, mirror: bool = False) -> list[Detections]:
        """Detect the objects of several images in one forward pass.

        Parameters
        ----------
        images : list of ndarray of shape (H_i, W_i, 3), uint8, BGR
        auto : bool or None
            Minimal (stride-multiple) letterbox padding, as ``YOLO.predict`` does for one image. Images of different
            shapes are padded to a square ``imgsz`` when False; None picks True when all shapes are equal.
        conf : minimum confidence for this call, in [0, 1]; None: the detector's ``conf``.
        timings : when given, filled with this call's milliseconds per stage (``StageTimes``).
        mirror : also pool each object's features from a second forward pass on the horizontally flipped input, at
            the mirrored box and anchor cell (``mirror_features``), into ``data["mirror_features"]`` (N, D) float32:
            the features the same object would get in a mirrored image (one more network pass; no second NMS).

        Returns
        -------
        list of Detections, one per image, boxes in that image's pixels, with ``data["class_scores"]`` (N, nc)
        float32: every class's score (sigmoid of its logit, in [0, 1]) at the anchor cell that made the detection
        (``confidence`` is the largest of them).
        """
        torch = self._torch
        from ultralytics.utils.nms import non_max_suppression
        from ultralytics.utils.ops import scale_boxes

        for image in images:
            if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
                shape = getattr(image, "shape", None)
                raise ValueError(f"images must be (H, W, 3) uint8 BGR arrays, got {type(image).__name__} {shape}")
        conf = self.conf if conf is None else float(conf)
        if not 0.0 <= conf <= 1.0:
            raise ValueError(f"conf must be in [0, 1], got {conf}")
        if auto is None:
            auto = len({im.shape for im in images}) == 1
        t0 = time.perf_counter()
        boxed = [self._letterbox(im, auto) for im in images]
        batch = np.ascontiguousarray(np.stack(boxed)[..., ::-1].transpose(0, 3, 1, 2))
        x = torch.from_numpy(batch).to(self.device).float().div_(255.0)
        t1 = time.perf_counter()
        with torch.inference_mode():
            with self._forward_lock:
                y, maps = self.backend.forward(x)
            t2 = time.perf_counter()
            kept, kept_idx = non_max_suppression(
                y, conf, self.iou, max_det=self.max_det, nc=len(self.names), return_idxs=True
            )
            t3 = time.perf_counter()
            mirrored = self._mirror_pass(x, maps, kept, kept_idx) if mirror else None
            out = []
            image_s = 0.0
            for b, (det, idx) in enumerate(zip(kept, kept_idx)):
                feats = pool(maps, b, det[:, :4], idx.long(), self.recipe)
                class_scores = maps.scores[b][:, idx.long().reshape(-1)].T.float().sigmoid().cpu().numpy()
                boxes = scale_boxes(x.shape[2:], det[:, :4].clone(), images[b].shape[:2])
                ti = time.perf_counter()
                whole = self._image_feature(maps, b, letterbox_window(tuple(x.shape[2:]), images[b].shape))
                image_s += time.perf_counter() - ti
                out.append(
                    Detections(
                        xyxy=boxes.cpu().numpy(),
                        confidence=det[:, 4].cpu().numpy(),
                        class_id=det[:, 5].cpu().numpy().astype(np.int64),
                        features=feats,
                        data={"class_scores": class_scores,
                              **({} if mirrored is None else {"mirror_features": mirrored[b]})},
                        image_feature=whole,
                    )
                )
        t4 = time.perf_counter()
        if timings is not None:
            timings.preprocess, timings.inference, timings.nms = (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3
            timings.features, timings.image_feature = (t4 - t3 - image_s) * 1e3, image_s * 1e3
        return out

    def _mirror_pass(self, x, maps: FeatureMaps, kept: list, kept_idx: list) -> list[np.ndarray]:
        """Features of the kept objects pooled from the maps of the horizontally flipped input ``x`` (B, 3, H, W):
        each box mirrored (x1, x2 -> W - x2, W - x1) and each anchor cell mirrored within its level's row
        (``pooling.mirror_anchors``). The input width is a multiple of every stride, so the mirrored cells are exactly
        the grid's mirror image."""
        torch = self._torch
        width = float(x.shape[3])
        with self._forward_lock:
            _, flipped = self.backend.forward(torch.flip(x, dims=[3]))
        out = []
        for b, (det, idx) in enumerate(zip(kept, kept_idx)):
            boxes = det[:, :4].clone()
            boxes[:, 0], boxes[:, 2] = width - det[:, 2], width - det[:, 0]
            out.append(pool(flipped, b, boxes, mirror_anchors(maps, idx.long()), self.recipe))
        return out


def yolo_embedder(weights: str | Path, *, imgsz: int = 640, device: str = "cpu"):
    """ultralytics' own whole-image embedding as a function ``image (H, W, 3) uint8 BGR -> (E,) float32``:
    ``YOLO(weights).embed(image)`` with its default layer (a second network pass, for comparison only).

    Raises
    ------
    WeightsNotFoundError
        When the checkpoint cannot be loaded.
    """
    from ultralytics import YOLO

    try:
        yolo = YOLO(str(weights), task="detect")
    except Exception as exc:  # ultralytics raises many kinds for a missing or broken file
        raise WeightsNotFoundError(f"could not load detector weights {str(weights)!r}: {exc}") from exc

    def embed(image: np.ndarray) -> np.ndarray:
        out = yolo.embed(image, imgsz=imgsz, device=device_name(device), verbose=False)
        return out[0].detach().float().cpu().numpy().reshape(-1)

    return embed
