"""Bring incoming images into a line's layout, in a staging folder, touching nothing else.

The stored layout is MVTec AD's plus a ``validation/`` folder: ``<role>/<label>/<file>`` with
roles train, validation and test (see :mod:`flows.data.roles`), and optional masks in
``ground_truth/<kind>/<stem>_mask.<ext>``. Sources:

- a folder in MVTec layout: its ``test/`` stays the test set (published splits stay comparable),
  its ``train/good`` is shared between train and validation by the stable hash, and a
  ``validation/`` folder of its own is kept as validation;
- separate folders of normal images, defect images (flat, or one sub-folder per defect kind) and,
  optionally, masks: every image gets its role by the stable hash;
- either of those appended to the previous version: existing images keep their roles.

Identical files (by content) are imported once; the others are reported as skipped. Images that
come with a provenance (operators' verdicts, :mod:`flows.feedback`) get a row each in the line's
``provenance.csv``, inside the version that adds them.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from padim_plugin.mvtec import NORMAL, PROVENANCE, ROLE_SPLITS, is_image, mask_candidates

from ..config import SplitParams
from .roles import Role, assign_fit_role, assign_role, image_key
from .validation import DataValidationError, orphan_masks, stray_entries
from .validation import subdirs as _subdirs

DEFAULT_DEFECT_KIND = "defect"


@dataclass(frozen=True)
class Incoming:
    """One image to import, with the role it will have, its mask if any, and the file name it is
    stored under (its own, unless an MVTec source reuses the name across its splits)."""

    source: Path
    label: str  # "good" or a defect kind
    role: Role
    mask: Path | None = None
    name: str = ""

    @property
    def stored_name(self) -> str:
        return self.name or self.source.name

    @property
    def key(self) -> str:
        return image_key(self.label, self.stored_name)


@dataclass
class StagingReport:
    """What an import did, for the user: images added per role, duplicates skipped, replacements."""

    added: Counter = field(default_factory=Counter)
    skipped: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    masks_added: int = 0
    sources: dict[str, str] = field(default_factory=dict)  # staged path -> the user's path

    def summary(self) -> str:
        added = ", ".join(f"{role} +{count}" for role, count in sorted(self.added.items())) or "nothing"
        lines = [f"added {added}"]
        if self.masks_added:
            lines.append(f"added {self.masks_added} mask(s) to images already in the line")
        if self.replaced:
            lines.append(f"replaced {len(self.replaced)}: {', '.join(self.replaced)}")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} duplicate(s):")
            lines += [f"  - {reason}" for reason in self.skipped]
        return "\n".join(lines)


def from_mvtec_folder(source: Path, split: SplitParams) -> list[Incoming]:
    """The images of an MVTec-layout folder with their roles (see the module docstring). A file
    name that the source uses in several splits for one label (MVTec AD's ``good/000.png``) is
    stored with its split as prefix (``train_000.png``, ``test_000.png``), one key per image."""
    if not source.is_dir():
        raise FileNotFoundError(f"data folder {source} does not exist")
    problems = stray_entries(source, top_level=False) + orphan_masks(source)
    found: list[tuple[str, Path, str, Role]] = []  # (source split, image, label, role)
    for image in _images(source / "train" / NORMAL, required=False):
        role = assign_fit_role(image_key(NORMAL, image.name), split.seed, split.train, split.validation)
        found.append(("train", image, NORMAL, role))
    for role in ("validation", "test"):
        found += [(role, image, label_dir.name, role) for label_dir in _subdirs(source / role)
                  for image in _images(label_dir)]
    keys = Counter(image_key(label, image.name) for _, image, label, _ in found)
    reused = {key for key, count in keys.items() if count > 1}
    incoming = []
    for source_split, image, label, role in found:
        masks = mask_candidates(source / "ground_truth" / label, image.stem) if label != NORMAL else []
        if len(masks) > 1:
            problems.append(f"{image}: {len(masks)} masks ({', '.join(m.name for m in masks)}), expected one")
        name = f"{source_split}_{image.name}" if image_key(label, image.name) in reused else ""
        incoming.append(Incoming(image, label, role, masks[0] if masks else None, name))
    if problems:
        raise DataValidationError(str(source), problems)
    return incoming


def from_separate_folders(normal: Path | None, defects: Path | None, masks: Path | None,
                          split: SplitParams) -> list[Incoming]:
    """Normal and defect images (masks optional), each with its role by the stable hash. Files
    that are not images, and masks that belong to no image, are problems, reported together."""
    if normal is None and defects is None:
        raise ValueError("give a folder of normal images (--normal) and/or of defect images (--defects)")
    if masks is not None and not masks.is_dir():
        raise FileNotFoundError(f"mask folder {masks} does not exist")
    problems = [f"{path}: stray {'folder' if path.is_dir() else 'file'} (not an image)"
                for folder, kinds in ((normal, False), (defects, True), (masks, True)) if folder is not None
                for path in _strays(folder, kinds)]
    incoming = []
    if normal is not None:
        images = _images(normal)
        if not images:
            raise DataValidationError(str(normal), [f"{normal}: no normal images found"])
        incoming += [new_image(image, NORMAL, split) for image in images]
    used_masks: set[Path] = set()
    for kind, images in (_defects_by_kind(defects) if defects is not None else {}).items():
        for image in images:
            mask = _find_source_mask(masks, kind, image.stem) if masks is not None else None
            used_masks.add(mask)
            incoming.append(new_image(image, kind, split, mask))
    if masks is not None:
        problems += [f"{mask}: mask without a defect image of that name in {defects}"
                     for mask in sorted(p for p in masks.rglob("*") if is_image(p)) if mask not in used_masks]
    if problems:
        raise DataValidationError(str(normal or defects), problems)
    return incoming


def new_image(source: Path, label: str, split: SplitParams, mask: Path | None = None,
              name: str = "") -> Incoming:
    """An image new to its line (stored as ``name``, else its own file name), with its role by the
    stable hash of its key."""
    role = assign_role(image_key(label, name or source.name), label != NORMAL, split.seed, split.train,
                       split.validation, split.defect_validation)
    return Incoming(source, label, role, mask, name)


@dataclass(frozen=True)
class Provenance:
    """Where some incoming images came from: ``columns`` of each, by its source path."""

    columns: Sequence[str]
    rows: Mapping[str, Mapping[str, str]]


def record_provenance(staged: Path, report: StagingReport, provenance: Provenance) -> None:
    """Append a row to ``staged/provenance.csv`` for each image this staging added whose source
    ``provenance`` describes: its stored path, then its columns. Images skipped as duplicates get
    no row."""
    rows = [{"stored": _relative(Path(target), staged), **provenance.rows[source]}
            for target, source in sorted(report.sources.items()) if source in provenance.rows]
    if not rows:
        return
    path = staged / PROVENANCE
    header = ["stored", *provenance.columns]
    if path.is_file():
        with path.open(newline="") as stream:
            existing = next(csv.reader(stream), [])
        if existing != header:
            raise DataValidationError(str(path), [f"{path}: columns {existing}, expected {header}"])
    with path.open("a", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=header)
        if stream.tell() == 0:
            writer.writeheader()
        writer.writerows(rows)


def stage(incoming: list[Incoming], staging: Path, previous: Path | None = None,
          replace: bool = False) -> StagingReport:
    """Write ``previous`` (a line's current version, if appending) plus ``incoming`` to ``staging``.

    A new image whose key (label/name) exists with other content is an error unless ``replace``
    (then it replaces that file in its role); identical content, under any name, is skipped, but a
    mask that comes with an identical image is added to it. Within a defect kind, file stems must
    be unique, since masks are paired with images by stem.
    """
    report = StagingReport()
    staging.mkdir(parents=True, exist_ok=True)
    existing: dict[str, list[Path]] = {}  # key -> stored files
    digests: dict[Path, str] = {}  # stored file -> content digest, each file read once
    by_content: dict[str, str] = {}  # content digest -> what holds it
    stems: dict[tuple[str, str], str] = {}  # (defect kind, stem) -> stored file name
    if previous is not None:
        shutil.copytree(previous, staging, dirs_exist_ok=True, copy_function=shutil.copyfile)
        for role in ROLE_SPLITS:
            for label_dir in _subdirs(staging / role):
                for stored in _images(label_dir):
                    existing.setdefault(image_key(label_dir.name, stored.name), []).append(stored)
                    digests[stored] = content_digest(stored)
                    by_content.setdefault(digests[stored], f"{role}/{label_dir.name}/{stored.name}")
                    stems[label_dir.name, stored.stem] = stored.name
    problems = []
    for item in incoming:
        digest = content_digest(item.source)
        stored = existing.get(item.key, [])
        same = [path for path in stored if digests[path] == digest]
        if same:
            if item.mask is not None:
                problems += _add_mask_to_stored(item, same[0], staging, replace, report)
            else:
                report.skipped.append(f"{item.source}: already in the line as {_relative(same[0], staging)}")
            continue
        if stored and not replace:
            where = ", ".join(_relative(path, staging) for path in stored)
            problems.append(f"{item.source}: {where} exists with other content (--replace replaces it)")
            continue
        if stored and len(stored) > 1:
            where = ", ".join(_relative(path, staging) for path in stored)
            problems.append(f"{item.source}: {item.key} is ambiguous ({where}); cannot replace")
            continue
        if not stored and digest in by_content:
            report.skipped.append(f"{item.source}: same content as {by_content[digest]}")
            continue
        stem = Path(item.stored_name).stem
        clash = stems.get((item.label, stem)) if item.label != NORMAL else None
        if clash is not None and clash != item.stored_name:
            problems.append(f"{item.source}: {item.label}/{clash} has the same stem, and masks are paired"
                            " with images by stem; rename one")
            continue
        role = _relative(stored[0], staging).split("/")[0] if stored else item.role
        target = _copy(item.source, staging / role / item.label, item.stored_name)
        report.sources[target] = str(item.source)
        existing[item.key] = [Path(target)]
        digests[Path(target)] = digest
        by_content[digest] = f"{role}/{item.key}"
        stems[item.label, stem] = item.stored_name
        if stored:
            report.replaced.append(_relative(stored[0], staging))
            for old_mask in mask_candidates(staging / "ground_truth" / item.label, stem):
                old_mask.unlink()
        else:
            report.added[role] += 1
        if item.mask is not None:
            _copy_mask(item, staging, report)
    if problems:
        raise DataValidationError(str(staging), problems)
    return report


def _add_mask_to_stored(item: Incoming, stored: Path, staging: Path, replace: bool,
                        report: StagingReport) -> list[str]:
    """An identical image came with a mask: give the stored image that mask, unless it has another."""
    current = mask_candidates(staging / "ground_truth" / item.label, stored.stem)
    if current and all(content_digest(mask) == content_digest(item.mask) for mask in current):
        report.skipped.append(f"{item.source}: already in the line, with this mask")
        return []
    if current and not replace:
        return [f"{item.mask}: {_relative(current[0], staging)} exists with other content"
                " (--replace replaces it)"]
    for mask in current:
        mask.unlink()
    _copy_mask(item, staging, report)
    report.masks_added += 1
    return []


def _copy_mask(item: Incoming, staging: Path, report: StagingReport) -> None:
    name = f"{Path(item.stored_name).stem}_mask{item.mask.suffix}"
    report.sources[_copy(item.mask, staging / "ground_truth" / item.label, name)] = str(item.mask)


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def content_digest(path: Path) -> str:
    """MD5 of a file's bytes (DVC's hash): what "the same image" means for imports and diffs."""
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def _images(folder: Path, required: bool = True) -> list[Path]:
    if not folder.is_dir():
        if not required:
            return []
        raise FileNotFoundError(f"image folder {folder} does not exist")
    return sorted(p for p in folder.iterdir() if is_image(p))


def _strays(folder: Path, kinds: bool) -> list[Path]:
    """Entries of an import folder that are not images (or, if ``kinds``, folders of images)."""
    if not folder.is_dir():
        return []
    strays = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and kinds:
            strays += [p for p in sorted(entry.iterdir()) if not is_image(p)]
        elif not is_image(entry):
            strays.append(entry)
    return strays


def _defects_by_kind(defects: Path) -> dict[str, list[Path]]:
    if not defects.is_dir():
        raise FileNotFoundError(f"image folder {defects} does not exist")
    kinds = {d.name: _images(d) for d in _subdirs(defects)}
    flat = _images(defects)
    if flat:
        kinds[DEFAULT_DEFECT_KIND] = kinds.get(DEFAULT_DEFECT_KIND, []) + flat
    if NORMAL in kinds:
        raise ValueError(f"{defects / NORMAL}: '{NORMAL}' is the normal label, not a defect kind")
    return kinds


def _find_source_mask(masks: Path, kind: str, stem: str) -> Path | None:
    """A mask in ``masks/<kind>/`` or directly in ``masks/``."""
    candidates = mask_candidates(masks / kind, stem) + mask_candidates(masks, stem)
    return candidates[0] if candidates else None


def _copy(file: Path, folder: Path, name: str | None = None) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (name or file.name)
    shutil.copyfile(file, target)
    return str(target)
