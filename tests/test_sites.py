import pytest
from torch import nn

from interp.sites import LINEAR_MODULES, Site, depth_to_layer, parse_spec
from interp.backends import linear_of, select_sites


def test_site_names_and_hooks(tiny):
    (site,) = select_sites(tiny, layers=0.5, modules=["mlp.out"])
    assert site == Site(2, "mlp.out")  # round(0.5 * 3) == 2
    assert site.hook_in == "blocks.2.mlp.out.hook_in"
    assert site.hook_out == "blocks.2.mlp.out.hook_out"
    assert site.hook_in in tiny.hook_dict and site.hook_out in tiny.hook_dict
    assert Site.parse("blocks.2.mlp.out.hook_in") == site


def test_linear_is_the_hf_module(tiny):
    # Booting replaced the HF submodules by bridges; the raw Linear is kept inside.
    hf_layer = tiny.original_model.model.layers[1]
    assert linear_of(tiny, "blocks.1.mlp.out") is hf_layer.mlp.down_proj.original_component
    assert linear_of(tiny, Site(1, "attn.o")) is hf_layer.self_attn.o_proj.original_component
    assert isinstance(linear_of(tiny, Site(0, "mlp.gate")), nn.Linear)
    assert linear_of(tiny, "blocks.1.mlp.out").weight.shape == (64, 128)  # HF layout [out=d_model, in=d_mlp]
    assert linear_of(tiny, "blocks.1.mlp.in").weight.shape == (128, 64)


def test_layer_lists_regex_and_spec(tiny):
    sites = select_sites(tiny, layers=[0, -1], modules=["attn.o", "mlp.out"])
    assert [s.name for s in sites] == ["blocks.0.attn.o", "blocks.0.mlp.out", "blocks.3.attn.o", "blocks.3.mlp.out"]
    assert [s.name for s in select_sites(tiny, layers=None, regex=r"blocks\.[12]\.attn\.o")] == [
        "blocks.1.attn.o",
        "blocks.2.attn.o",
    ]
    assert select_sites(tiny, spec="layers=0.0, 1.0;modules=mlp.in") == [Site(0, "mlp.in"), Site(3, "mlp.in")]
    assert parse_spec("layers=3;modules=mlp.out,attn.o") == {"layers": "3", "modules": ["mlp.out", "attn.o"]}


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"layers": 7}, "layers 0..3"),
        ({"layers": 1.5}, "[0, 1]"),
        ({"modules": ["mlp.down"]}, "mlp.out"),
        ({"layers": None, "regex": "nothing"}, "matches no site"),
        ({"spec": "depth=0.5"}, "layers="),
    ],
)
def test_bad_specs_list_valid_choices(tiny, kwargs, fragment):
    with pytest.raises(ValueError) as err:
        select_sites(tiny, **kwargs)
    assert fragment in str(err.value)


def test_depth_fraction_mapping():
    assert depth_to_layer(0.0, 30) == 0 and depth_to_layer(1.0, 30) == 29
    assert depth_to_layer(0.5, 30) == 14
    assert set(LINEAR_MODULES) >= {"mlp.out", "attn.o"}


@pytest.mark.slow
def test_default_model_sites(smol):
    (site,) = select_sites(smol, layers=0.5, modules=["mlp.out"])
    assert site.name == "blocks.14.mlp.out"
    assert linear_of(smol, site).weight.shape == (576, 1536)
    assert linear_of(smol, site) is smol.original_model.model.layers[14].mlp.down_proj.original_component
    assert "blocks.14.attn.o.hook_out" in smol.hook_dict


def test_layer_bands_by_depth_and_index():
    from interp.sites import parse_layers

    assert parse_layers("0.1:0.5", 30) == list(range(3, 15))
    assert parse_layers("3:5,0.9", 30) == [3, 4, 5, 26]
    assert parse_layers("-3:-1", 30) == [27, 28, 29]
    for bad in ("5:3", "0.1:", ":4", "1:2:3"):
        with pytest.raises(ValueError, match="band"):
            parse_layers(bad, 30)


