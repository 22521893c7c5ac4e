"""DailyDilemmas loading: validation errors name the row, signs per label, seeded disjoint splits."""

import shutil

import numpy as np
import pandas as pd
import pytest

from interp.dilemmas import ACTIONS_FILE, TARGET, VALUES_FILE, DilemmasError, load_dilemmas, split_dilemmas


@pytest.fixture(scope="module")
def data(dilemmas_dir):
    return load_dilemmas(dilemmas_dir)


def test_shape_and_taxonomy(data):
    assert len(data) == 1360 and len(data.labels) == 37
    assert data.value_labels("honesty") >= {TARGET}
    labels, signs = data.label_signs([TARGET])
    # 700 action rows carry a Truthfulness value (SOURCES.md); signs exclude dilemmas where both actions do
    assert 0 < (signs != 0).sum() < 700
    row = data.frame.iloc[0]
    assert row["id"] == 55 and row["action_to_do"] == "Report the colleague" and "honesty" in row["values_to_do"]


def test_signs_on_a_known_dilemma(data):
    labels, signs = data.label_signs()
    i = int(np.flatnonzero(data.ids == 55)[0])
    todo = set().union(*(data.value_labels(v) for v in data.frame.iloc[i]["values_to_do"]))
    notdo = set().union(*(data.value_labels(v) for v in data.frame.iloc[i]["values_not_to_do"]))
    for j, lab in enumerate(labels):
        expected = 1 if lab in todo - notdo else -1 if lab in notdo - todo else 0
        assert signs[i, j] == expected, lab


def test_duplicates_within_a_list_are_removed(data):
    assert all(len(set(v)) == len(v) for v in data.frame["values_to_do"])


def test_splits_disjoint_stable_and_shuffled(data):
    a, b = split_dilemmas(data, seed=3), split_dilemmas(data, seed=3)
    ids = {k: set(v.ids) for k, v in a.items()}
    assert not (ids["calibration"] & ids["validation"]) and not (ids["validation"] & ids["test"])
    assert sum(len(v) for v in ids.values()) == 1360 and len(ids["calibration"]) == 64
    assert all(np.array_equal(a[k].ids, b[k].ids) for k in a)
    assert not np.array_equal(a["test"].ids, np.sort(a["test"].ids))  # head(n) is a random sample
    assert set(split_dilemmas(data, seed=4)["calibration"].ids) != ids["calibration"]


def _copy(dilemmas_dir, tmp_path):
    for name in (ACTIONS_FILE, VALUES_FILE):
        shutil.copy(dilemmas_dir / name, tmp_path / name)
    return pd.read_csv(tmp_path / ACTIONS_FILE, keep_default_na=False)


def test_malformed_value_list_names_the_row(dilemmas_dir, tmp_path):
    df = _copy(dilemmas_dir, tmp_path)
    df.loc[7, "values_aggregated"] = "['honesty', "
    df.to_csv(tmp_path / ACTIONS_FILE, index=False)
    with pytest.raises(DilemmasError, match="row 7"):
        load_dilemmas(tmp_path)


def test_missing_action_row_and_columns(dilemmas_dir, tmp_path):
    df = _copy(dilemmas_dir, tmp_path)
    df.drop(index=3).to_csv(tmp_path / ACTIONS_FILE, index=False)
    with pytest.raises(DilemmasError, match="to_do then a not_to_do"):
        load_dilemmas(tmp_path)
    df.drop(columns=["action"]).to_csv(tmp_path / ACTIONS_FILE, index=False)
    with pytest.raises(DilemmasError, match="lacks columns"):
        load_dilemmas(tmp_path)


def test_unknown_value_and_missing_folder(dilemmas_dir, tmp_path):
    df = _copy(dilemmas_dir, tmp_path)
    df.loc[0, "values_aggregated"] = "['honesty', 'made-up value']"
    df.to_csv(tmp_path / ACTIONS_FILE, index=False)
    with pytest.raises(DilemmasError, match="made-up value"):
        load_dilemmas(tmp_path)
    with pytest.raises(DilemmasError, match="does not exist"):
        load_dilemmas(tmp_path / "nope")


