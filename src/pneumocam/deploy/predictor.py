"""Predictor: a checkpoint -> probabilities and CAMs for arrays or files, in batches.

The CAM comes from the same forward pass as the probability (the network returns its feature map),
so explaining a prediction costs only an einsum, a min-max and a bilinear resize.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from pneumocam.config import ALIGNMENTS
from pneumocam.data.metadata import HEADER_KEYWORDS, normalise
from pneumocam.data.preprocess import Contract, Normalization, data_contract, normalised_batch, to_model_input
from pneumocam.data.readers import ImageReadError, read_image_and_size
from pneumocam.deploy.backends import INT8_BACKENDS, Runner, make_runner, onnx_runner, resolve_backend
from pneumocam.deploy.onnx_cache import CachedModel, load_cached, save_cached
from pneumocam.errors import PneumocamError
from pneumocam.explain.cam_grid import cam_cells, pooled, upsample_and_normalize_cells, upsample_cells
from pneumocam.model.calibration import (  # noqa: F401  (sigmoid: part of this module's API)
    Calibration,
    apply_by_view,
    logit,
    probabilities_by_view,
    sigmoid,
)
from pneumocam.model.ood import OutOfRange

if TYPE_CHECKING:
    import torch

    from pneumocam.model.network import PneumoniaNet

log = logging.getLogger(__name__)

GRADIENT_METHODS = ("gradcam", "gradcam++")
METHODS = ("cam", *GRADIENT_METHODS)  # built in; cam_extra.LIBRARY_METHODS need pneumocam[cam-extra]


@dataclass(frozen=True)
class Prediction:
    source: str
    probability: float  # sigmoid of the calibrated logit (the raw one when the checkpoint is not calibrated)
    logit: float  # the network's raw logit
    predicted: int  # the model's call: 1 when probability >= threshold (the truth is called "label")
    threshold: float
    image: np.ndarray  # (224, 224) model input in [0, 1]
    cam: np.ndarray | None = None  # (224, 224) normalised map in [0, 1]
    cam_raw: np.ndarray | None = None  # (7, 7) raw map; for CAM in logit units: mean(cam_raw) + bias = logit
    method: str = "cam"
    ood: bool | None = None  # True: does not look like a frontal chest X-ray (None: the checkpoint cannot tell)
    ood_distance: float | None = None
    ood_reason: str = ""
    view: str = ""  # the film's view position (DICOM ViewPosition), "" where unknown
    threshold_basis: str = "overall"  # which operating point gave `threshold`: "view PA", or "overall (...why)"
    # (224, 224), CAM only: the calibrated logit the image would get if every cell were like this pixel's, minus
    # the logit of `threshold`: > 0 above the decision boundary, < 0 below (what absolute overlays draw)
    evidence: np.ndarray | None = None

    def ood_fields(self) -> dict:
        """The out-of-range flag as a table row carries it: ood 1/0, "" when the checkpoint has no detector."""
        if self.ood is None:
            return {"ood": "", "ood_distance": "", "ood_reason": ""}
        return {"ood": int(self.ood), "ood_distance": round(self.ood_distance, 3), "ood_reason": self.ood_reason}


class ForwardPass(NamedTuple):
    """What one pass of the network gives for a batch of B images."""

    logits: np.ndarray  # (B,) raw
    raw: np.ndarray | None  # (B, 7, 7) the map at the network's own resolution (None for a library method)
    maps: np.ndarray  # (B, 224, 224) in [0, 1]
    pooled: np.ndarray  # (B, 512) the pooled features the classifier reads


class LoadedImage(NamedTuple):
    """A file read for the network: the model input and the view its header states ("" for none)."""

    image: np.ndarray
    view: str

    def or_view(self, view: str) -> LoadedImage:
        """This image with `view` where its header states none: the one rule of `predict --views` and `serve`'s
        ?view=, under which a DICOM's header always wins."""
        return self if self.view else self._replace(view=view)


