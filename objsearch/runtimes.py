"""Detector runtimes: the same ``DetectionModel`` graph run by torch, onnxruntime or OpenVINO.

A backend has one method, ``forward(x) -> (y, maps)``, with ``x`` the letterboxed (B, 3, H, W) float32 torch tensor,
``y`` the Detect head's decoded output (B, 4 + nc, A) and ``maps`` an ``objsearch.pooling.FeatureMaps``: the P3-P5 maps
that feed the head, the class logits (B, nc, A), and the class/box branches' penultimate maps per level (None when
the exported graph leaves them out: only when the feature recipe needs none of them), each level with its stride. The
detector runs NMS and pools features on these tensors the same way whatever the runtime.

The onnx and openvino backends run a graph exported once from the torch model with these extra outputs, with dynamic
height and width so rectangular letterboxes work (the anchors are computed in the graph). The export is cached
(``<weights>.objsearch-<sha12>-<key>.onnx`` and ``.xml``/``.bin``) in ``$OBJSEARCH_CACHE_DIR`` when that is set, else
beside the weights when that folder is writable, else under ``$XDG_CACHE_HOME/objsearch`` (``~/.cache/objsearch``),
keyed by the weights' sha256 and the export recipe (torch's version included). Every file is written to a temporary
name in the same folder and renamed, so a crash never leaves a half-written model behind and processes that export
at once each rename a whole file over the same name. Nothing is downloaded.

The default runtime is ``auto``: onnxruntime on the CPU (a base dependency), once its exported graph matched torch on
a check image (``verified_difference``), else torch. The export takes a few seconds, once per checkpoint; it is logged
on the ``objsearch.runtimes.export`` logger, which the command line shows (``exporting ... once``).

onnxruntime and openvino are imported here only, and only when chosen (openvino: ``pip install objsearch[fast]``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

from objsearch.errors import ExitCode, ObjsearchError
from objsearch.pooling import FeatureMaps

LOGGER = logging.getLogger(__name__)
EXPORT_LOGGER = logging.getLogger(__name__ + ".export")  # what a user waits for once: the shells show it
CACHE_ENV = "OBJSEARCH_CACHE_DIR"

RUNTIMES = ("torch", "onnx", "openvino")
CHOICES = (*RUNTIMES, "auto")
# ``auto`` (the default): the fastest runtime measured for a whole query on a 2-core x86 CPU (tools/bench_query.py,
# bus.jpg, ratio to a bare YOLO.predict, busy machine): onnx 0.69-0.70x, openvino 0.75-0.79x, torch 0.97-1.03x. Every
# runtime gives the same features, so the choice only changes speed. On a GPU it is torch.
AUTO_ORDER = ("onnx", "openvino")
EXPORT_VERSION = 1  # bump when the exported graph changes: the cache key changes with it
OPSET = 17


class RuntimeUnavailableError(ObjsearchError):
    """The chosen runtime's package is not installed, or its export failed (a usage error: ``--runtime`` asks for
    what this machine cannot do)."""

    exit_code = ExitCode.USAGE


def check_runtime(name: str) -> str:
    """``name`` lower-cased, checked to be one of ``CHOICES`` (the runtimes and ``auto``).

    Raises
    ------
    ValueError
        For another name.
    """
    name = str(name).strip().lower()
    if name not in CHOICES:
        raise ValueError(f"unknown runtime {name!r}; expected one of {', '.join(CHOICES)}")
    return name


def auto_runtime(device_type: str) -> str:
    """What ``auto`` picks: on the CPU the first of ``AUTO_ORDER`` whose packages are installed (the measured
    fastest), else torch."""
    import importlib.util

    if device_type != "cpu":
        return "torch"
    needs = {"onnx": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino")}
    for name in AUTO_ORDER:
        if all(importlib.util.find_spec(mod) is not None for mod in needs[name]):
            return name
    return "torch"


class TorchBackend:
    """The torch model as it is; the detector's forward hooks capture the heads' penultimate maps."""

    name = "torch"

    def __init__(self, detector) -> None:
        self.detector = detector

    def forward(self, x):
        det = self.detector
        captured = {"cls": [None] * det.head.nl, "box": [None] * det.head.nl}
        det._local.captured = captured
        try:
            y, preds = det.model(x)
        finally:
            det._local.captured = None
        return y, FeatureMaps(preds["feats"], preds["scores"], det.strides, captured["cls"], captured["box"])


def _output_names(nl: int, maps: bool) -> list[str]:
    names = ["y"] + [f"feat{i}" for i in range(nl)] + ["scores"]
    if maps:
        names += [f"cls{i}" for i in range(nl)] + [f"box{i}" for i in range(nl)]
    return names


def _export_key(detector, maps: bool) -> str:
    import torch

    recipe = {"version": EXPORT_VERSION, "opset": OPSET, "maps": maps, "torch": torch.__version__.split("+")[0]}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]


def _writable(folder: Path) -> bool:
    """Whether ``folder`` is meant to be written: ``os.access`` says yes, and its permission bits allow someone to
    write (root passes ``os.access`` on a read-only folder; a folder marked read-only, like a shared data set, is
    left alone)."""
    try:
        return folder.is_dir() and os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)
    except OSError:
        return False


def cache_path(detector, maps: bool, suffix: str) -> Path:
    """Where the exported graph of ``detector`` goes: ``$OBJSEARCH_CACHE_DIR`` when set (the tests set it to a
    temporary folder), else beside the weights when that folder is writable (``_writable``), else under
    ``$XDG_CACHE_HOME/objsearch`` (``~/.cache/objsearch``)."""
    weights = Path(detector.weights_path)
    sha = detector.weights_sha256 or hashlib.sha256(str(weights.resolve()).encode()).hexdigest()
    name = f"{weights.name}.objsearch-{sha[:12]}-{_export_key(detector, maps)}{suffix}"
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / name
    folder = weights.resolve().parent
    if not _writable(folder):
        folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "objsearch"
    return folder / name


def _temporary(path: Path) -> str:
    """A new empty file beside ``path`` (same folder, so ``os.replace`` onto ``path`` is atomic), readable as the
    umask allows (``mkstemp`` makes it private; a cache shared by several users must be readable by them)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return tmp


