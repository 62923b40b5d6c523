"""Experiment files: loading, merging model + defaults + experiment, validation messages."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from segcli.config.loader import (
    deep_merge,
    flatten,
    load_experiment,
    load_experiment_file,
    merged_experiment,
    read_yaml,
    resolve_experiment,
)
from segcli.config.schema import Experiment
from segcli.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
UNETPP = REPO / "experiments" / "unetpp.yaml"

MINIMAL_MODEL = "model: {arch: Unet, classes: 2}\n"


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def resolve(path: Path, name: str = "e", overrides=None) -> Experiment:
    return resolve_experiment(load_experiment_file(path), name, path, overrides)


def config_error(path: Path, name: str = "e", overrides=None) -> str:
    with pytest.raises(ConfigError) as info:
        resolve(path, name, overrides)
    return str(info.value)


# --------------------------------------------------------------------------- experiments/unetpp.yaml


def test_unetpp_file_lists_both_experiments():
    file = load_experiment_file(UNETPP)
    assert list(file.experiments) == ["experiment-batch_size", "experiment-lr"]
    assert file.model["arch"] == "UnetPlusPlus"


def test_unetpp_batch_size_experiment_takes_lr_from_defaults():
    experiment = load_experiment(UNETPP, "experiment-batch_size")
    assert experiment.batch_size == 8
    assert experiment.lr == pytest.approx(1e-4)
    assert experiment.max_epochs == 1
    assert experiment.gpu == 0


def test_unetpp_lr_experiment_takes_batch_size_from_defaults():
    experiment = load_experiment(UNETPP, "experiment-lr")
    assert experiment.lr == pytest.approx(1e-3)
    assert experiment.batch_size == 32


def test_unetpp_model_block():
    model = load_experiment(UNETPP, "experiment-lr").model
    assert model.arch == "UnetPlusPlus"
    assert model.encoder_name == "resnet34"
    assert model.encoder_weights == "imagenet"
    assert model.in_channels == 3
    assert model.classes == 2
    assert model.params == {}


def test_unetpp_blocks_parsed_as_written():
    experiment = load_experiment(UNETPP, "experiment-batch_size")
    train = [(t.name, t.params) for t in experiment.train_transforms]
    assert train == [
        ("resize", {"height": 1024, "width": 1024}),
        ("random_rotate_90", {"p": 0.5}),
        ("horizontal_flip", {"p": 0.5}),
    ]
    assert [(t.name, t.params) for t in experiment.val_transforms] == [("resize", {"height": 1024, "width": 1024})]
    assert experiment.optimizer.name == "AdamW"
    assert experiment.optimizer.params == {"weight_decay": 0.01}
    assert experiment.scheduler is not None
    assert experiment.scheduler.name == "CosineAnnealingLR"
    assert experiment.scheduler.params == {"T_max": 10}
    assert experiment.scheduler.interval == "epoch"
    assert experiment.early_stopping is not None
    assert experiment.early_stopping.monitor == "val/mIoU"
    assert experiment.early_stopping.patience == 3
    assert experiment.early_stopping.mode == "max"
    # Not written in the file: schema defaults.
    assert [t.name for t in experiment.loss.terms] == ["cross_entropy", "dice"]
    assert experiment.monitor.metric == "val/mIoU"
    assert experiment.monitor.mode == "max"


def test_loading_does_not_modify_the_experiment_file():
    before = UNETPP.read_bytes()
    for name in ("experiment-batch_size", "experiment-lr"):
        load_experiment(UNETPP, name)
    assert UNETPP.read_bytes() == before


def test_resolving_one_experiment_does_not_leak_into_another():
    file = load_experiment_file(UNETPP)
    first = resolve_experiment(file, "experiment-batch_size", UNETPP, overrides={"optimizer.params.weight_decay": 0.5})
    assert first.optimizer.params == {"weight_decay": 0.5}
    assert file.defaults["optimizer"]["params"] == {"weight_decay": 0.01}
    second = resolve_experiment(file, "experiment-lr", UNETPP)
    assert second.optimizer.params == {"weight_decay": 0.01}
    assert second.batch_size == 32


# --------------------------------------------------------------------------- deep merge


def test_nested_override_keeps_sibling_keys(tmp_path):
    path = write(
        tmp_path,
        MINIMAL_MODEL
        + textwrap.dedent(
            """\
        defaults:
          optimizer: {name: SGD, params: {momentum: 0.9, weight_decay: 0.01}}
        experiments:
          e:
            optimizer: {params: {weight_decay: 0.1}}
        """
        ),
    )
    experiment = resolve(path)
    assert experiment.optimizer.name == "SGD"
    assert experiment.optimizer.params == {"momentum": 0.9, "weight_decay": 0.1}


def test_model_override_keeps_arch_and_classes(tmp_path):
    path = write(
        tmp_path,
        """\
        model: {arch: UnetPlusPlus, encoder_name: resnet34, classes: 5, in_channels: 1}
        experiments:
          e:
            model: {encoder_name: resnet18}
        """,
    )
    model = resolve(path).model
    assert model.encoder_name == "resnet18"
    assert model.arch == "UnetPlusPlus"
    assert model.classes == 5
    assert model.in_channels == 1


def test_lists_replace_instead_of_merging(tmp_path):
    path = write(
        tmp_path,
        MINIMAL_MODEL
        + textwrap.dedent(
            """\
        defaults:
          train_transforms:
            - {name: resize, params: {height: 64, width: 64}}
            - {name: horizontal_flip}
          loss: [cross_entropy, dice]
        experiments:
          e:
            train_transforms:
              - {name: vertical_flip}
            loss: [focal]
          untouched: {}
        """
        ),
    )
    experiment = resolve(path)
    assert [t.name for t in experiment.train_transforms] == ["vertical_flip"]
    assert [t.name for t in experiment.loss.terms] == ["focal"]
    untouched = resolve(path, "untouched")
    assert [t.name for t in untouched.train_transforms] == ["resize", "horizontal_flip"]
    assert [t.name for t in untouched.loss.terms] == ["cross_entropy", "dice"]


def test_experiment_overrides_defaults_which_override_model(tmp_path):
    path = write(
        tmp_path,
        """\
        model: {arch: Unet, classes: 2, encoder_name: resnet34}
        defaults:
          model: {encoder_name: resnet50}
          batch_size: 4
        experiments:
          e: {batch_size: 2}
          empty:
        """,
    )
    experiment = resolve(path)
    assert experiment.model.encoder_name == "resnet50"
    assert experiment.batch_size == 2
    empty = resolve(path, "empty")
    assert empty.batch_size == 4
    assert empty.model.encoder_name == "resnet50"


def test_merged_experiment_is_plain_data(tmp_path):
    path = write(tmp_path, MINIMAL_MODEL + "defaults: {lr: 0.5}\nexperiments:\n  e: {batch_size: 3}\n")
    merged = merged_experiment(load_experiment_file(path), "e", path)
    assert merged == {"model": {"arch": "Unet", "classes": 2}, "lr": 0.5, "batch_size": 3}


def test_deep_merge_does_not_mutate_its_inputs():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    override = {"a": {"b": 2, "c": [3]}, "e": {"f": 1}}
    merged = deep_merge(base, override)
    assert merged == {"a": {"b": 2, "c": [3]}, "d": 1, "e": {"f": 1}}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    merged["e"]["f"] = 99
    assert override["e"]["f"] == 1


def test_deep_merge_dict_replaces_scalar_and_scalar_replaces_dict():
    assert deep_merge({"a": 1}, {"a": {"b": 2}}) == {"a": {"b": 2}}
    assert deep_merge({"a": {"b": 2}}, {"a": None}) == {"a": None}


# --------------------------------------------------------------------------- YAML 1.2 floats


def test_exponent_without_dot_reads_as_float(tmp_path):
    path = write(tmp_path, "a: 1e-4\nb: -2.5E+3\nc: 10\nd: val/loss\ne: '1e-4'\nf: 3E2\n")
    data = read_yaml(path)
    assert isinstance(data["a"], float)
    assert data["a"] == pytest.approx(0.0001)
    assert data["b"] == pytest.approx(-2500.0)
    assert data["f"] == pytest.approx(300.0) and isinstance(data["f"], float)
    assert data["c"] == 10 and isinstance(data["c"], int)
    assert data["d"] == "val/loss"
    assert data["e"] == "1e-4"  # quoted stays a string


def test_plain_pyyaml_would_read_exponent_as_string(tmp_path):
    # Guard for the test above: without the custom resolver the value really is a string.
    assert yaml.safe_load("a: 1e-4") == {"a": "1e-4"}


def test_exponent_float_inside_optimizer_params(tmp_path):
    path = write(
        tmp_path,
        MINIMAL_MODEL
        + textwrap.dedent(
            """\
        defaults:
          lr: 1e-4
          optimizer: {name: AdamW, params: {weight_decay: 1e-2, eps: 1e-8}}
        experiments:
          e: {}
        """
        ),
    )
    experiment = resolve(path)
    assert experiment.lr == pytest.approx(1e-4)
    params = experiment.optimizer.params
    # params is dict[str, Any]: no pydantic coercion, so this checks the YAML loader itself.
    assert isinstance(params["weight_decay"], float) and params["weight_decay"] == pytest.approx(0.01)
    assert isinstance(params["eps"], float) and params["eps"] == pytest.approx(1e-8)


# --------------------------------------------------------------------------- errors


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write(
        tmp_path,
        MINIMAL_MODEL
        + textwrap.dedent(
            """\
        experiments:
          e:
            batch_size: 4
            lr: [0.1, 0.2
          f: {}
        """
        ),
    )
    with pytest.raises(ConfigError) as info:
        load_experiment_file(path)
    message = str(info.value)
    assert "invalid YAML" in message
    # The parser notices the unterminated list where the next key begins, line 6.
    assert f"{path}:6:" in message


def test_yaml_syntax_error_on_first_lines(tmp_path):
    path = write(tmp_path, "model: {arch: Unet\nexperiments: {e: {}}\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml:\d+: invalid YAML"):
        load_experiment_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_experiment_file(tmp_path / "nope.yaml")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n"])
def test_empty_file(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="the file is empty") as info:
        load_experiment_file(path)
    assert str(path) in str(info.value)


def test_top_level_list_rejected(tmp_path):
    path = write(tmp_path, "- model\n- experiments\n")
    with pytest.raises(ConfigError, match="top level must be a mapping.*not a list"):
        load_experiment_file(path)


def test_unknown_top_level_key(tmp_path):
    path = write(tmp_path, MINIMAL_MODEL + "experiments:\n  e: {}\ndefualts: {lr: 0.1}\n")
    with pytest.raises(ConfigError) as info:
        load_experiment_file(path)
    message = str(info.value)
    assert "unknown key 'defualts'" in message
    assert "did you mean 'defaults'?" in message


def test_misspelt_experiments_block(tmp_path):
    path = write(tmp_path, MINIMAL_MODEL + "experimnts:\n  e: {}\n")
    with pytest.raises(ConfigError) as info:
        load_experiment_file(path)
    message = str(info.value)
    assert "2 problems" in message
    assert "experiments: required key is missing" in message
    assert "did you mean 'experiments'?" in message


def test_no_experiments_rejected(tmp_path):
    path = write(tmp_path, MINIMAL_MODEL + "experiments: {}\n")
    with pytest.raises(ConfigError, match="at least 1 item"):
        load_experiment_file(path)


def test_unknown_key_in_experiment_suggests_close_match(tmp_path):
    path = write(tmp_path, MINIMAL_MODEL + "experiments:\n  big-run:\n    batch_sise: 16\n")
    message = config_error(path, "big-run")
    assert "experiments.big-run.batch_sise: unknown key 'batch_sise'" in message
    assert "did you mean 'batch_size'?" in message
    assert str(path) in message


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path):
    path = write(tmp_path, MINIMAL_MODEL + "experiments:\n  e:\n    zzzzzz: 1\n")
    message = config_error(path)
    assert "experiments.e.zzzzzz: unknown key 'zzzzzz'" in message
    assert "valid options:" in message
    for key in ("batch_size", "lr", "max_epochs", "train_transforms", "optimizer", "loss", "monitor"):
        assert key in message


def test_unknown_nested_key_in_experiment(tmp_path):
    path = write(tmp_path, MINIMAL_MODEL + "experiments:\n  e:\n    early_stopping: {monitr: val/loss}\n")
    message = config_error(path)
    assert "experiments.e.early_stopping.monitr: unknown key 'monitr'" in message
    assert "did you mean 'monitor'?" in message


def test_unknown_key_in_defaults(tmp_path):
    path = write(tmp_path, MINIMAL_MODEL + "defaults:\n  max_epoch: 3\nexperiments:\n  e: {}\n")
    message = config_error(path)
    assert "defaults.max_epoch: unknown key 'max_epoch'" in message
    assert "did you mean 'max_epochs'?" in message
    assert "experiments.e.max_epoch" not in message


def test_unknown_key_in_model_block(tmp_path):
    path = write(tmp_path, "model: {arch: Unet, classes: 2, encoder: resnet18}\nexperiments:\n  e: {}\n")
    message = config_error(path)
    assert "model.encoder: unknown key 'encoder'" in message
    assert "encoder_name" in message


def test_missing_required_model_key(tmp_path):
    path = write(tmp_path, "model: {arch: Unet}\nexperiments:\n  e: {}\n")
    assert "model.classes: required key is missing" in config_error(path)


def test_wrong_type_rejected(tmp_path):
    path = write(tmp_path, MINIMAL_MODEL + "experiments:\n  e:\n    batch_size: big\n")
    message = config_error(path)
    assert "experiments.e.batch_size:" in message
    assert "valid integer" in message


@pytest.mark.parametrize(
    ("body", "field"),
    [("batch_size: 0", "batch_size"), ("lr: -1", "lr"), ("max_epochs: 0", "max_epochs"), ("lr: 0", "lr")],
)
def test_non_positive_values_rejected(tmp_path, body, field):
    path = write(tmp_path, MINIMAL_MODEL + f"experiments:\n  e:\n    {body}\n")
    message = config_error(path)
    assert f"experiments.e.{field}: Input should be greater than 0" in message


def test_all_problems_reported_at_once(tmp_path):
    path = write(tmp_path, MINIMAL_MODEL + "experiments:\n  e: {batch_size: 0, lr: -1}\n")
    message = config_error(path)
    assert "2 problems" in message
    assert "experiments.e.batch_size" in message
    assert "experiments.e.lr" in message


def test_bad_value_from_defaults_points_at_defaults(tmp_path):
    path = write(tmp_path, MINIMAL_MODEL + "defaults: {batch_size: 0}\nexperiments:\n  e: {}\n")
    assert "defaults.batch_size: Input should be greater than 0" in config_error(path)


def test_unknown_experiment_name_lists_close_matches(tmp_path):
    path = write(tmp_path, MINIMAL_MODEL + "experiments:\n  experiment-lr: {}\n  experiment-batch_size: {}\n")
    with pytest.raises(ConfigError) as info:
        resolve(path, "experiment-lrr")
    message = str(info.value)
    assert "no experiment 'experiment-lrr'" in message
    assert "did you mean 'experiment-lr'" in message


def test_unknown_experiment_name_far_from_all_lists_them(tmp_path):
    path = write(tmp_path, MINIMAL_MODEL + "experiments:\n  alpha: {}\n  beta: {}\n")
    with pytest.raises(ConfigError, match="no experiment 'zzz'; valid options: alpha, beta"):
        resolve(path, "zzz")


def test_class_weights_length_must_match_classes(tmp_path):
    path = write(
        tmp_path,
        MINIMAL_MODEL + "experiments:\n  e:\n    loss: {terms: [{name: dice}], class_weights: [1.0, 2.0, 3.0]}\n",
    )
    message = config_error(path)
    assert "loss.class_weights has 3 values but model.classes is 2" in message


def test_class_weights_matching_classes_accepted(tmp_path):
    path = write(
        tmp_path,
        MINIMAL_MODEL + "experiments:\n  e:\n    loss: {terms: [{name: dice}], class_weights: [1.0, 2.0]}\n",
    )
    assert resolve(path).loss.class_weights == [1.0, 2.0]


def test_whole_experiment_error_location_has_no_trailing_dot(tmp_path):
    path = write(
        tmp_path,
        MINIMAL_MODEL + "experiments:\n  e:\n    loss: {terms: [{name: dice}], class_weights: [1.0, 2.0, 3.0]}\n",
    )
    message = config_error(path)
    assert "experiments.e.:" not in message
    assert "experiments.e: loss.class_weights has 3 values" in message


def test_command_line_override_rejected_with_its_origin(tmp_path):
    path = write(tmp_path, MINIMAL_MODEL + "experiments:\n  e: {max_epochs: 5}\n")
    message = config_error(path, overrides={"max_epochs": 0})
    assert "command-line option max_epochs" in message
    assert "greater than 0" in message
    assert "experiments.e.max_epochs" not in message


def test_nested_command_line_override_rejected(tmp_path):
    path = write(tmp_path, MINIMAL_MODEL + "experiments:\n  e: {early_stopping: {patience: 2}}\n")
    message = config_error(path, overrides={"early_stopping.patience": -1})
    assert "command-line option early_stopping.patience" in message


def test_valid_command_line_overrides_applied(tmp_path):
    defaults = "defaults: {optimizer: {name: SGD, params: {momentum: 0.9}}}\n"
    path = write(tmp_path, MINIMAL_MODEL + defaults + "experiments:\n  e: {}\n")
    experiment = resolve(path, overrides={"batch_size": 3, "optimizer.params.nesterov": True, "model.classes": 4})
    assert experiment.batch_size == 3
    assert experiment.optimizer.name == "SGD"
    assert experiment.optimizer.params == {"momentum": 0.9, "nesterov": True}
    assert experiment.model.classes == 4
    assert experiment.model.arch == "Unet"


def test_config_error_is_a_user_error_with_exit_code(tmp_path):
    from segcli.errors import SegcliError

    path = write(tmp_path, "")
    with pytest.raises(SegcliError) as info:
        load_experiment_file(path)
    assert isinstance(info.value, ConfigError)
    assert info.value.exit_code == 2


# --------------------------------------------------------------------------- loss and monitor shorthands


def test_loss_single_name_shorthand(tmp_path):
    path = write(tmp_path, MINIMAL_MODEL + "experiments:\n  e: {loss: dice}\n")
    loss = resolve(path).loss
    assert [(t.name, t.weight, t.params) for t in loss.terms] == [("dice", 1.0, {})]
    assert loss.class_weights is None


def test_loss_list_shorthand(tmp_path):
    path = write(tmp_path, MINIMAL_MODEL + "experiments:\n  e: {loss: [cross_entropy, dice]}\n")
    loss = resolve(path).loss
    assert [(t.name, t.weight) for t in loss.terms] == [("cross_entropy", 1.0), ("dice", 1.0)]


def test_loss_list_mixes_names_and_terms(tmp_path):
    path = write(
        tmp_path,
        MINIMAL_MODEL + "experiments:\n  e: {loss: [dice, {name: focal, weight: 0.5, params: {gamma: 2}}]}\n",
    )
    terms = resolve(path).loss.terms
    assert [(t.name, t.weight, t.params) for t in terms] == [("dice", 1.0, {}), ("focal", 0.5, {"gamma": 2})]


def test_loss_full_form(tmp_path):
    path = write(
        tmp_path,
        MINIMAL_MODEL
        + textwrap.dedent(
            """\
        experiments:
          e:
            loss:
              terms:
                - {name: cross_entropy, weight: 2.0}
                - {name: dice, params: {smooth: 1e-3}}
              class_weights: [0.25, 4]
        """
        ),
    )
    loss = resolve(path).loss
    assert [(t.name, t.weight) for t in loss.terms] == [("cross_entropy", 2.0), ("dice", 1.0)]
    assert loss.terms[1].params == {"smooth": pytest.approx(1e-3)}
    assert loss.class_weights == [0.25, 4.0]


def test_default_loss_is_cross_entropy_plus_dice(tmp_path):
    path = write(tmp_path, MINIMAL_MODEL + "experiments:\n  e: {}\n")
    terms = resolve(path).loss.terms
    assert [(t.name, t.weight) for t in terms] == [("cross_entropy", 1.0), ("dice", 1.0)]


@pytest.mark.parametrize("body", ["loss: []", "loss: {terms: []}", "loss: [{name: dice, weight: 0}]"])
def test_invalid_loss_rejected(tmp_path, body):
    path = write(tmp_path, MINIMAL_MODEL + f"experiments:\n  e:\n    {body}\n")
    assert "experiments.e.loss" in config_error(path)


@pytest.mark.parametrize(("metric", "mode"), [("val/loss", "min"), ("train/loss", "min"), ("val/mIoU", "max")])
def test_monitor_string_shorthand_infers_mode(tmp_path, metric, mode):
    path = write(tmp_path, MINIMAL_MODEL + f"experiments:\n  e: {{monitor: {metric}}}\n")
    monitor = resolve(path).monitor
    assert monitor.metric == metric
    assert monitor.mode == mode


def test_monitor_default_and_explicit_mode(tmp_path):
    path = write(tmp_path, MINIMAL_MODEL + "experiments:\n  e: {}\n  f: {monitor: {metric: val/loss, mode: max}}\n")
    default = resolve(path).monitor
    assert (default.metric, default.mode) == ("val/mIoU", "max")
    explicit = resolve(path, "f").monitor
    assert (explicit.metric, explicit.mode) == ("val/loss", "max")


@pytest.mark.parametrize(("metric", "mode"), [("val/loss", "min"), ("val/mIoU", "max"), ("val/mDCC", "max")])
def test_early_stopping_mode_inferred(tmp_path, metric, mode):
    path = write(tmp_path, MINIMAL_MODEL + f"experiments:\n  e: {{early_stopping: {{monitor: {metric}}}}}\n")
    early = resolve(path).early_stopping
    assert early is not None
    assert early.monitor == metric
    assert early.mode == mode
    assert early.patience == 3


def test_early_stopping_explicit_mode_kept(tmp_path):
    path = write(tmp_path, MINIMAL_MODEL + "experiments:\n  e: {early_stopping: {monitor: val/loss, mode: max}}\n")
    assert resolve(path).early_stopping.mode == "max"


def test_early_stopping_bad_mode_rejected(tmp_path):
    path = write(tmp_path, MINIMAL_MODEL + "experiments:\n  e: {early_stopping: {mode: maximum}}\n")
    message = config_error(path)
    assert "experiments.e.early_stopping.mode" in message


def test_precision_integer_read_as_text(tmp_path):
    path = write(tmp_path, MINIMAL_MODEL + "experiments:\n  e: {precision: 32}\n  f: {precision: 16}\n")
    assert resolve(path).precision == "32"
    assert "experiments.f.precision" in config_error(path, "f")


# --------------------------------------------------------------------------- flatten


def test_flatten_nested_dicts():
    data = {"a": {"b": 1, "c": {"d": [1, 2], "e": None}}, "f": 2, "g": {}}
    assert flatten(data) == {"a.b": 1, "a.c.d": [1, 2], "a.c.e": None, "f": 2, "g": {}}


def test_flatten_with_prefix_and_empty():
    assert flatten({}) == {}
    assert flatten({"x": {"y": 1}}, prefix="p.") == {"p.x.y": 1}


def test_flatten_keeps_lists_of_dicts_whole():
    transforms = [{"name": "resize", "params": {"height": 8}}]
    assert flatten({"train_transforms": transforms}) == {"train_transforms": transforms}


def test_a_label_map_beyond_16_bits_is_refused(tmp_path):
    """Masks are 8- or 16-bit images: the label-map table is uint16, so a larger value would wrap silently."""
    path = write(tmp_path, MINIMAL_MODEL + "experiments:\n  e:\n    label_map: {255: 70000}\n")
    message = config_error(path)
    assert "experiments.e.label_map" in message and "70000 is not a label" in message and "0..65535" in message


KEYS = """
model: {arch: Unet, encoder_name: resnet18, encoder_weights: null, classes: 4}
defaults: {batch_size: 4, max_epochs: 2}
experiments:
  e: {}
"""


# --------------------------------------------------------------------------- key paths (--set, tune's search block)


@pytest.mark.parametrize(
    "loss",
    ["", "    loss: [cross_entropy, dice]\n", "    loss: {terms: [{name: cross_entropy}, {name: dice, weight: 3}]}\n"],
)
def test_a_key_path_steps_into_the_loss_terms_whatever_form_they_are_written_in(tmp_path, loss):
    """`loss.terms.1.weight` used to crash `--set` (a list has no keys) or to replace the default loss."""
    path = write(tmp_path, KEYS.replace("experiments:\n  e: {}", "experiments:\n  e:\n" + (loss or "    {}\n")))
    experiment = resolve_experiment(load_experiment_file(path), "e", path, {"loss.terms.1.weight": 0.25})
    assert [(term.name, term.weight) for term in experiment.loss.terms] == [("cross_entropy", 1.0), ("dice", 0.25)]


def test_a_key_inside_a_block_written_short_expands_it(tmp_path):
    path = write(tmp_path, KEYS.replace("max_epochs: 2}", "max_epochs: 2, monitor: val/loss}"))
    experiment = resolve_experiment(load_experiment_file(path), "e", path, {"monitor.mode": "max"})
    assert (experiment.monitor.metric, experiment.monitor.mode) == ("val/loss", "max")


def test_a_key_path_through_a_plain_value_is_an_error_not_a_crash(tmp_path):
    """It used to end in a TypeError traceback."""
    path = write(tmp_path, KEYS.replace("max_epochs: 2}", "max_epochs: 2, lr: 0.001}"))
    message = config_error(path, overrides={"lr.x": 1})
    assert message == f"{path}: command-line option lr.x: lr is 0.001, not a block of keys"


def test_one_problem_is_one_line(tmp_path):
    path = write(tmp_path, KEYS)
    assert config_error(path, overrides={"max_epochs": 0}) == (
        f"{path}: command-line option max_epochs: Input should be greater than 0"
    )
