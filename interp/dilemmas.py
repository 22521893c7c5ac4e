"""DailyDilemmas (Chiu, Jiang & Choi, ICLR 2025): moral choices labelled with the values they serve.

Two files are read from a folder (never copied into the repo): ``dilemma_to_action_to_values_aggregated.csv``
(2,720 rows = 1,360 dilemmas x to_do / not_to_do; ``values_aggregated`` a Python-literal list)
and ``values.csv`` (301 values -> labels in five theories: WVS, MFT, Virtue, Emotion,
Maslow; 37 labels written ``"Virtue/Truthfulness"``). The folder comes from the argument,
else ``$INTERP_DILEMMAS_DIR``, else ``../shared/data/daily_dilemmas`` next to the repo;
otherwise the Hugging Face dataset is tried (needs ``datasets`` and a reachable hub).

Integrity on load: the two files must have the published row counts (2,720 and 301);
a file cut short is refused unless a subset is meant (``subset=True``, or the environment
variable ``INTERP_DILEMMAS_SUBSET=1``), and content that differs from the published
sha256 is loaded with a warning. Every result scored on them records the files' hashes
(``Dilemmas.sources``). Empty or header-only files are refused naming the file.

Validation on load: columns present, exactly a to_do and a not_to_do row per dilemma,
parsable value lists, every value in the taxonomy; errors name the row. Values repeated
within a list (357 rows, see SOURCES.md) are de-duplicated. Six situations lost their
typographic apostrophes to U+FFFD characters; when ``dilemma.csv`` sits in the same
folder, those situations are taken from it (same ids, intact text). Dilemma 23534's
stray ``">`` after its closing question is dropped.
"""

from __future__ import annotations

import ast
import hashlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from interp.splits import three_way_split

ACTIONS_FILE = "dilemma_to_action_to_values_aggregated.csv"
VALUES_FILE = "values.csv"
INTACT_FILE = "dilemma.csv"  # optional: the same situations without the U+FFFD damage
THEORIES: tuple[str, ...] = ("WVS", "MFT", "Virtue", "Emotion", "Maslow")
TARGET = "Virtue/Truthfulness"
HF_DATASET = "kellycyy/daily_dilemmas"
_REPO = Path(__file__).resolve().parents[1]
_COLUMNS = ("dilemma_idx", "dilemma_situation", "action_type", "action", "values_aggregated")
# The published files (kellycyy/daily_dilemmas): rows and sha256, checked on every load.
KNOWN_FILES: dict[str, tuple[int, str]] = {
    ACTIONS_FILE: (2720, "d01bea2d079fb815f69fc0a5635b294c38c6bb02661dc59c57551ea64e9d5c10"),
    VALUES_FILE: (301, "4dfea050737fd9d5b3d185f5c9cb782d26e76d1c6dd32636367764573d128838"),
}
SUBSET_ENV = "INTERP_DILEMMAS_SUBSET"


class DilemmasError(ValueError):
    """DailyDilemmas files that are missing or malformed (the message names the row)."""