def resolve_device(device: str) -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_network(path: str | Path, checkpoint: dict | None = None) -> PneumoniaNet:
    """The PneumoniaNet of the checkpoint at `path` (already loaded: `checkpoint`) in float32; imports torch."""
    from pneumocam.model.checkpoints import load_checkpoint, network_state
    from pneumocam.model.network import PneumoniaNet

    net = PneumoniaNet(weights_follow=True)
    try:
        net.load_state_dict(network_state(load_checkpoint(path) if checkpoint is None else checkpoint))
    except RuntimeError as exc:
        raise PneumocamError(f"{path}: model weights do not match PneumoniaNet ({exc})") from exc
    return net


def _cache(path: str | Path) -> CachedModel | None:
    """Export the checkpoint's network into the ONNX cache (this needs torch, once per checkpoint)."""
    from pneumocam.model.checkpoints import load_checkpoint

    checkpoint = load_checkpoint(path)
    return save_cached(path, load_network(path, checkpoint), checkpoint["pneumocam"])


@dataclass(frozen=True)
class Compiled:
    """A network as an ONNX backend runs it, with what the CAM needs from it (the classifier's weights), and
    how to load the torch network should a gradient method ask for it."""

    run: Runner
    head_weight: np.ndarray  # (512,)
    head_bias: float
    load_net: Callable[[], PneumoniaNet]

    @classmethod
    def of(cls, cached: CachedModel, path: str | Path, backend: str) -> Compiled:
        """The cached float32 export, or for an -int8 backend the INT8 copy `pneumocam quantize` made."""
        if backend in INT8_BACKENDS:
            from pneumocam.deploy.quantize import cached_int8_model

            model, engine = cached_int8_model(cached.weights_fingerprint, backend), INT8_BACKENDS[backend]
        else:
            model, engine = cached.onnx, backend
        return cls(onnx_runner(model, engine), cached.head_weight, cached.head_bias, lambda: load_network(path))


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Predictor:
    """Runs a trained PneumoniaNet. Inputs are (224, 224) images in [0, 1] or any readable file."""

    def __init__(self, net: PneumoniaNet | None, normalization: Normalization, *, threshold: float = 0.5,
                 metadata: dict | None = None, device: str = "cpu", alignment: str | None = None,
                 contract: Contract = Contract(), calibration: Calibration = Calibration(),
                 out_of_range: OutOfRange | None = None, backend: str = "torch",
                 thresholds_by_view: dict[str, float] | None = None, compiled: Compiled | None = None,
                 calibrations_by_view: dict[str, Calibration] | None = None):
        """`net`: the network; or None with `compiled` (an ONNX backend's forward pass, the classifier's weights
        and how to load the network should a gradient method need it): then nothing here imports torch."""
        alignment = alignment or contract.cam_alignment
        if alignment not in ALIGNMENTS:
            raise PneumocamError(f"unknown CAM alignment {alignment!r}; choose from {ALIGNMENTS}")
        self.alignment = alignment  # where the 7x7 cells sit in the image; see cam.upsample_and_normalize
        self.contract = contract  # size and resize mode of the model's input, as trained
        self.backend = backend  # who runs the plain forward pass (backends.BACKENDS); gradients always use torch
        if net is not None:
            self.device = resolve_device(device)
            self._net, self._load_net = net.eval().to(self.device), None
            self.run = make_runner(self._net, backend, self.device, contract.image_size)
            self.head_weight = net.fc.weight.detach().float().cpu().numpy().reshape(-1)
            self.head_bias = float(net.fc.bias.detach())
        elif compiled is not None:
            self.device, self._net, self._load_net = device, None, compiled.load_net
            self.run, self.head_weight, self.head_bias = compiled.run, compiled.head_weight, compiled.head_bias
        else:
            raise ValueError("a Predictor needs a network or a compiled one")
        self.normalization = normalization
        self.threshold = threshold
        self.thresholds_by_view = dict(thresholds_by_view or {})  # operating points per view (calibrate --per-view)
        self.metadata = metadata or {}
        self.calibration = calibration  # maps raw logits to calibrated probabilities (identity when uncalibrated)
        self.calibrations_by_view = dict(calibrations_by_view or {})  # calibrate --per-view; others: the overall
        self.out_of_range = out_of_range  # flags inputs unlike the training images (None when not fitted)

    @property
    def net(self) -> PneumoniaNet:
        """The torch network; a Predictor started from an ONNX cache loads it on first use (gradient methods)."""
        if self._net is None:
            self._net = self._load_net().eval()
        return self._net

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", threshold: float | None = None,
                        alignment: str | None = None, backend: str = "torch") -> Predictor:
        """`path`: a .ckpt written by pneumocam train, or a bundled model's name such as "pneumocam-cxr".
        The preprocessing contract (size, resize mode, normalisation, CAM alignment) comes from the checkpoint;
        `alignment` overrides where the CAM's cells are drawn; `backend` runs the forward pass (backends.py).
        An explicit `threshold` replaces the checkpoint's operating points, the per-view ones included.
        An ONNX backend on the CPU runs the checkpoint's cached export (onnx_cache.py; made on first use), and
        then starts without importing torch. "auto": backends.resolve_backend."""
        chosen = resolve_backend(backend, device)
        if backend == "auto":
            log.info("backend: %s (auto)", chosen)
        if chosen != "torch" and device == "cpu":
            cached = load_cached(path) or _cache(path)
            if cached is not None:  # else the cache cannot be written: the runner exports for this run only
                return cls._from_metadata(path, cached.metadata, threshold, alignment, device, chosen,
                                          compiled=Compiled.of(cached, path, chosen))
        from pneumocam.model.checkpoints import load_checkpoint

        checkpoint = load_checkpoint(path)
        return cls._from_metadata(path, checkpoint["pneumocam"], threshold, alignment, device, chosen,
                                  net=load_network(path, checkpoint))

    @classmethod
    def _from_metadata(cls, path: str | Path, meta: dict, threshold: float | None, alignment: str | None,
                       device: str, backend: str, net: PneumoniaNet | None = None,
                       compiled: Compiled | None = None) -> Predictor:
        norm = meta["normalization"]
        contract = Contract.from_metadata(meta)
        if contract is None:
            contract = Contract()
            log.warning("%s predates the preprocessing contract: assuming %s", path, contract)
        return cls(net, Normalization(norm["mean"], norm["std"], norm.get("origin", "checkpoint")),
                   threshold=meta.get("threshold", 0.5) if threshold is None else threshold, metadata=meta,
                   device=device, alignment=alignment, contract=contract,
                   calibration=Calibration.from_metadata(meta.get("calibration")),
                   out_of_range=OutOfRange.from_metadata(meta.get("ood")), backend=backend,
                   thresholds_by_view=meta.get("thresholds_by_view") if threshold is None else None, compiled=compiled,
                   calibrations_by_view={view: Calibration.from_metadata(entry)
                                         for view, entry in (meta.get("calibration_by_view") or {}).items()})

    def operating_point(self, view: str = "") -> tuple[float, str]:
        """(threshold, which one) for a film of `view`: the view's own where calibrate chose one (with the view's
        calibration where it fitted one), else the overall threshold, saying why."""
        if not self.thresholds_by_view:
            return self.threshold, "overall"
        if view in self.thresholds_by_view:
            return float(self.thresholds_by_view[view]), f"view {view}"
        why = "view unknown" if not view else f"no threshold for view {view}"
        return self.threshold, f"overall ({why})"

    def calibration_for(self, view: str = "") -> Calibration:
        """The calibration a film of `view` gets: its view's own where calibrate fitted one, else the overall."""
        return self.calibrations_by_view.get(view, self.calibration)

    def probabilities(self, logits: np.ndarray, views: Sequence[str] | None = None) -> np.ndarray:
        """Raw logits -> probabilities, through the checkpoint's calibration when it has one (each image's view's
        own with `views`; without them, the overall one, as for a film of unknown view)."""
        if views is None:
            return self.calibration.probabilities(logits)
        return probabilities_by_view(logits, list(views), self.calibration, self.calibrations_by_view)

    def load(self, path: str | Path) -> np.ndarray:
        """A file -> the (size, size) image in [0, 1] the network sees, by the checkpoint's contract (the same
        pixels `prepare` writes for it). Raises ImageReadError for an unreadable file."""
        return self.load_with_view(path).image

    def load_with_view(self, path: str | Path) -> LoadedImage:
        """Like load, with the view position a DICOM's header states (normalised; "" when absent or malformed)."""
        size, header = self.contract.image_size, {}
        image = read_image_and_size(path, min_side=size, header=header)[0]
        view, _ = normalise("view", header.get(HEADER_KEYWORDS["view"]))
        return LoadedImage(to_model_input(image, size, self.contract.resize_mode), view)

    def check_prepared(self, data_dir: str | Path) -> None:
        """Refuse a prepared folder of another image size before reading it, naming the folder (the check in
        _batch sees arrays only, so its message cannot say where they came from)."""
        if not any((Path(data_dir) / "Processed").glob("*/*/*.npy")):
            return  # nothing prepared: the command's own check says so
        size, found = self.contract.image_size, data_contract(data_dir).image_size
        if found != size:
            raise PneumocamError(f"{data_dir}: prepared at {found}x{found} for a model trained at {size}x{size}: "
                                 f"prepare the data again with `pneumocam prepare --image-size {size}`")

    def _batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The normalised batch, refused where an image is not the size the model was trained at: the network would
        run on it anyway (it is fully convolutional), but it would not be the model that was measured."""
        size = self.contract.image_size
        if wrong := next((np.shape(im) for im in images if np.shape(im) != (size, size)), None):
            raise PneumocamError(f"a {wrong[0]}x{wrong[-1]} input for a model trained at {size}x{size}: prepare the "
                                 f"data with `pneumocam prepare --image-size {size}`, or give the original files")
        return normalised_batch(images, self.normalization)

    def forward(self, images: Sequence[np.ndarray]) -> ForwardPass:
        """(B, S, S) images in [0, 1] (S: the contract's size, 224 by default) -> the logits and the CAM at both
        resolutions."""
        x = self._batch(images)
        logits, features = self.run(x)  # (B, 1), (B, 512, 7, 7)
        raw = cam_cells(features, self.head_weight)  # (B, 7, 7)
        maps = upsample_and_normalize_cells(raw, (x.shape[-2], x.shape[-1]), self.alignment)  # (B, 224, 224)
        return ForwardPass(logits[:, 0], raw, maps, pooled(features))

    def features(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(B, S, S) images -> raw logits (B,) and the pooled feature vectors (B, 512) the classifier reads."""
        logits, features = self.run(self._batch(images))
        return logits[:, 0], pooled(features)

    def saliency(self, images: Sequence[np.ndarray], method: str = "cam") -> ForwardPass:
        """Like forward, with the map from `method`: cam (free, same pass), gradcam or gradcam++ (one backward),
        or a pytorch-grad-cam method (library_cams.LIBRARY_METHODS; no raw map, None)."""
        if method == "cam":
            return self.forward(images)
        import torch

        from pneumocam.explain.cam import grad_cam, grad_cam_plus_plus
        from pneumocam.explain.library_cams import LIBRARY_METHODS, library_saliency

        x = torch.from_numpy(self._batch(images)).to(self.device)
        if method in LIBRARY_METHODS:
            with torch.no_grad():
                logits, features = self.net(x)
            return ForwardPass(logits[:, 0].float().cpu().numpy(), None, library_saliency(self.net, x, method).numpy(),
                               pooled(features.float().cpu().numpy()))
        if method not in GRADIENT_METHODS:
            raise PneumocamError(f"unknown CAM method {method!r}; choose from {METHODS + tuple(LIBRARY_METHODS)}")
        with torch.enable_grad():
            logits, features = self.net(x)  # (B, 1), (B, 512, 7, 7)
            gradient_map = grad_cam if method == "gradcam" else grad_cam_plus_plus
            raw = gradient_map(features, logits[:, 0]).detach().float()  # (B, 7, 7)
        raw = raw.cpu().numpy()
        maps = upsample_and_normalize_cells(raw, (x.shape[-2], x.shape[-1]), self.alignment)  # as for CAM
        return ForwardPass(logits[:, 0].detach().float().cpu().numpy(), raw, maps,
                           pooled(features.detach().float().cpu().numpy()))

    def predict_arrays(self, images: Sequence[np.ndarray], sources: Sequence[str] | None = None,
                       cam: bool = True, batch_size: int = 32, method: str = "cam",
                       views: Sequence[str] | None = None) -> list[Prediction]:
        """`views`: each image's view position ("" unknown), which picks its operating point."""
        sources = list(sources) if sources is not None else [f"array[{i}]" for i in range(len(images))]
        views = list(views) if views is not None else [""] * len(images)
        out: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            size, mode = self.contract.image_size, self.contract.resize_mode
            chunk = [to_model_input(np.asarray(im, dtype=np.float32), size, mode)
                     for im in images[start : start + batch_size]]
            logits, raw, maps, pooled = self.saliency(chunk, method) if cam else self.forward(chunk)
            chunk_views = views[start : start + len(chunk)]
            probabilities = self.probabilities(logits, chunk_views)
            distances = self.out_of_range.distances(pooled) if self.out_of_range else [None] * len(chunk)
            points = [self.operating_point(view) for view in chunk_views]
            evidence = self.evidence_maps(raw, [t for t, _ in points], chunk_views) if cam and method == "cam" else None
            for i, image in enumerate(chunk):
                probability = float(probabilities[i])
                distance = None if distances[i] is None else float(distances[i])
                threshold, basis = points[i]
                out.append(Prediction(
                    source=sources[start + i], probability=probability, logit=float(logits[i]),
                    predicted=int(probability >= threshold), threshold=threshold, image=image,
                    cam=maps[i] if cam else None, cam_raw=raw[i] if cam and raw is not None else None,
                    method=method, ood=None if distance is None else distance > self.out_of_range.threshold,
                    ood_distance=distance,
                    ood_reason=self.out_of_range.reason(distance) if distance is not None else "",
                    view=views[start + i], threshold_basis=basis, evidence=None if evidence is None else evidence[i],
                ))
        return out

    def evidence_maps(self, raw: np.ndarray, thresholds: Sequence[float],
                      views: Sequence[str] | None = None) -> np.ndarray:
        """(B, 7, 7) raw CAMs -> (B, 224, 224) Prediction.evidence: each cell as the whole image's logit (cell +
        bias, since logit = mean of the cells + bias), calibrated (by each image's view's calibration), minus the
        logit of each image's threshold."""
        size = (self.contract.image_size, self.contract.image_size)
        cells = upsample_cells(raw, size, self.alignment)
        views = list(views) if views is not None else [""] * len(cells)
        boundary = np.array([logit(min(max(t, 1e-6), 1 - 1e-6)) for t in thresholds])[:, None, None]
        calibrated = apply_by_view(cells + self.head_bias, views, self.calibration, self.calibrations_by_view)
        return (calibrated - boundary).astype(np.float32)

    def predict_files(self, paths: Sequence[str | Path], cam: bool = True, batch_size: int = 32,
                      method: str = "cam", views: Mapping[str, str] | None = None,
                      ) -> tuple[list[Prediction], list[dict]]:
        """Predict every readable file; unreadable ones come back as {"source", "reason"} rows. `views`: {file name
        without extension: view} for files whose header states none (data.read_views)."""
        predictions, failures = [], []
        for chunk in batches(list(paths), batch_size):
            images, sources, chosen = [], [], []
            for path in chunk:
                try:
                    loaded = self.load_with_view(path).or_view((views or {}).get(Path(path).stem, ""))
                except ImageReadError as exc:
                    failures.append({"source": str(path), "reason": exc.reason})
                    continue
                images.append(loaded.image)
                chosen.append(loaded.view)
                sources.append(str(path))
            if images:
                predictions += self.predict_arrays(images, sources, cam, batch_size, method, chosen)
        return predictions, failures