def _write_atomically(path: Path, text: str) -> None:
    """``path.write_text(text)`` through a temporary file and ``os.replace``: a reader never sees half of it."""
    tmp = _temporary(path)
    try:
        Path(tmp).write_text(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class _ExportWrapper:
    """Builds a ``torch.nn.Module`` returning the tuple of ``_output_names`` (made lazily: torch is imported here
    only when exporting)."""

    @staticmethod
    def build(detector, maps: bool):
        import torch

        model = copy.deepcopy(detector.model).float().to("cpu").to(memory_format=torch.contiguous_format)
        head = model.model[-1]
        head.dynamic = True  # anchors computed in the graph, for any letterbox shape
        head.shape = None
        head.export = False  # keep (y, preds) so P3-P5 and the logits come out too
        nl = head.nl
        captured: dict = {}
        if maps:
            for module in model.modules():
                module._forward_hooks.clear()  # the copied detector hooks write to the detector's thread-local
            for level in range(nl):
                head.cv3[level][-2].register_forward_hook(lambda m, i, o, lv=level: captured.__setitem__(f"cls{lv}", o))
                head.cv2[level][-2].register_forward_hook(lambda m, i, o, lv=level: captured.__setitem__(f"box{lv}", o))

        class Wrapper(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, x):
                captured.clear()
                y, preds = self.model(x)
                out = [y, *preds["feats"], preds["scores"]]
                if maps:
                    out += [captured[f"cls{i}"] for i in range(nl)] + [captured[f"box{i}"] for i in range(nl)]
                return tuple(out)

        return Wrapper().eval(), nl


def export_onnx(detector, maps: bool) -> Path:
    """The cached ONNX graph of ``detector`` (exported now when missing).

    Raises
    ------
    RuntimeUnavailableError
        When the ``onnx`` package is missing or the export fails.
    """
    path = cache_path(detector, maps, ".onnx")
    if path.is_file():
        return path
    try:
        import onnx  # noqa: F401  torch's exporter needs it
    except ImportError:
        raise RuntimeUnavailableError(
            "exporting the detector needs the onnx package (a dependency of objsearch): pip install onnx") from None
    import torch

    wrapper, nl = _ExportWrapper.build(detector, maps)
    names = _output_names(nl, maps)
    dynamic = {"images": {0: "batch", 2: "height", 3: "width"}}
    dynamic.update({n: {0: "batch"} for n in names})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temporary(path)
    except OSError as exc:
        raise RuntimeUnavailableError(f"cannot write the exported detector to {path.parent}: "
                                      f"{exc.strerror or exc}") from None
    EXPORT_LOGGER.info("exporting %s to ONNX, once (a few seconds; kept in %s)", Path(detector.weights_path).name,
                       path.parent)
    t0 = time.perf_counter()
    try:
        # the TorchScript exporter (dynamo=False) is deprecated since torch 2.9, and its DeprecationWarnings are
        # expected here; the dynamo exporter needs onnxscript, which objsearch does not install
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            torch.onnx.export(wrapper, (torch.zeros((1, 3, 640, 480)),), tmp, input_names=["images"],
                              output_names=names, dynamic_axes=dynamic, opset_version=OPSET, dynamo=False,
                              do_constant_folding=True)
        os.replace(tmp, path)  # whole or not at all; another process exporting at once renames its own whole file
    except Exception as exc:
        raise RuntimeUnavailableError(f"could not export the detector to ONNX: {exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    EXPORT_LOGGER.info("exported in %.1f s", time.perf_counter() - t0)
    return path


def _wrap_outputs(torch, arrays: list, strides: tuple[float, ...], maps: bool):
    """``(y, FeatureMaps)`` of an exported graph's outputs (see ``_ExportWrapper``)."""
    nl = len(strides)
    t = [torch.from_numpy(a) for a in arrays]
    y, feats, scores = t[0], t[1 : 1 + nl], t[1 + nl]
    if not maps:
        return y, FeatureMaps(feats, scores, strides)
    return y, FeatureMaps(feats, scores, strides, t[2 + nl : 2 + 2 * nl], t[2 + 2 * nl : 2 + 3 * nl])


class OnnxBackend:
    """The exported graph in onnxruntime (CPU), intra-op spinning off (with spinning, 2 threads on a busy 2-core
    machine ran slower than 1)."""

    name = "onnx"

    def __init__(self, detector, maps: bool, threads: int) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeUnavailableError("runtime 'onnx' needs onnxruntime (a dependency of objsearch): "
                                          "pip install onnxruntime") from None
        import torch

        self._torch = torch
        self.path = export_onnx(detector, maps)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        self.strides = tuple(detector.strides)
        self.maps = maps
        self.threads = int(threads)

    def forward(self, x):
        arrays = self.session.run(None, {"images": x.detach().cpu().contiguous().numpy()})
        return _wrap_outputs(self._torch, arrays, self.strides, self.maps)


class OpenVinoBackend:
    """The exported graph converted to OpenVINO IR (FP32 weights kept), on its CPU plugin with a latency hint."""

    name = "openvino"

    def __init__(self, detector, maps: bool, threads: int) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise RuntimeUnavailableError("runtime 'openvino' needs openvino: pip install 'objsearch[fast]'") from None
        import torch

        self._torch = torch
        xml = cache_path(detector, maps, ".xml")
        if not xml.is_file():
            onnx_path = export_onnx(detector, maps)
            EXPORT_LOGGER.info("converting %s to OpenVINO, once", onnx_path.name)
            try:
                model = ov.convert_model(str(onnx_path))
                stem = tempfile.mktemp(prefix=f".{xml.stem}.", dir=xml.parent)
                ov.save_model(model, stem + ".xml", compress_to_fp16=False)  # FP16 weights would change the features
                os.replace(stem + ".bin", xml.with_suffix(".bin"))
                os.replace(stem + ".xml", xml)  # last: an .xml on disk always has its .bin
            except Exception as exc:
                raise RuntimeUnavailableError(f"could not convert the detector to OpenVINO: {exc}") from exc
        self.path = xml
        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "f32"}
        self.compiled = core.compile_model(core.read_model(str(xml)), "CPU", config)
        self.strides = tuple(detector.strides)
        self.maps = maps
        self.threads = int(threads)
        self.n_out = len(self.compiled.outputs)

    def forward(self, x):
        request = self.compiled.create_infer_request()
        result = request.infer({0: x.detach().cpu().contiguous().numpy()})
        arrays = [result[self.compiled.output(i)] for i in range(self.n_out)]
        return _wrap_outputs(self._torch, arrays, self.strides, self.maps)


VERIFY_TOL = 1e-4  # measured: the exports differ from torch by ~1e-6 of each output's range (max 2.3e-5 features)


def verified_difference(detector, backend) -> float:
    """The largest difference between ``backend``'s outputs and torch's on a fixed check image (seeded uniform noise,
    480 x 640), each output's difference relative to its largest torch value; what ``auto`` requires to be at most
    ``VERIFY_TOL`` before it uses an exported graph ("the same features, only faster"). Computed once per exported
    graph and kept beside it (``<graph>.verified.json``)."""
    import torch

    record = Path(str(backend.path) + ".verified.json")
    try:
        return float(json.loads(record.read_text())["max_relative_difference"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    EXPORT_LOGGER.info("checking the %s graph against torch, once", backend.name)
    x = torch.rand((1, 3, 480, 640), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref_y, ref_maps = TorchBackend(detector).forward(x.to(detector.device))
        y, maps = backend.forward(x)
    pairs = [(ref_y, y), *zip(ref_maps.neck, maps.neck), (ref_maps.scores, maps.scores)]
    for kind in ("cls", "box"):
        if getattr(ref_maps, kind) is not None and getattr(maps, kind) is not None:
            pairs += list(zip(getattr(ref_maps, kind), getattr(maps, kind)))
    diff = 0.0
    for a, b in pairs:
        a, b = a.detach().float().cpu(), b.detach().float().cpu()
        if a.shape != b.shape:
            return float("inf")
        diff = max(diff, float((a - b).abs().max() / a.abs().max().clamp_min(1e-6)))
    try:
        _write_atomically(record, json.dumps({"max_relative_difference": diff, "tolerance": VERIFY_TOL}))
    except OSError as exc:
        LOGGER.info("could not keep the check of %s (%s): it runs again next time", backend.path, exc)
    return diff


def make_backend(detector, runtime: str, threads: int | None = None):
    """The backend ``runtime`` for ``detector``; ``threads`` None: torch's current intra-op thread count (what the
    CLI's ``--threads`` set), so every runtime follows the same thread setting. ``auto``: see ``auto_runtime``; it
    falls back to torch when the export fails or its outputs differ from torch's (``verified_difference``).

    Raises
    ------
    ValueError
        For an unknown runtime name.
    RuntimeUnavailableError
        When its package is missing or the export fails.
    DeviceError
        For onnx/openvino on a device other than the CPU.
    """
    runtime = check_runtime(runtime)
    if runtime == "auto":
        chosen = auto_runtime(detector.device.type)
        if chosen != "torch":
            try:
                backend = make_backend(detector, chosen, threads)
            except RuntimeUnavailableError as exc:
                LOGGER.warning("runtime auto: %s; using torch", exc)
            else:
                diff = verified_difference(detector, backend)
                if diff <= VERIFY_TOL:
                    return backend
                LOGGER.warning("runtime auto: %s differs from torch by %.2g (relative) on the check image; using "
                               "torch", chosen, diff)
        return TorchBackend(detector)
    if runtime == "torch":
        return TorchBackend(detector)
    if detector.device.type != "cpu":
        from objsearch.errors import DeviceError

        raise DeviceError(
            f"runtime {runtime!r} runs on the CPU only; use --runtime torch with device {detector.device}")
    import torch

    threads = torch.get_num_threads() if threads is None else int(threads)
    maps = any(name in detector.recipe for name in ("cls_cell", "cls_roi", "box_cell"))
    cls = OnnxBackend if runtime == "onnx" else OpenVinoBackend
    return cls(detector, maps, threads)
