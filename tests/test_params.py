"""params.yaml is read and validated once, with errors that name the key."""
import dataclasses
import re
import typing
from pathlib import Path

import pytest

from typing import Literal

from tsloc.params import ParamsError
from tsloc.params import Params, Tracked, leaf_keys, load_params, uses_cached_features


def _owner(key):
    """The params dataclass that holds a dotted key's leaf."""
    cls = Params
    for part in key.split(".")[:-1]:
        cls = type(getattr(cls(), part))
    return cls


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
    ("model: {box_head: grid}", "model.box_head must be one of pooled, spatial, got 'grid'"),
    ("train: {augment: {recrop: 1.5}}", "train.augment.recrop must be in [0, 1]"),
    ("train: {augment: {erase: -0.1}}", "train.augment.erase must be in [0, 1]"),
    ("train: {colour: 1}", "'train.colour' is an unknown key (known under 'train': lr, epochs"),
    ("train: {lrr: 0.1}", "'train.lrr' is an unknown key, did you mean train.lr?"),
    ("dat: {source: local}", "'dat' is an unknown key, did you mean data?"),
    ("train: {seed: -1}", "train.seed must be >= 0"),
    ("split: {seed: -3}", "split.seed must be >= 0"),
    ("train: {lr: -1e-3}", "train.lr must be > 0"),
    ("train: {backbone_lr: -0.5}", "train.backbone_lr must be > 0"),
    ("model: {finetune_blocks: -2}", "model.finetune_blocks must be >= -1 (-1: all of it, 0: frozen"),
    ("train: {lr: 1e-3", "params.yaml: not valid YAML"),
    ("train: {start_size: 160}", "train.start_size must be 0 (off) or from 32 to data.image_size (128), got 160"),
    ("train: {start_size: 16, augment: {enabled: true}}", "train.start_size must be 0 (off) or from 32"),
    ("train: {start_size: 96}", "train.start_size (progressive resizing) needs the image path"),
    ("train: {eval_every: 0}", "train.eval_every must be >= 1"),
    ("train: {ema_decay: 1.0}", "train.ema_decay must be in [0, 1), got 1.0"),
    ("train: {processes: 3}", "train.processes must divide train.batch_size"),
    ("train: {device: gpu}", "train.device must be auto, cpu, cuda or cuda:N"),
    ("detect: {min_score: often}", "'detect.min_score' must be auto or a number, got 'often'"),
    ("detect: {min_probability: 1.5}", "detect.min_probability must be in [0, 1], got 1.5"),
    ("split: {folds: 1}", "split.folds must be 0 (off) or at least 2"),
    ("model: {backbone: convnet}", "model.backbone convnet has no ImageNet weights: set model.weights to none"),
    ("split: {folds: 3, fold: 3}", "got folds=3, fold=3"),
    ("split: {folds: 3, strategy: notebook}", "strategy='notebook'"),
])
def test_bad_values_name_the_key(tmp_path, text, message):
    with pytest.raises(ParamsError) as err:
        load_params(_write(tmp_path, text))
    assert message in str(err.value)


def _declared(cls, prefix=""):
    """(dotted key, field) of every leaf field, as params.yaml spells it."""
    for f in dataclasses.fields(cls):
        default = getattr(cls(), f.name)
        if dataclasses.is_dataclass(default):
            yield from _declared(type(default), f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


def _yaml(key, value):
    *path, leaf = key.split(".")
    text = f"{leaf}: {value}"
    for part in reversed(path):
        text = f"{part}: {{{text}}}"
    return text


@pytest.mark.parametrize("key, field", [kf for kf in _declared(Params) if kf[1].metadata or
                                        typing.get_origin(typing.get_type_hints(_owner(kf[0]))[kf[1].name]) is Literal],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_each_fields_declared_choices_and_range_are_enforced(tmp_path, key, field):
    """A value outside a field's Literal choices or its declared range is refused with the key's name;
    the default and the declared bounds themselves are accepted."""
    hint = typing.get_type_hints(_owner(key))[field.name]
    if typing.get_origin(hint) is Literal:
        with pytest.raises(ParamsError, match=re.escape(f"{key} must be one of {', '.join(typing.get_args(hint))}")):
            load_params(_write(tmp_path, _yaml(key, "no-such-choice")))
        return
    meta = field.metadata
    below = meta["ge"] - 1 if meta["ge"] is not None else meta["gt"] if meta["gt"] is not None else None
    above = meta["le"] + 1 if meta["le"] is not None else meta["lt"] if meta["lt"] is not None else None
    for bad in (v for v in (below, above) if v is not None):
        with pytest.raises(ParamsError, match=re.escape(f"{key} must be ")):
            load_params(_write(tmp_path, _yaml(key, bad)))
    for bound in (meta[k] for k in ("ge", "le") if meta[k] is not None):
        assert load_params(_write(tmp_path, _yaml(key, bound))) is not None


def test_tracked_records_only_keys_read():
    t = Tracked(Params())
    _ = t.train.lr, t.model.box_head
    assert t.keys_read == {"train.lr", "model.box_head"}
    with pytest.raises(AttributeError):
        t.train.lr = 1.0


def test_start_size_accepted_on_the_image_path(tmp_path):
    p = load_params(_write(tmp_path, "data: {image_size: 144}\ntrain: {start_size: 112, augment: {enabled: true}}"))
    assert p.train.start_size == 112


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
