"""params.yaml is read and validated once, with errors that name the key."""
import dataclasses
from pathlib import Path

import pytest

from tsloc.params import ParamsError
from tsloc.params import Params, Tracked, leaf_keys, load_params, uses_cached_features


def _write(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_repository_params_are_the_defaults():
    # params.yaml documents every key; a key missing there would silently take a default.
    import yaml
    raw = yaml.safe_load(Path("params.yaml").read_text())
    assert load_params("params.yaml") == Params()
    fields = leaf_keys(dataclasses.asdict(Params()))
    assert leaf_keys(raw) == fields


@pytest.mark.parametrize("text, message", [
    ("train: {box_weights: inverse-ish}", "train.box_weights must be one of same, inverse, sqrt, none"),
    ("train: {keep: final}", "train.keep must be one of best, last"),
    ("train: {class_weights: 2}", "'train.class_weights' must be a string"),
    ("train: {epochs: 2.5}", "'train.epochs' must be an integer"),
    ("train: {lr: 0}", "train.lr must be > 0"),
    ("model: {box_head: grid}", "model.box_head must be pooled or spatial"),
    ("train: {augment: {recrop: 1.5}}", "train.augment.recrop must be in [0, 1]"),
    ("train: {colour: 1}", "'train.colour' is an unknown key (known under 'train': lr, epochs"),
    ("train: {lrr: 0.1}", "'train.lrr' is an unknown key, did you mean train.lr?"),
    ("dat: {source: local}", "'dat' is an unknown key, did you mean data?"),
    ("train: {seed: -1}", "train.seed must be >= 0"),
    ("split: {seed: -3}", "split.seed must be >= 0"),
    ("train: {lr: -1e-3}", "train.lr must be > 0"),
    ("train: {backbone_lr: -0.5}", "train.backbone_lr must be > 0"),
    ("model: {finetune_blocks: -2}", "model.finetune_blocks must be -1 (all), 0 (frozen)"),
    ("train: {lr: 1e-3", "params.yaml: not valid YAML"),
    ("train: {start_size: 160}", "train.start_size must be 0 (off) or from 32 to data.image_size (128), got 160"),
    ("train: {start_size: 16, augment: {enabled: true}}", "train.start_size must be 0 (off) or from 32"),
    ("train: {start_size: 96}", "train.start_size (progressive resizing) needs the image path"),
    ("train: {eval_every: 0}", "train.eval_every must be >= 1"),
    ("train: {ema_decay: 1.0}", "train.ema_decay in [0, 1)"),
    ("split: {folds: 1}", "split.folds must be 0 (off) or at least 2"),
    ("split: {folds: 3, fold: 3}", "got folds=3, fold=3"),
    ("split: {folds: 3, strategy: notebook}", "strategy='notebook'"),
])
def test_bad_values_name_the_key(tmp_path, text, message):
    with pytest.raises(ParamsError) as err:
        load_params(_write(tmp_path, text))
    assert message in str(err.value)


def test_box_weights_default_and_override(tmp_path):
    assert load_params(_write(tmp_path, "{}")).train.box_weights == "same"
    assert load_params(_write(tmp_path, "train: {box_weights: none}")).train.box_weights == "none"


def test_tracked_records_only_keys_read():
    t = Tracked(Params())
    _ = t.train.lr, t.model.box_head
    assert t.keys_read == {"train.lr", "model.box_head"}
    with pytest.raises(AttributeError):
        t.train.lr = 1.0


def test_start_size_accepted_on_the_image_path(tmp_path):
    p = load_params(_write(tmp_path, "data: {image_size: 144}\ntrain: {start_size: 112, augment: {enabled: true}}"))
    assert p.train.start_size == 112 and Params().train.start_size == 0


@pytest.mark.parametrize("text, cached", [
    ("", True),  # the notebook's configuration
    ("model: {finetune_blocks: 2}", False),
    ("train: {augment: {enabled: true}}", False),
    ("model: {box_head: spatial}", False),
])
def test_cached_features_only_for_frozen_unaugmented_pooled(tmp_path, text, cached):
    assert uses_cached_features(load_params(_write(tmp_path, text))) is cached


@pytest.mark.parametrize("text, value", [("1e-3", 0.001), ("5E-4", 0.0005), ("2.5e+1", 25.0), (".5", 0.5), ("1.0e-3", 0.001)])
def test_numbers_in_exponent_form_are_numbers(tmp_path, text, value):
    """YAML 1.2 (as DVC reads params.yaml): `1e-3` is a float, not the string PyYAML's YAML 1.1 makes of it."""
    assert load_params(_write(tmp_path, f"train: {{lr: {text}}}")).train.lr == value


def test_strings_that_look_like_versions_stay_strings(tmp_path):
    assert load_params(_write(tmp_path, "model: {weights: 1.2.3}")).model.weights == "1.2.3"
