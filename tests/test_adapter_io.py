"""Saving and loading adapters: identical outputs, sign and provenance kept, clear refusals."""

import json

import pytest
import torch

from interp.adapters import innerpissa, lora
from interp.adapters.io import AdapterLoadError, load_adapter, read_adapter_config, save_adapter
from interp.cayley import cayley, skew, soft_clamp
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
    assert sorted(p.name for p in saved.iterdir()) == ["adapter.json", "adapter.safetensors"]
    from interp.store import current_umask

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
    (saved / "adapter.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterLoadError, match="shape"):
        load_adapter(tiny, saved)
    innerpissa.attach(tiny, SITES, innerpissa.InnerPiSSAConfig(rank=4)).detach()  # sites are free again


def test_adapter_saved_before_the_angle_clamp_keeps_its_entry_clamp(saved, tiny):
    """Options without ``clamp`` come from adapters trained with the per-entry clamp: they must load with it."""
    cfg = json.loads((saved / "adapter.json").read_text())
    assert cfg["options"]["clamp"] == "angle"
    del cfg["options"]["clamp"]
    (saved / "adapter.json").write_text(json.dumps(cfg))
    old = load_adapter(tiny, saved)
    try:
        layer = next(iter(old.layers.values()))
        assert layer.config.clamp == "entry"
        entry = cayley(soft_clamp(skew(layer.theta_v), layer.config.max_angle))
        torch.testing.assert_close(layer.rotation_v(1.0), entry)
    finally:
        old.detach()
    with pytest.raises(ValueError, match="unknown clamp"):
        innerpissa.InnerPiSSAConfig(clamp="spectral")


def test_truncated_tensors_are_refused(saved, tiny):
    data = (saved / "adapter.safetensors").read_bytes()
    (saved / "adapter.safetensors").write_bytes(data[: len(data) // 2])
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

    tensors = load_file(saved / "adapter.safetensors")
    tensors.pop("blocks_2_attn_o.theta_v")
    save_file(tensors, saved / "adapter.safetensors")
    with pytest.raises(AdapterLoadError, match="missing"):
        load_adapter(tiny, saved)