def test_depth_spec_reads_back_as_a_depth():
    from interp.sites import depth_spec, parse_layers

    # "1" would be layer index 1: a band reaching the top of the network must say 1.0
    assert depth_spec(1.0) == "1.0" and parse_layers(f"{depth_spec(0.7)}:{depth_spec(1.0)}", 30) == list(range(20, 30))
    assert depth_spec(0.0) == "0" and parse_layers(f"{depth_spec(0.0)}:{depth_spec(0.3)}", 30) == list(range(0, 10))
    with pytest.raises(ValueError, match="depth fraction"):
        depth_spec(1.5)


def test_module_examples_run_as_doctests(tiny):
    import doctest

    import interp.backends
    import interp.sites

    results = [doctest.testmod(module, extraglobs={"model": tiny}, optionflags=doctest.ELLIPSIS)
               for module in (interp.sites, interp.backends)]  # the grammar's examples, and selection on a model's layers
    assert sum(r.attempted for r in results) >= 7 and not any(r.failed for r in results)


def names(sites: list[Site]) -> list[str]:
    return [s.name for s in sites]


def test_a_regex_alone_searches_every_layer_and_module(tiny):
    # not narrowed by the default depth 0.5 (which is layer 2 only)
    assert names(select_sites(tiny, regex=r"blocks\.(1|2)\.mlp\.out")) == ["blocks.1.mlp.out", "blocks.2.mlp.out"]
    assert names(select_sites(tiny, regex=r".*\.attn\.o")) == [f"blocks.{i}.attn.o" for i in range(4)]
    assert select_sites(tiny, spec=r"regex=blocks\.3\..*") == [Site(3, m) for m in LINEAR_MODULES]
    # without a regex the defaults hold: depth 0.5 x mlp.out
    assert select_sites(tiny) == [Site(2, "mlp.out")]


def test_a_regex_beside_layers_or_modules_is_the_intersection(tiny):
    assert select_sites(tiny, layers=[1, 3], regex=r".*\.mlp\.(in|out)") == [
        Site(1, "mlp.in"), Site(1, "mlp.out"), Site(3, "mlp.in"), Site(3, "mlp.out")]
    assert select_sites(tiny, modules=["attn.o"], regex=r"blocks\.[02]\..*") == [Site(0, "attn.o"), Site(2, "attn.o")]
    assert select_sites(tiny, spec=r"layers=1;regex=.*\.attn\.[qk]") == [Site(1, "attn.q"), Site(1, "attn.k")]
    # the regex matches, but not where layers allow: the error says so
    with pytest.raises(ValueError, match=r"matches no site among layers \[0\].*outside them"):
        select_sites(tiny, layers=[0], regex=r"blocks\.1\.mlp\.out")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        select_sites(tiny, regex="blocks.(")


@pytest.mark.parametrize("kwargs", [{"layers": ""}, {"layers": " , "}, {"spec": "layers=;modules=mlp.out"},
                                    {"spec": "regex="}])
def test_an_empty_layer_spec_or_spec_part_is_an_error(tiny, kwargs):
    with pytest.raises(ValueError, match="empty") as err:
        select_sites(tiny, **kwargs)
    assert "layers=" in str(err.value) or "e.g. '0.5'" in str(err.value) or "regex=" in str(err.value)


def test_an_empty_module_list_is_an_error(tiny):
    with pytest.raises(ValueError, match="modules is empty"):
        select_sites(tiny, modules=[])


def test_check_layer_spec_catches_what_it_can_without_a_model():
    from interp.sites import check_layer_spec

    assert check_layer_spec(" 0.1:0.5,14 ") == "0.1:0.5,14"
    for bad, says in (("", "empty layer spec"), ("a", "bad layer 'a'"), ("1.5", "depth fraction"), ("3:", "band")):
        with pytest.raises(ValueError, match=says):
            check_layer_spec(bad)