def test_encoding_damage_is_repaired_from_the_intact_file(data, dilemmas_dir, tmp_path):
    assert not data.frame["situation"].str.contains("\ufffd").any()
    assert data.frame.set_index("id").loc[23534, "situation"].endswith("?")  # stray '">' dropped
    _copy(dilemmas_dir, tmp_path)  # without dilemma.csv the damaged text is kept, not guessed at
    assert load_dilemmas(tmp_path).frame["situation"].str.contains("\ufffd").sum() == 6


def test_odd_row_count_and_mismatched_ids_name_the_rows(dilemmas_dir, tmp_path):
    df = _copy(dilemmas_dir, tmp_path)
    df.iloc[:-1].to_csv(tmp_path / ACTIONS_FILE, index=False)
    with pytest.raises(DilemmasError, match="rows 2718-2719"):
        load_dilemmas(tmp_path)
    df.loc[11, "dilemma_idx"] = 999999
    df.to_csv(tmp_path / ACTIONS_FILE, index=False)
    with pytest.raises(DilemmasError, match="rows 10-11"):
        load_dilemmas(tmp_path)


def test_subset_keeps_order_and_rejects_unknown_ids(data):
    ids = data.ids[[5, 2, 9]]
    assert np.array_equal(data.subset(ids).ids, ids)
    with pytest.raises(KeyError, match="unknown dilemma ids"):
        data.subset([-1])


def test_a_file_cut_at_a_pair_boundary_is_refused_unless_a_subset_is_meant(dilemmas_dir, tmp_path, monkeypatch):
    df = _copy(dilemmas_dir, tmp_path)
    df.iloc[:1000].to_csv(tmp_path / ACTIONS_FILE, index=False)  # 500 whole dilemmas: structurally fine
    with pytest.raises(DilemmasError, match="1000 rows but the published DailyDilemmas file has 2720"):
        load_dilemmas(tmp_path)
    with pytest.warns(UserWarning, match="as a subset"):
        assert len(load_dilemmas(tmp_path, subset=True)) == 500
    monkeypatch.setenv("INTERP_DILEMMAS_SUBSET", "1")
    with pytest.warns(UserWarning, match="as a subset"):
        assert len(load_dilemmas(tmp_path)) == 500


def test_empty_and_header_only_files_are_refused_naming_the_file(dilemmas_dir, tmp_path):
    df = _copy(dilemmas_dir, tmp_path)
    (tmp_path / VALUES_FILE).write_text("")
    with pytest.raises(DilemmasError, match=f"{VALUES_FILE} is empty"):
        load_dilemmas(tmp_path)
    _copy(dilemmas_dir, tmp_path)
    df.iloc[:0].to_csv(tmp_path / ACTIONS_FILE, index=False)
    with pytest.raises(DilemmasError, match=f"{ACTIONS_FILE} holds a header but no rows"):
        load_dilemmas(tmp_path)


def test_the_data_files_hashes_travel_with_every_subset_and_scored_result(data, tiny):
    from interp.dilemmas import KNOWN_FILES
    from interp.measures.dilemma_scoring import score_dilemmas
    from interp.provenance import read_json_attr

    assert data.sources == {name: sha[:16] for name, (_, sha) in KNOWN_FILES.items()}
    part = data.subset(data.ids[:3]).head(2)
    assert part.sources == data.sources
    ds = score_dilemmas(tiny, None, [0.0], part, progress=False)
    assert read_json_attr(ds.attrs, "data_files") == data.sources


def test_edited_content_with_the_published_row_count_loads_with_a_warning(dilemmas_dir, tmp_path):
    df = _copy(dilemmas_dir, tmp_path)
    df.loc[5, "action"] = df.loc[5, "action"] + " (edited)"
    df.to_csv(tmp_path / ACTIONS_FILE, index=False)
    with pytest.warns(UserWarning, match="differs from the published file"):
        data = load_dilemmas(tmp_path)
    assert data.sources[ACTIONS_FILE] != KNOWN_SHA[:16]


KNOWN_SHA = "d01bea2d079fb815f69fc0a5635b294c38c6bb02661dc59c57551ea64e9d5c10"
