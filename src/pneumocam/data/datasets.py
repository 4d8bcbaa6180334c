"""Prepared data for training and evaluation: the transforms, splits and datasets over Processed/<split>/<label>/*.npy.

The datasets are torchvision `DatasetFolder`s with `load_file` as the loader, exactly the course's
layout, so any folder of square float .npy files of one size (224x224 by default) in class sub-folders `0` and
`1` works.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision import transforms
from torchvision.datasets import DatasetFolder

from pneumocam.config import AUGMENTATIONS, EVALUATION_SPLITS, IMAGE_SIZE
from pneumocam.data.augment import geometry_of, jitter_one, varies_intensity
from pneumocam.data.boxes import box_masks
from pneumocam.data.preprocess import Normalization, data_contract, load_file
from pneumocam.errors import PneumocamError
from pneumocam.files import read_csv

log = logging.getLogger(__name__)



def data_fingerprint(manifest: list[dict]) -> str:
    """sha256 over (file, label, split, content hash) of every prepared image, in file order."""
    digest = hashlib.sha256()
    for row in sorted(manifest, key=lambda r: r["file"]):
        digest.update(f"{row['file']},{row['label']},{row['split']},{row['xxh3_128']}\n".encode())
    return digest.hexdigest()


def read_fingerprint(data_dir: str | Path) -> str | None:
    """The data fingerprint recorded by `pneumocam prepare`, or None for a hand-made folder."""
    stats_path = Path(data_dir) / "stats.json"
    return json.loads(stats_path.read_text()).get("fingerprint") if stats_path.exists() else None


def geometric_transform(augment: str = "none", size: int = IMAGE_SIZE) -> transforms.Compose | None:
    """The training augmentation's geometric part, on (C, size, size) tensors (every channel moved alike).

    "original" (the course's): RandomAffine(±5°, translate 5%, scale 0.9-1.1) then
    RandomResizedCrop(size, scale 0.35-1). "shift": RandomAffine(±5°, translate 10%, scale 0.9-1.1) and
    no crop, so the lesion keeps its size and the whole chest stays in view ("shift-intensity": the same
    geometry). "none": None.
    """
    geometry = geometry_of(augment)
    if geometry == "original":
        return transforms.Compose([
            transforms.RandomAffine(degrees=5, translate=(0.05, 0.05), scale=(0.9, 1.1)),
            transforms.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True),
        ])
    if geometry == "shift":
        return transforms.Compose([transforms.RandomAffine(degrees=5, translate=(0.1, 0.1), scale=(0.9, 1.1))])
    if augment != "none":
        raise PneumocamError(f"unknown augmentation {augment!r}; choose from {AUGMENTATIONS}")
    return None


def build_transform(norm: Normalization, augment: str = "none", size: int = IMAGE_SIZE) -> transforms.Compose:
    """ToTensor + Normalize, with the intensity jitter and `geometric_transform(augment, size)` between them
    for training."""
    steps: list = [transforms.ToTensor()]  # (H, W) float32 -> (1, H, W), values unchanged
    if varies_intensity(augment):
        steps.append(jitter_one)
    if (geometric := geometric_transform(augment, size)) is not None:
        steps.append(geometric)
    steps.append(transforms.Normalize(mean=[norm.mean], std=[norm.std]))
    return transforms.Compose(steps)


def evaluation_split(data_dir: str | Path, split: str) -> str:
    """"auto" -> test when DATA/Processed/test holds images, else val (the split that chose the checkpoint)."""
    if split not in EVALUATION_SPLITS:
        raise PneumocamError(f"unknown split {split!r}; choose from {EVALUATION_SPLITS}")
    if split != "auto":
        return split
    test = Path(data_dir) / "Processed" / "test"
    return "test" if test.is_dir() and any(test.rglob("*.npy")) else "val"


def split_dataset(data_dir: str | Path, split: str, transform=None) -> DatasetFolder:
    """DATA/Processed/<split>/{0,1}/*.npy as a dataset of (tensor (1, S, S), label int)."""
    root = Path(data_dir) / "Processed" / split
    if not root.is_dir():
        raise PneumocamError(f"{root}: split folder not found (expected DATA/Processed/{split}/<label>/*.npy)")
    try:
        dataset = DatasetFolder(str(root), loader=load_file, extensions=(".npy",), transform=transform)
    except FileNotFoundError as exc:
        raise PneumocamError(f"{root}: {exc}") from exc
    unexpected = set(dataset.classes) - {"0", "1"}
    if unexpected:
        raise PneumocamError(f"{root}: class folders must be named 0 and 1, found {sorted(dataset.classes)}")
    # DatasetFolder numbers classes by sorted name; map back to the folder's own label
    dataset.target_transform = _FolderLabel(tuple(dataset.classes))
    return dataset


@dataclass(frozen=True)
class _FolderLabel:
    """Class index -> the label its folder name states (picklable, for DataLoader workers)."""

    classes: tuple[str, ...]

    def __call__(self, index: int) -> int:
        return int(self.classes[index])


def dataset_labels(dataset: DatasetFolder) -> np.ndarray:
    return np.array([int(dataset.classes[t]) for t in dataset.targets], dtype=np.int64)


def dataset_files(dataset: DatasetFolder, data_dir: str | Path) -> list[str]:
    """Paths of the samples relative to the data folder (as in manifest.csv). Links are not followed: a fold
    folder's files are links into another data set, and are named by where they lie."""
    base = Path(os.path.abspath(data_dir))
    return [str(Path(os.path.abspath(path)).relative_to(base)) for path, _ in dataset.samples]


def manifest_rows(data_dir: str | Path) -> dict[str, dict]:
    """manifest.csv as {file: row} (empty when the folder has none)."""
    manifest = Path(data_dir) / "manifest.csv"
    return {row["file"]: row for row in read_csv(manifest)} if manifest.exists() else {}


def sample_groups(data_dir: str | Path, files: list[str], attributes: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Each prepared file's values of `attributes` (metadata.attribute_values, plus "source": the source folder
    of a multi-source prepare), "" where unknown: an unknown view is a group of its own."""
    from pneumocam.data.metadata import attribute_values

    by_file = manifest_rows(data_dir)
    rows = [by_file.get(f, {}) for f in files]
    values = attribute_values(rows, tuple(a for a in attributes if a != "source"))
    values["source"] = [r.get("patient", "").partition(":")[0] if ":" in r.get("patient", "") else "" for r in rows]
    return list(zip(*(values[a] for a in attributes), strict=True))


def finding_targets(data_dir: str | Path, files: list[str]) -> torch.Tensor:
    """Each prepared file's hard-negative target from manifest.csv's finding: 1 for RSNA's "No Lung Opacity /
    Not Normal", 0 for "Normal" and "Lung Opacity", NaN where the finding is unknown (the loss skips those)."""
    by_file = manifest_rows(data_dir)
    codes = {"not-normal": 1.0, "normal": 0.0, "opacity": 0.0}
    return torch.tensor([codes.get(by_file.get(f, {}).get("finding", ""), float("nan")) for f in files])


def view_targets(data_dir: str | Path, files: list[str]) -> torch.Tensor:
    """Each prepared file's view as the view adversary's target: 1 for PA, 0 for AP, NaN for any other or
    unknown view (the loss skips those)."""
    views = sample_groups(data_dir, files, ("view",))
    return torch.tensor([{"PA": 1.0, "AP": 0.0}.get(v.upper(), float("nan")) for (v,) in views])


def soft_targets(csv_path: str | Path, files: list[str], weight: float) -> torch.Tensor:
    """Each training file's probability from a teacher's CSV (columns `source` or `file`, and `probability`, as
    `pneumocam predict` writes them), matched by file name; NaN for the files it does not list. Refused when it
    lists none of them: a distillation that silently distils nothing would look like one that worked."""
    path = Path(csv_path)
    try:
        rows = read_csv(path)
    except (OSError, UnicodeDecodeError) as error:
        raise PneumocamError(f"{path}: cannot read the soft labels ({error})") from error
    by_name = {}
    for number, row in enumerate(rows, start=2):
        name, value = row.get("source") or row.get("file"), row.get("probability")
        if not name or value is None:
            raise PneumocamError(f"{path}: line {number} needs a source (or file) and a probability column")
        try:
            probability = float(value)
        except ValueError:
            probability = float("nan")
        if not 0.0 <= probability <= 1.0:
            raise PneumocamError(f"{path}: line {number}: probability {value!r} is not in [0, 1]")
        by_name[Path(name).name] = probability
    soft = torch.tensor([by_name.get(Path(f).name, float("nan")) for f in files])
    if (named := int((~torch.isnan(soft)).sum())) == 0:
        raise PneumocamError(f"--soft-labels {path}: names none of the {len(files)} training images (rows match "
                             "by file name)")
    log.info("--soft-labels: %d of %d training images learn %g x the teacher's probability", named, len(files), weight)
    return soft


class WithTargets(torch.utils.data.Dataset):
    """A training split whose items (or, indexed with a batch of indices, whose batches) carry per-image
    targets last, in the order given: (image, label[, box mask], finding, soft label, group, view) for the
    finding head, distillation, group DRO and the view adversary."""

    def __init__(self, dataset, *targets: torch.Tensor):
        for target in targets:
            if len(target) != len(dataset):
                raise ValueError(f"{len(target)} targets for {len(dataset)} images")
        self.dataset, self.targets = dataset, targets

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index) -> tuple:
        return (*self.dataset[index], *(t[index] for t in self.targets))


def manifest_patients(data_dir: str | Path, files: list[str]) -> list[str]:
    """The patient of each prepared file (manifest.csv); a file not listed there is its own patient."""
    by_file = manifest_rows(data_dir)
    return [by_file[f]["patient"] if f in by_file else Path(f).stem for f in files]


class BoxedSplit(torch.utils.data.Dataset):
    """A split whose samples carry their box mask, moved by the same random augmentation as the image.

    Sample: (normalised image (1, S, S), label, mask (1, S, S) in [0, 1]); for box-guided training.
    """

    def __init__(self, dataset: DatasetFolder, boxes: torch.Tensor, norm: Normalization, augment: str = "none",
                 size: int = IMAGE_SIZE):
        if len(boxes) != len(dataset):
            raise ValueError(f"{len(boxes)} box rows for {len(dataset)} samples")
        self.dataset, self.boxes, self.norm = dataset, boxes, norm
        self.geometric, self.intensity = geometric_transform(augment, size), varies_intensity(augment)
        self.labels = dataset_labels(dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        path, target = self.dataset.samples[index]
        image = torch.from_numpy(load_file(path))[None]
        if self.intensity:
            image = jitter_one(image)
        both = torch.cat([image, box_masks(self.boxes[index][None], image.shape[-1])[0].float()])  # (2, H, W)
        if self.geometric is not None:
            both = self.geometric(both)
        return (both[:1] - self.norm.mean) / self.norm.std, self.dataset.target_transform(target), both[1:]


def positive_weight(labels: np.ndarray) -> float:
    """n_negative / n_positive, the BCE pos_weight that balances the two classes' total loss."""
    n_pos = int((labels == 1).sum())
    n_neg = int((labels == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise PneumocamError(f"the training split needs both classes, found {n_neg} negative and {n_pos} positive")
    return n_neg / n_pos


class InMemorySplit(torch.utils.data.Dataset):
    """A whole split held as one float16 tensor (N, 1, S, S) in [0, 1]: RSNA's 26,684 images take
    2.4 GB. Indexed with a list of indices it returns a whole batch in one tensor operation, so a
    DataLoader with a BatchSampler feeds a GPU without per-image Python work. With `boxes` (N, K, 4)
    a batch also carries its box masks (B, 1, S, S) bool, drawn per batch rather than stored."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor | None = None):
        if images.ndim != 4 or images.shape[1] != 1 or len(images) != len(labels):
            raise ValueError(f"expected (N, 1, H, W) images and N labels, got {tuple(images.shape)} and {len(labels)}")
        if boxes is not None and len(boxes) != len(labels):
            raise ValueError(f"{len(boxes)} box rows for {len(labels)} images")
        self.images, self.labels, self.boxes = images, labels, boxes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index) -> tuple[torch.Tensor, ...]:
        if self.boxes is None:
            return self.images[index], self.labels[index]
        return self.images[index], self.labels[index], box_masks(self.boxes[index], self.images.shape[-1])


def load_split_in_memory(data_dir: str | Path, split: str, boxes: torch.Tensor | None = None) -> InMemorySplit:
    """Read every prepared image of a split into an InMemorySplit (float16, values unchanged in [0, 1]);
    `boxes`: the split's `split_boxes`, for box-guided training."""
    from tqdm import tqdm

    dataset = split_dataset(data_dir, split)
    size = data_contract(data_dir).image_size
    images = torch.empty((len(dataset), 1, size, size), dtype=torch.float16)
    for i, (path, _) in enumerate(tqdm(dataset.samples, desc=f"load {split} into memory", unit="img")):
        image = load_file(path)
        if image.shape != (size, size):
            raise PneumocamError(f"{path}: a {'x'.join(map(str, image.shape))} image in a data set of {size}x{size} "
                                 "images (prepare every image of a folder with one --image-size)")
        images[i, 0] = torch.from_numpy(image)
    return InMemorySplit(images, torch.from_numpy(dataset_labels(dataset)), boxes)


def sample_weights(labels: np.ndarray, groups: list[tuple] | None = None, balance_classes: bool = True,
                   sources: list[str] | None = None, shares: dict[str, float] | None = None) -> torch.Tensor:
    """Per-sample weights for a sampler drawn with replacement.

    Without `groups`: 1 / count(class), so both classes are drawn equally often. With `groups` (one tuple of
    attribute values per sample, e.g. (view,)): P(label) / P(label | group), so every group keeps its size but
    has the same weighted prevalence, and the label says nothing about the attribute (the shortcut is gone
    from what the model is fed); with `balance_classes` also divided by P(label), making that prevalence 0.5.
    A group holding one class only cannot be balanced: it keeps weight 1 (times the class weight), and
    `single_class_groups` names it.
    With `sources` and `shares` ({source: share}): the balancing above happens within each source, and each
    source is then drawn with its share, so neither population is traded for the other by its size.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if sources is None:
        return torch.from_numpy(_balanced_weights(labels, groups, balance_classes))
    shares = shares or {}
    sources_array = np.asarray(sources)
    if missing := sorted(set(sources) - set(shares)):
        raise PneumocamError(f"--source-shares names no share for source(s) {', '.join(missing)} of the training "
                             f"split (its sources: {', '.join(sorted(set(sources)))})")
    total = sum(shares[s] for s in set(sources))
    weights = np.zeros(labels.size)
    for source in set(sources):
        inside = sources_array == source
        members = [g for g, keep in zip(groups, inside, strict=True) if keep] if groups is not None else None
        within = _balanced_weights(labels[inside], members, balance_classes)
        weights[inside] = within / within.sum() * shares[source] / total
    return torch.from_numpy(weights)


def _balanced_weights(labels: np.ndarray, groups: list[tuple] | None, balance_classes: bool) -> np.ndarray:
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    class_weight = 1.0 / np.maximum(counts[labels], 1) if balance_classes else np.ones(labels.size)
    if groups is None:
        return class_weight
    prevalence = labels.mean()
    within = {}
    for g in set(groups):
        within[g] = labels[np.array([x == g for x in groups])].mean()
    weights = np.ones(labels.size)
    for i, (g, y) in enumerate(zip(groups, labels, strict=True)):
        p_group = within[g] if y == 1 else 1 - within[g]
        p_all = prevalence if y == 1 else 1 - prevalence
        if 0 < within[g] < 1:
            weights[i] = p_all / p_group
    return weights * class_weight


def parse_shares(text: str) -> dict[str, float]:
    """"kermany224=0.3,rsna_1000=0.7" -> {"kermany224": 0.3, "rsna_1000": 0.7} (positive numbers, any sum)."""
    shares = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = (x.strip() for x in part.partition("="))
        try:
            share = float(value)
        except ValueError:
            share = 0.0
        if not name or not share > 0:
            raise PneumocamError(f"--source-shares entries must look like SOURCE=0.5 (a positive share), got {part!r}")
        shares[name] = share
    return shares


def single_class_groups(labels: np.ndarray, groups: list[tuple]) -> list[tuple]:
    """The groups whose samples are all of one class (sample_weights cannot balance them)."""
    labels = np.asarray(labels)
    return sorted({g for g in groups if len(set(labels[[x == g for x in groups]].tolist())) == 1})
