"""config.py: strict parsing that names keys, --set overrides, config files."""

from pathlib import Path

import pytest

from tokenweight.config import (
    BfclSource,
    ConfigError,
    FileSource,
    PipelineConfig,
    SyntheticSource,
    apply_overrides,
    load_config,
    parse_config,
)


def test_defaults_parse():
    cfg = parse_config({})
    assert cfg == PipelineConfig()
    assert isinstance(cfg.prepare.source, BfclSource)
    assert cfg.discriminator.reference == "control" and cfg.weights.method == "rft"


@pytest.mark.parametrize(
    "data,key",
    [
        ({"discriminator": {"learnin_rate": 1e-3}}, "discriminator.learnin_rate"),
        ({"weigths": {}}, "weigths"),
        ({"prepare": {"source": {"kind": "file", "path": "x.jsonl", "pth": 1}}}, "prepare.source.pth"),
        ({"prepare": {"source": {"kind": "synthetic", "count": 3}}}, "prepare.source.count"),
    ],
)
def test_unknown_key_is_named(data, key):
    with pytest.raises(ConfigError) as err:
        parse_config(data, where="my.yaml")
    msg = str(err.value)
    assert f"my.yaml: {key}: unknown key" in msg, msg


@pytest.mark.parametrize(
    "data,key",
    [
        ({"discriminator": {"learning_rate": "fast"}}, "discriminator.learning_rate"),
        ({"discriminator": {"learning_rate": -1}}, "discriminator.learning_rate"),
        ({"weights": {"method": "dft"}}, "weights.method"),
        ({"prepare": {"max_tokens": [1]}}, "prepare.max_tokens"),
        ({"shuffle": {"floor": 1}}, "shuffle.floor"),
        ({"discriminator": "yes"}, "discriminator"),
        ({"prepare": {"source": {"kind": "synthetic", "n": "many"}}}, "prepare.source.n"),
    ],
)
def test_wrong_type_or_value_names_the_key(data, key):
    with pytest.raises(ConfigError) as err:
        parse_config(data, where="c.yaml")
    first = str(err.value).splitlines()[0]
    assert first.startswith(f"c.yaml: {key}: "), str(err.value)


def test_unknown_source_kind_is_an_error():
    with pytest.raises(ConfigError, match="prepare.source"):
        parse_config({"prepare": {"source": {"kind": "hub"}}})


def test_sources_parse_by_kind():
    assert isinstance(parse_config({"prepare": {"source": {"kind": "file", "path": "a.jsonl"}}}).prepare.source, FileSource)
    src = parse_config({"prepare": {"source": {"kind": "synthetic", "n": 5}}}).prepare.source
    assert isinstance(src, SyntheticSource) and src.n == 5


def test_overrides_parse_yaml_scalars_and_lists():
    raw = {"discriminator": {"epochs": 2}}
    data = apply_overrides(raw, [
        "discriminator.learning_rate=3e-4",
        "discriminator.train_layers=null",
        "discriminator.epochs=1.5",
        "prepare.source.kind=bfcl",
        "prepare.source.categories=[simple_python, multiple]",
        "weights.method=uniform",
        "store=/tmp/x",
        "prepare.split_seed=7",
        "weights.top_tokens=",
    ])
    assert raw == {"discriminator": {"epochs": 2}}  # the input is not modified
    d = data["discriminator"]
    # YAML 1.1 reads "3e-4" as text; the typed config turns it into the float.
    assert d["learning_rate"] in (3e-4, "3e-4")
    assert d["train_layers"] is None and d["epochs"] == 1.5 and isinstance(d["epochs"], float)
    assert data["prepare"]["source"]["categories"] == ["simple_python", "multiple"]
    assert data["prepare"]["split_seed"] == 7 and data["store"] == "/tmp/x"
    assert data["weights"]["top_tokens"] == ""
    data["weights"].pop("top_tokens")
    cfg = parse_config(data)
    assert cfg.discriminator.learning_rate == 3e-4 and isinstance(cfg.discriminator.learning_rate, float)
    assert cfg.discriminator.train_layers is None and cfg.weights.method == "uniform"
    assert cfg.prepare.source.categories == ["simple_python", "multiple"]


@pytest.mark.parametrize("item", ["discriminator.learning_rate", "store.x=1"])
def test_bad_overrides_are_config_errors(item):
    with pytest.raises(ConfigError):
        apply_overrides({"store": "./runs"}, [item])


def test_load_config_applies_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("discriminator:\n  epochs: 3\nweights:\n  margin: 0.1\n")
    cfg = load_config(path, ["weights.margin=0.3"])
    assert cfg.discriminator.epochs == 3 and cfg.weights.margin == 0.3


def test_load_config_error_names_the_file_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("discriminator:\n  learnin_rate: 0.1\n")
    with pytest.raises(ConfigError, match=f"{path}: discriminator.learnin_rate: unknown key"):
        load_config(path)


def test_load_config_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(path)


def test_load_config_invalid_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("store: ./runs\ndiscriminator:\n  epochs: [1, 2\n  lr: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:") and "not valid YAML" in msg


def test_load_config_top_level_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="list.yaml: expected a mapping"):
        load_config(path)


def test_empty_file_is_the_default_config(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == PipelineConfig()


def test_configs_are_frozen():
    cfg = PipelineConfig()
    with pytest.raises(Exception):
        cfg.discriminator.epochs = 5


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    # the configs the README runs: a typo in one (an arm's key, a method name, two arms with one
    # name: the config's own checks) fails here, not an hour into a run
    assert isinstance(load_config(path), PipelineConfig)
