"""The `search:` block and key paths into lists and short blocks, which `--set` and `segcli tune` share."""

from __future__ import annotations

import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml

from segcli.config.distribution import SearchDistribution
from segcli.config.json_schema import experiment_file_json_schema
from segcli.config.loader import load_experiment_file
from segcli.config.search import check_search, probe_values
from segcli.errors import ConfigError

BASE = """
model: {arch: Unet, encoder_name: resnet18, encoder_weights: null, classes: 4}
defaults: {batch_size: 4, max_epochs: 2}
experiments:
  e: {}
"""


def write(tmp_path: Path, search: str, base: str = BASE) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(base) + textwrap.dedent(search), encoding="utf-8")
    return path


def search_error(tmp_path: Path, search: str, base: str = BASE) -> str:
    path = write(tmp_path, search, base)
    with pytest.raises(ConfigError) as info:
        check_search(load_experiment_file(path), "e", path)
    return str(info.value)


def test_a_valid_search_block_comes_back_as_written(tmp_path):
    path = write(tmp_path, """
        search:
          lr: {log_uniform: [1e-4, 1e-2]}
          model.encoder_name: {choice: [resnet18, resnet34, efficientnet-b0]}
          batch_size: {choice: [8, 16]}
          loss.terms.1.weight: {uniform: [0.2, 1.0]}
          max_epochs: {int: [2, 6]}
    """)  # fmt: skip
    search = check_search(load_experiment_file(path), "e", path)
    assert {key: space.kind for key, space in search.items()} == {
        "lr": "log_uniform", "model.encoder_name": "choice", "batch_size": "choice", "loss.terms.1.weight": "uniform",
        "max_epochs": "int",
    }  # fmt: skip
    assert search["lr"].bounds == (1e-4, 1e-2) and search["max_epochs"].bounds == (2, 6)


@pytest.mark.parametrize(
    ("search", "fragments"),
    [
        ("search: {lrr: {log_uniform: [1e-4, 1e-2]}}", ["search.lrr: unknown key 'lrr'; did you mean 'lr'?"]),
        ("search: {model.encoder_nam: {choice: [a, b]}}", ["search.model.encoder_nam: unknown key 'encoder_nam'",
                                                           "did you mean 'encoder_name'"]),
        ("search: {lr: {uniform: [0.01, 0.001]}}", ["search.lr: empty range [0.01, 0.001]", "low below high"]),
        ("search: {lr: {log_uniform: [0, 0.1]}}", ["search.lr: log_uniform [0.0, 0.1] needs a positive low end"]),
        ("search: {batch_size: {choice: []}}", ["search.batch_size: choice [] needs two or more different values"]),
        ("search: {model.encoder_name: {uniform: [0, 1]}}", ["search.model.encoder_name: {uniform: [...]} samples "
                                                             "numbers but model.encoder_name is 'resnet18'",
                                                             "{choice: [...]}"]),
        ("search: {batch_size: {uniform: [4, 16]}}", ["search.batch_size: Input should be a valid integer",
                                                      "{int: [low, high]}", "value tried: 10.5"]),
        ("search: {max_epochs: {choice: [2, -1]}}", ["search.max_epochs: Input should be greater than 0",
                                                     "value tried: -1"]),
        ("search: {loss.terms.2.weight: {uniform: [0.2, 1]}}", ["search.loss.terms.2.weight: loss.terms is a list "
                                                                "of 2: use an index from 0 to 1"]),
        ("search: {lr: {log_uniformm: [1e-4, 1e-2]}}", ["search.lr.log_uniformm: unknown key 'log_uniformm'",
                                                        "did you mean 'log_uniform'"]),
        ("search: {lr: {uniform: [1e-4, 1e-2], choice: [1, 2]}}", ["search.lr: give one of uniform, log_uniform, "
                                                                   "int or choice"]),
        ("search: {train_transforms: {choice: [[a], [b]]}}", ["choice values are text, numbers, true/false or null"]),
    ],
)  # fmt: skip
def test_a_bad_search_key_is_one_line_naming_it_and_the_fix(tmp_path, search, fragments):
    message = search_error(tmp_path, search)
    assert len(message.splitlines()) == 1, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_every_bad_key_is_reported_at_once(tmp_path):
    message = search_error(tmp_path, "search: {lrr: {uniform: [0.1, 0.2]}, max_epochs: {choice: [1, 0]}}")
    assert message.splitlines()[0].endswith("2 problems in the search block")
    assert "search.lrr" in message and "search.max_epochs" in message


def test_tuning_needs_a_search_block(tmp_path):
    assert "no `search:` block" in search_error(tmp_path, "")


def test_probe_values_cover_both_ends_and_a_fraction_inside():
    assert probe_values(SearchDistribution.model_validate({"int": [2, 6]})) == [2, 6]
    assert probe_values(SearchDistribution.model_validate({"choice": ["a", None]})) == ["a", None]
    low, high, inside = probe_values(SearchDistribution.model_validate({"uniform": [4, 16]}))
    assert (low, high) == (4, 16) and 4 < inside < 16 and inside != int(inside)
    assert probe_values(SearchDistribution.model_validate({"log_uniform": [1e-4, 1e-2]}))[2] == pytest.approx(1e-3)


def test_the_json_schema_knows_the_search_block():
    validator = jsonschema.Draft202012Validator(experiment_file_json_schema())
    good = yaml.safe_load(BASE + "search: {lr: {log_uniform: [0.0001, 0.01]}, batch_size: {int: [2, 8]}}")
    validator.validate(good)
    bad = yaml.safe_load(BASE + "search: {lr: {log_unifrom: [0.0001, 0.01]}}")
    assert any("log_unifrom" in error.message for error in validator.iter_errors(bad))


def test_the_shipped_camvid_search_block_fits_its_experiments():
    path = Path(__file__).resolve().parents[2] / "experiments" / "camvid.yaml"
    for name in ("mini", "full"):
        assert set(check_search(load_experiment_file(path), name, path)) == {"lr", "model.encoder_name"}
