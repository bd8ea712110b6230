"""Which role an image plays in its product line: train, validation or test (pure functions).

An image's role is decided once, when it enters the line, by a stable hash of its key (its path
within the line less the role folder: ``<label>/<file name>``) and the line's split seed, against
the fractions in params.yaml. It does not depend on which other images exist, so adding images
never moves an existing one, and a version that only adds images keeps the previous test set as
a subset of its own. The role is then visible as the image's folder in the data version.

- normal images: ``train`` (fit), ``validation`` (threshold), the rest ``test`` (metrics, gates);
- defect images: ``validation`` or ``test``; never ``train``.
"""

from __future__ import annotations

import hashlib
from typing import Literal

Role = Literal["train", "validation", "test"]
ROLES: tuple[Role, ...] = ("train", "validation", "test")


def image_key(label: str, name: str) -> str:
    """The role-independent identity of an image within its line."""
    return f"{label}/{name}"


def unit_hash(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by ``key`` and ``seed`` alone (SHA-256, platform independent)."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_role(key: str, defect: bool, seed: int, train: float, validation: float,
                defect_validation: float) -> Role:
    """The role of a new image; ``train + validation < 1`` so that some normal images are tested."""
    u = unit_hash(key, seed)
    if defect:
        return "validation" if u < defect_validation else "test"
    if u < train:
        return "train"
    return "validation" if u < train + validation else "test"


def assign_fit_role(key: str, seed: int, train: float, validation: float) -> Role:
    """train or validation, in the ratio ``train : validation``, for normal images that a source
    already keeps out of its test set (an MVTec-layout ``train/good``)."""
    return "train" if unit_hash(key, seed) < train / (train + validation) else "validation"


def diff_versions(before: dict[str, str], after: dict[str, str]) -> dict[str, dict[str, int]]:
    """Per role (and ``masks``): images added, removed, changed (same path, other content) and
    moved (same key, other role: what the stable split should never do) between two versions,
    each given as {path within the line: content digest}."""
    rows = {name: dict.fromkeys(("added", "removed", "changed", "moved"), 0) for name in (*ROLES, "masks")}

    def row(path: str) -> str:
        top = path.split("/")[0]
        return top if top in ROLES else "masks"

    def key(path: str) -> str:
        return path.split("/", 1)[-1] if row(path) != "masks" else path

    before, after = _images_and_masks(before), _images_and_masks(after)
    for path in before.keys() & after.keys():
        if before[path] != after[path]:
            rows[row(path)]["changed"] += 1
    only_before = {key(path): path for path in before.keys() - after.keys()}
    only_after = {key(path): path for path in after.keys() - before.keys()}
    for image_key_, path in only_after.items():
        rows[row(path)]["moved" if image_key_ in only_before else "added"] += 1
    for image_key_, path in only_before.items():
        if image_key_ not in only_after:
            rows[row(path)]["removed"] += 1
    return rows


def _images_and_masks(files: dict[str, str]) -> dict[str, str]:
    """A version's files less what lies beside the role folders (its provenance.csv)."""
    return {path: digest for path, digest in files.items() if "/" in path}
