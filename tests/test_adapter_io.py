"""Saving and loading adapters: identical outputs, sign and provenance kept, clear refusals."""

import json

import pytest
import torch

from interp.adapters import innerpissa, lora
from interp.adapters.io import (
    AdapterLoadError,
    load_adapter,
    options_hash,
    read_adapter_config,
    save_adapter,
    tensor_hashes,
    tensors_file,
)
from interp.models import load_model
from interp.sites import Site

SITES = [Site(1, "mlp.out"), Site(2, "attn.o")]


def _tokens() -> torch.Tensor:
    return torch.randint(0, 5000, (3, 8), generator=torch.Generator().manual_seed(0))


def _randomised(adapter, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return adapter


def _outputs(model, adapter, coeffs=(-1.0, 1.0)):
    with torch.no_grad():
        out = []
        for c in coeffs:
            with adapter.steer(model, c):
                out.append(model(_tokens()))
        return out


@pytest.mark.parametrize("kind", ["innerpissa", "lora"])
def test_round_trip_gives_identical_outputs(tiny, tmp_path, kind):
    module = {"innerpissa": innerpissa, "lora": lora}[kind]
    config = innerpissa.InnerPiSSAConfig(rank=8, rotate_u=True, scaling="mult") if kind == "innerpissa" else lora.LoRAConfig(rank=4)
    adapter = _randomised(module.attach(tiny, SITES, config))
    adapter.orientation = -1
    adapter.calibration = {"sign": {"flipped": True, "score_pos": 0.1}}
    try:
        expected = _outputs(tiny, adapter)
        path = save_adapter(adapter, tmp_path / "a", extra={"training": {"steps": 3}})
    finally:
        adapter.detach()
    loaded = load_adapter(tiny, path)
    try:
        assert type(loaded) is type(adapter) and loaded.options() == adapter.options()
        assert loaded.orientation == -1 and loaded.calibration["sign"]["flipped"] is True
        assert loaded.metadata["training"] == {"steps": 3} and loaded.metadata["model_spec"] == "tiny-random"
        for got, want in zip(_outputs(tiny, loaded), expected, strict=True):
            assert torch.equal(got, want)
    finally:
        loaded.detach()


@pytest.fixture
def saved(tiny, tmp_path):
    adapter = _randomised(innerpissa.attach(tiny, SITES, innerpissa.InnerPiSSAConfig(rank=8)))
    path = save_adapter(adapter, tmp_path / "saved")
    adapter.detach()
    return path


def test_save_is_atomic_and_overwrites(tiny, saved):
    adapter = innerpissa.attach(tiny, SITES, innerpissa.InnerPiSSAConfig(rank=8))
    try:
        save_adapter(adapter, saved)
    finally:
        adapter.detach()
    names = sorted(p.name for p in saved.iterdir())
    assert names == sorted(["adapter.json", read_adapter_config(saved)["tensors"]])
    from interp.files import current_umask

    assert saved.stat().st_mode & 0o777 == 0o777 & ~current_umask()  # not mkdtemp's 0700
    assert [p.name for p in saved.parent.iterdir() if p.name.startswith(".")] == []
    cfg = read_adapter_config(saved)
    assert cfg["sites"] == [s.name for s in SITES] and cfg["options"]["rank"] == 8 and cfg["package_version"]


def test_other_model_is_refused(saved):
    other = load_model("tiny-random:1")  # same shapes, other weights
    with pytest.raises(AdapterLoadError, match="weight hash"):
        load_adapter(other, saved)


def test_other_shape_is_refused(saved, tiny):
    cfg = json.loads((saved / "adapter.json").read_text())
    cfg["shapes"]["blocks.1.mlp.out"] = [64, 256]
    (saved / "adapter.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterLoadError, match="another model"):
        load_adapter(tiny, saved)


def test_wrong_rank_is_refused_and_nothing_stays_attached(saved, tiny):
    cfg = json.loads((saved / "adapter.json").read_text())
    cfg["options"]["rank"] = 4
    cfg["hashes"]["options"] = options_hash(cfg)  # a consistent json with the wrong rank: the tensors' shapes refuse it
    (saved / "adapter.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterLoadError, match="shape"):
        load_adapter(tiny, saved)
    innerpissa.attach(tiny, SITES, innerpissa.InnerPiSSAConfig(rank=4)).detach()  # sites are free again


def test_a_folder_of_the_format_before_hashes_is_refused_with_the_reason(saved, tiny):
    cfg = json.loads((saved / "adapter.json").read_text())
    del cfg["hashes"]
    cfg["format_version"] = 1
    (saved / "adapter.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterLoadError, match="before 0.1"):
        load_adapter(tiny, saved)
    with pytest.raises(ValueError, match="unknown clamp"):
        innerpissa.InnerPiSSAConfig(clamp="spectral")


def test_truncated_tensors_are_refused(saved, tiny):
    file = tensors_file(saved)
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterLoadError, match="damaged or truncated"):
        load_adapter(tiny, saved)


def test_damaged_or_missing_files_are_refused(saved, tiny, tmp_path):
    (saved / "adapter.json").write_text("{not json")
    with pytest.raises(AdapterLoadError, match="not valid JSON"):
        load_adapter(tiny, saved)
    with pytest.raises(AdapterLoadError, match="missing"):
        load_adapter(tiny, tmp_path / "nowhere")


def test_missing_tensor_is_refused(saved, tiny):
    from safetensors.torch import load_file, save_file

    tensors = load_file(tensors_file(saved))
    tensors.pop("blocks_2_attn_o.theta_v")
    save_file(tensors, tensors_file(saved))
    with pytest.raises(AdapterLoadError, match="missing"):
        load_adapter(tiny, saved)


def _attach_works(tiny):
    innerpissa.attach(tiny, SITES, innerpissa.InnerPiSSAConfig(rank=8)).detach()  # nothing stayed attached


def test_a_flipped_byte_in_a_tensor_is_refused(saved, tiny):
    file = tensors_file(saved)
    data = bytearray(file.read_bytes())
    data[-3] ^= 0x40  # inside the last tensor's values: still a valid safetensors file
    file.write_bytes(bytes(data))
    with pytest.raises(AdapterLoadError, match="differ from the hashes"):
        load_adapter(tiny, saved)
    _attach_works(tiny)


def test_non_finite_values_are_refused_even_with_matching_hashes(saved, tiny):
    from safetensors.torch import load_file, save_file

    cfg = read_adapter_config(saved)
    tensors = load_file(tensors_file(saved))
    tensors["blocks_1_mlp_out.theta_v"][0, 1] = float("nan")
    save_file(tensors, tensors_file(saved))
    cfg["hashes"]["tensors"] = tensor_hashes(tensors)
    (saved / "adapter.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterLoadError, match="non-finite"):
        load_adapter(tiny, saved)
    _attach_works(tiny)


@pytest.mark.parametrize("edit", [("orientation", 7), ("orientation", 0), ("max_angle", 3.0), ("scaling", "none")])
def test_edited_options_and_bad_orientations_are_refused_before_attaching(saved, tiny, edit):
    key, value = edit
    cfg = json.loads((saved / "adapter.json").read_text())
    if key == "orientation":
        cfg[key] = value
    else:
        cfg["options"][key] = value
    (saved / "adapter.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterLoadError, match="orientation must be|edited"):
        load_adapter(tiny, saved)
    _attach_works(tiny)


def test_non_finite_adapter_is_not_saved(tiny, tmp_path):
    adapter = _randomised(innerpissa.attach(tiny, SITES, innerpissa.InnerPiSSAConfig(rank=8)))
    try:
        with torch.no_grad():
            next(iter(adapter.parameters()))[0, 0] = float("inf")
        with pytest.raises(ValueError, match="non-finite"):
            save_adapter(adapter, tmp_path / "a")
    finally:
        adapter.detach()
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("fail_at", ["tensors", "json"])
def test_a_save_killed_midway_leaves_the_previous_adapter_whole(saved, tiny, monkeypatch, fail_at):
    from interp.adapters import io

    before = _outputs(tiny, loaded := load_adapter(tiny, saved))
    loaded.detach()
    real = io.atomic_write

    def dying(path, write):
        if (fail_at == "tensors" and str(path).endswith(".safetensors")) or (fail_at == "json" and str(path).endswith(".json")):
            raise KeyboardInterrupt("killed")
        return real(path, write)

    monkeypatch.setattr(io, "atomic_write", dying)
    other = _randomised(innerpissa.attach(tiny, SITES, innerpissa.InnerPiSSAConfig(rank=8)), seed=5)
    try:
        with pytest.raises(KeyboardInterrupt):
            save_adapter(other, saved)
    finally:
        other.detach()
    again = load_adapter(tiny, saved)
    try:
        for got, want in zip(_outputs(tiny, again), before, strict=True):
            assert torch.equal(got, want)
    finally:
        again.detach()