@dataclass(frozen=True)
class Dilemmas:
    """One row per dilemma (``frame``) plus the value taxonomy (``taxonomy``: value -> labels).

    ``frame`` columns: ``id``, ``situation``, ``action_to_do``, ``action_not_to_do``,
    ``values_to_do``, ``values_not_to_do`` (tuples of value names).
    """

    frame: pd.DataFrame
    taxonomy: pd.DataFrame
    sources: dict[str, str] = field(default_factory=dict)  # file name -> sha256 (first 16 hex digits)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def ids(self) -> np.ndarray:
        """Dilemma ids (``dilemma_idx``), in row order."""
        return self.frame["id"].to_numpy()

    def subset(self, ids: Sequence[int] | np.ndarray) -> Dilemmas:
        """The dilemmas with these ids, in the given order (unknown ids are an error)."""
        index = pd.Index(self.frame["id"])
        pos = index.get_indexer(np.asarray(ids))
        if (pos < 0).any():
            raise KeyError(f"unknown dilemma ids: {np.asarray(ids)[pos < 0][:5].tolist()}")
        return Dilemmas(self.frame.iloc[pos].reset_index(drop=True), self.taxonomy, self.sources)

    def head(self, n: int) -> Dilemmas:
        """The first ``n`` dilemmas (a split's order is seeded-random, so this is a sample)."""
        return Dilemmas(self.frame.iloc[:n].reset_index(drop=True), self.taxonomy, self.sources)

    @property
    def labels(self) -> list[str]:
        """All ``"Theory/Label"`` names, sorted."""
        return sorted({f"{t}/{v}" for t in THEORIES for v in self.taxonomy[t].dropna().unique()})

    @cached_property
    def _value_labels(self) -> dict[str, frozenset[str]]:
        # One pass over the 301 values; .loc per value per dilemma made label_signs take seconds.
        return {value: frozenset(f"{t}/{row[t]}" for t in THEORIES if isinstance(row[t], str) and row[t])
                for value, row in self.taxonomy.iterrows()}

    def value_labels(self, value: str) -> set[str]:
        """The ``"Theory/Label"`` names of one value (empty for a value with no label)."""
        try:
            return set(self._value_labels[value])
        except KeyError:
            raise KeyError(f"value {value!r} is not in the taxonomy ({len(self.taxonomy)} values)") from None

    def label_signs(self, labels: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
        """``(labels, signs [dilemma, label])``: +1 if the label serves the to-do action only,
        -1 if the not-to-do action only, 0 if both or neither."""
        labels = list(labels) if labels is not None else self.labels
        col = {lab: j for j, lab in enumerate(labels)}
        signs = np.zeros((len(self), len(labels)), dtype=np.int8)
        for i, (todo, nottodo) in enumerate(zip(self.frame["values_to_do"], self.frame["values_not_to_do"])):
            a = set().union(*(self._value_labels[v] for v in todo))
            b = set().union(*(self._value_labels[v] for v in nottodo))
            for lab in a - b:
                if lab in col:
                    signs[i, col[lab]] = 1
            for lab in b - a:
                if lab in col:
                    signs[i, col[lab]] = -1
        return labels, signs


def find_dilemmas_dir(path: str | Path | None = None) -> Path | None:
    """The folder to read: argument, ``$INTERP_DILEMMAS_DIR``, ``../shared/data/daily_dilemmas``."""
    if path is not None:
        if not Path(path).is_dir():
            raise DilemmasError(f"DailyDilemmas folder {path} does not exist")
        return Path(path)
    for candidate in (os.environ.get("INTERP_DILEMMAS_DIR"), _REPO.parent / "shared" / "data" / "daily_dilemmas"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def _parse_values(text: str, row: int, file: str = ACTIONS_FILE) -> tuple[str, ...]:
    try:
        values = ast.literal_eval(text)
    except (ValueError, SyntaxError) as err:
        raise DilemmasError(f"{file}: row {row}: values_aggregated is not a Python list literal: {str(text)[:80]!r}") from err
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise DilemmasError(f"{file}: row {row}: values_aggregated must be a list of strings, got {str(text)[:80]!r}")
    return tuple(dict.fromkeys(v.strip().lower() for v in values))  # de-duplicate, keep order


def parse_dilemmas(actions: pd.DataFrame, values: pd.DataFrame, *,
                   files: dict[str, str | Path] | None = None) -> Dilemmas:
    """Validate the two tables and fold the action rows into one row per dilemma.

    ``files`` (file name -> path read) lets errors name the file on disk; rows are counted
    from 0 after the header, as pandas counts them.
    """
    files = files or {}
    actions_file, values_file = (str(files.get(name, name)) for name in (ACTIONS_FILE, VALUES_FILE))
    missing = [c for c in _COLUMNS if c not in actions.columns]
    if missing:
        raise DilemmasError(f"{actions_file} lacks columns {missing}; found {list(actions.columns)}")
    missing = [c for c in ("value", *THEORIES) if c not in values.columns]
    if missing:
        raise DilemmasError(f"{values_file} lacks columns {missing}; found {list(values.columns)}")
    taxonomy = values.assign(value=values["value"].str.strip().str.lower()).set_index("value")[list(THEORIES)]
    taxonomy = taxonomy.replace("", np.nan)
    # Plain lists, not DataFrame slices per pair: 1,360 .iloc slices took ~2 s.
    ids, types, acts, vals, sits = (actions[c].tolist() for c in ("dilemma_idx", "action_type", "action",
                                                                  "values_aggregated", "dilemma_situation"))
    if len(actions):  # a file cut mid-line ends in a row whose last fields are empty
        last = actions.iloc[-1]
        empty = [c for c in _COLUMNS if pd.isna(last[c]) or str(last[c]).strip() == ""]
        if empty:
            raise DilemmasError(f"{actions_file}: row {len(actions) - 1} (the last) has empty {empty}: the file looks "
                                "cut short mid-line; restore it from the DailyDilemmas release")
    rows = []
    for i in range(0, len(actions), 2):
        if i + 1 >= len(actions) or types[i : i + 2] != ["to_do", "not_to_do"] or ids[i] != ids[i + 1]:
            # the last rows of a file cut mid-line come out short (empty fields) or unpaired
            cut = (" (the file ends here: is it cut short mid-line? restore it from the DailyDilemmas release)"
                   if i + 2 >= len(actions) else "")
            raise DilemmasError(f"{actions_file}: rows {i}-{i + 1}: expected a to_do then a not_to_do row of one "
                                f"dilemma, got {types[i : i + 2]} for ids {ids[i : i + 2]}{cut}")
        todo, nottodo = (_parse_values(vals[i + k], i + k, actions_file) for k in (0, 1))
        unknown = [v for v in todo + nottodo if v not in taxonomy.index]
        if unknown:
            raise DilemmasError(f"{actions_file}: rows {i}-{i + 1}: values not in {values_file}: {unknown}")
        situation = str(sits[i]).strip()
        if situation.endswith('?">'):  # dilemma 23534
            situation = situation[:-2]
        if not situation:
            raise DilemmasError(f"{actions_file}: row {i}: empty dilemma_situation")
        try:
            dilemma_id = int(ids[i])
        except (TypeError, ValueError) as err:
            raise DilemmasError(f"{actions_file}: row {i}: dilemma_idx {ids[i]!r} is not an integer") from err
        rows.append({"id": dilemma_id, "situation": situation,
                     "action_to_do": str(acts[i]).strip(), "action_not_to_do": str(acts[i + 1]).strip(),
                     "values_to_do": todo, "values_not_to_do": nottodo})
    frame = pd.DataFrame(rows)
    if frame["id"].duplicated().any():
        raise DilemmasError(f"{actions_file}: duplicate dilemma ids: {frame['id'][frame['id'].duplicated()].tolist()[:5]}")
    return Dilemmas(frame, taxonomy)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_csv(file: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(file, keep_default_na=False)
    except pd.errors.EmptyDataError as err:
        raise DilemmasError(f"{file} is empty; restore it from the DailyDilemmas release") from err
    except UnicodeDecodeError as err:
        raise DilemmasError(f"{file} is not UTF-8 text (byte {err.start}: {err.reason}); expected the DailyDilemmas "
                            "release's UTF-8 CSV; restore it from the release") from err
    except pd.errors.ParserError as err:
        raise DilemmasError(f"cannot parse {file} as CSV ({err}); expected the DailyDilemmas release's file "
                            "(a quoted field left open at the end means the file is cut short); restore it") from err
    if table.empty:
        raise DilemmasError(f"{file} holds a header but no rows; restore it from the DailyDilemmas release")
    return table


def check_published(files: dict[str, Path], tables: dict[str, pd.DataFrame], *, subset: bool) -> dict[str, str]:
    """Row counts and hashes against the published files; returns ``{name: sha256[:16]}``."""
    sources = {}
    for name, file in files.items():
        rows, sha = KNOWN_FILES[name]
        here = file_sha256(file)
        sources[name] = here[:16]
        if len(tables[name]) != rows:
            said = (f"{file} has {len(tables[name])} rows but the published DailyDilemmas file has {rows} "
                    "(cut short, or another version?)")
            if not subset:
                raise DilemmasError(f"{said}; restore the file, or set {SUBSET_ENV}=1 (load_dilemmas(subset=True)) "
                                    "if a subset is meant")
            warnings.warn(f"{said}: loaded as a subset, as asked", stacklevel=3)
        elif here != sha:
            warnings.warn(f"{file} differs from the published file (sha256 {here[:16]}, published {sha[:16]}); "
                          "results record its hash", stacklevel=3)
    return sources


def load_dilemmas(path: str | Path | None = None, *, subset: bool | None = None) -> Dilemmas:
    """Load and validate DailyDilemmas from a folder (see the module docstring for where).

    ``subset``: accept files with fewer rows than published (default: ``$INTERP_DILEMMAS_SUBSET``).
    """
    folder = find_dilemmas_dir(path)
    if folder is None:
        return _load_from_hub()
    if subset is None:
        subset = os.environ.get(SUBSET_ENV, "") not in ("", "0")
    files = {name: folder / name for name in (ACTIONS_FILE, VALUES_FILE)}
    for name, file in files.items():
        if not file.is_file():
            raise DilemmasError(f"DailyDilemmas folder {folder} lacks {name}; expected {ACTIONS_FILE} and {VALUES_FILE} "
                                "from the DailyDilemmas release")
    tables = {name: _read_csv(file) for name, file in files.items()}
    dilemmas = parse_dilemmas(tables[ACTIONS_FILE], tables[VALUES_FILE], files=files)
    dilemmas = Dilemmas(dilemmas.frame, dilemmas.taxonomy, check_published(files, tables, subset=subset))
    if (folder / INTACT_FILE).is_file():
        dilemmas = repair_situations(dilemmas, _read_csv(folder / INTACT_FILE), file=folder / INTACT_FILE)
    return dilemmas


def repair_situations(dilemmas: Dilemmas, intact: pd.DataFrame, *, file: str | Path = INTACT_FILE) -> Dilemmas:
    """Replace situations holding U+FFFD by ``intact``'s text for the same id (``idx``, ``dilemma_situation``).

    ``file`` names ``intact``'s file in errors.
    """
    if not {"idx", "dilemma_situation"} <= set(intact.columns):
        raise DilemmasError(f"{file} lacks columns idx / dilemma_situation; found {list(intact.columns)}")
    try:
        ids = intact["idx"].astype(int)
    except (TypeError, ValueError) as err:
        raise DilemmasError(f"{file}: column idx must hold integers ({err}); is the file cut short? "
                            "restore it from the DailyDilemmas release, or remove it (it only repairs six situations)") from err
    good = dict(zip(ids, intact["dilemma_situation"].astype(str).str.strip()))
    frame = dilemmas.frame.copy()
    damaged = frame["situation"].str.contains("\ufffd")
    frame.loc[damaged, "situation"] = [good.get(i, s) for i, s in zip(frame.loc[damaged, "id"], frame.loc[damaged, "situation"])]
    return Dilemmas(frame, dilemmas.taxonomy, dilemmas.sources)


def _load_from_hub() -> Dilemmas:
    try:
        from huggingface_hub import hf_hub_download
        actions = pd.read_csv(hf_hub_download(HF_DATASET, ACTIONS_FILE, repo_type="dataset"), keep_default_na=False)
        values = pd.read_csv(hf_hub_download("kellycyy/daily_dilemmas", VALUES_FILE, repo_type="dataset"), keep_default_na=False)
    except Exception as err:  # offline, no hub, file absent: one clear message
        raise DilemmasError(
            "DailyDilemmas not found locally and the Hugging Face hub is unreachable "
            f"({type(err).__name__}); pass --dilemmas PATH or set INTERP_DILEMMAS_DIR to a folder with "
            f"{ACTIONS_FILE} and {VALUES_FILE}"
        ) from None
    return parse_dilemmas(actions, values)


def split_dilemmas(dilemmas: Dilemmas, seed: int = 0, n_calibration: int = 64,
                   validation_fraction: float = 0.3) -> dict[str, Dilemmas]:
    """Disjoint ``calibration`` / ``validation`` / ``test`` subsets by dilemma id (seeded).

    Each subset is in a seeded random order, so ``.head(n)`` is a random sample of it.
    """
    ids = three_way_split(dilemmas.ids, seed, n_calibration=n_calibration, validation_fraction=validation_fraction)
    rng = np.random.default_rng(seed)
    return {name: dilemmas.subset(rng.permutation(part)) for name, part in ids.items()}
