"""Layered configuration: precedence, validation errors that name the key, hashing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from persona4rec.config import Config, conf_dir, dataset_names, load_config, parse_override
from persona4rec.errors import ConfigError


def test_defaults_file_matches_code_defaults():
    """conf/defaults.yaml documents every default; it must never drift from the models'."""
    doc = yaml.safe_load((conf_dir() / "defaults.yaml").read_text())
    sections = {name: f.annotation for name, f in Config.model_fields.items() if name not in ("dataset", "data")}
    assert set(doc) - {"dataset", "data"} == set(sections)
    for name, model in sections.items():
        assert doc[name] == model().model_dump(mode="json"), name


def test_every_registered_dataset_loads():
    names = dataset_names()
    assert {"amazon2014-musical-instruments", "amazon2023-musical-instruments", "yelp", "generic"} <= set(names)
    for name in names:
        cfg = load_config(dataset=name).config
        assert cfg.dataset == name
        if not cfg.data.manual_download and cfg.data.format != "generic":
            assert cfg.data.reviews.url and cfg.data.reviews.url.startswith("http")


def test_precedence_defaults_dataset_experiment_cli(tmp_path: Path):
    exp = tmp_path / "exp.yaml"
    exp.write_text("prepare:\n  k_core: 7\n  samples:\n    max_per_item: 4\nspark:\n  master: local[1]\n")
    loaded = load_config(["prepare.k_core=9"], experiment=exp, dataset="yelp")
    cfg = loaded.config
    assert cfg.prepare.k_core == 9  # command line beats the experiment file
    assert cfg.prepare.samples.max_per_item == 4  # experiment beats defaults
    assert cfg.prepare.samples.min_text_chars == 1  # sibling key keeps its default (deep merge)
    assert cfg.spark.master == "local[1]"
    assert cfg.data.format == "yelp"  # the dataset layer
    assert loaded.sources["prepare.k_core"] == "command line"
    assert loaded.sources["prepare.samples.max_per_item"] == f"experiment {exp}"
    assert loaded.sources["data.format"] == "dataset yelp"
    assert loaded.sources["spark.app_name"] == "defaults"
    assert "k_core: 9  # command line" in loaded.explain()


def test_dataset_chosen_by_experiment_file(tmp_path: Path):
    exp = tmp_path / "exp.yaml"
    exp.write_text("dataset: yelp\n")
    assert load_config(experiment=exp).config.data.format == "yelp"
    assert load_config(["dataset=generic"], experiment=exp).config.data.format == "generic"


def test_dataset_layer_by_path(tmp_path: Path):
    layer = tmp_path / "mine.yaml"
    layer.write_text(
        "data:\n  format: generic\n  local_dir: /x\n  reviews: {filename: r.csv}\n  file_format: csv\n"
        "  columns: {user_id: u, item_id: i, rating: r, timestamp: t, text: x}\n"
    )
    cfg = load_config(dataset=str(layer)).config
    assert cfg.data.columns.user_id == "u"
    assert cfg.artifacts_root.name == "mine"


def test_a_mapping_set_on_the_command_line_is_blamed_on_it_not_on_the_empty_default(tmp_path: Path):
    with pytest.raises(ConfigError) as err:  # defaults give submit.env_vars: {}
        load_config(['submit.env_vars={"API_TOKEN": "x"}'])
    assert str(err.value).rstrip().endswith("[set by command line]")

    exp = tmp_path / "exp.yaml"
    exp.write_text("submit:\n  env_vars: {MY_SECRET: x}\n")
    with pytest.raises(ConfigError, match=r"\[set by experiment"):
        load_config(experiment=exp)
    with pytest.raises(ConfigError, match=r"\[set by command line\]"):  # the latest layer to touch it
        load_config(['submit.env_vars={"MY_SECRET": "y"}'], experiment=exp)


def test_unknown_key_names_key_layer_and_suggestion(tmp_path: Path):
    with pytest.raises(ConfigError) as err:
        load_config(["prepare.kcore=5"])
    msg = str(err.value)
    assert "prepare.kcore: unknown key" in msg
    assert "did you mean 'prepare.k_core'" in msg
    assert "[set by command line]" in msg

    exp = tmp_path / "exp.yaml"
    exp.write_text("sparkk:\n  master: local\n")
    with pytest.raises(ConfigError, match=r"sparkk: unknown key .*did you mean 'spark'.*experiment"):
        load_config(experiment=exp)


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("prepare.k_core=five", r"prepare.k_core: Input should be a valid integer.*'five'"),
        ("prepare.k_core=2", r"prepare.k_core: Input should be greater than or equal to 3"),
        ("prepare.k_core=5.5", r"prepare.k_core: Input should be a valid integer"),
        ("spark.driver_memory=4", r"spark.driver_memory: Input should be a valid string"),
        ("spark.log_level=LOUD", r"spark.log_level: Input should be 'ERROR'"),
        ("prepare.item_filter.cities=Philadelphia", r"prepare.item_filter.cities: Input should be a valid list"),
        ("prepare.min_rating=6", r"min_rating must not exceed"),
    ],
)
def test_wrong_types_fail_with_the_key(override: str, pattern: str):
    with pytest.raises(ConfigError, match=pattern):
        load_config([override])


def test_unknown_dataset_suggests_a_name():
    with pytest.raises(ConfigError, match=r"unknown dataset 'yelpp' \(did you mean 'yelp'\?\)"):
        load_config(dataset="yelpp")


def test_generic_without_mapping_is_rejected():
    with pytest.raises(ConfigError, match="format 'generic' needs data.file_format and data.columns"):
        load_config(["data.columns=null"], dataset="generic")


@pytest.mark.parametrize("bad", ["k_core", "=5", "a..b=1", "x=[1, 2"])
def test_malformed_overrides(bad: str):
    with pytest.raises(ConfigError, match="override"):
        load_config([bad])


def test_override_values_are_yaml_never_evaluated():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a=null") == ("a", None)
    assert parse_override("a=__import__('os')") == ("a", "__import__('os')")
    assert parse_override("a=x=y") == ("a", "x=y")


def test_config_is_frozen_and_hash_is_stable():
    a = load_config(["prepare.k_core=6"]).config
    b = load_config(["prepare.k_core=6"]).config
    c = load_config(["prepare.k_core=7"]).config
    assert isinstance(a, Config)
    assert a.hash() == b.hash() != c.hash()
    assert a.hash("data") == c.hash("data")
    with pytest.raises(Exception, match="frozen"):
        a.prepare.k_core = 3  # type: ignore[misc]


def test_example_experiments_load():
    for path in sorted((conf_dir() / "experiments").glob("*.yaml")):
        load_config(experiment=path)


def test_an_encoder_version_given_as_a_number_is_kept_as_a_name():
    assert load_config(["index.encoder_version=3"], dataset="yelp").config.index.encoder_version == "3"
