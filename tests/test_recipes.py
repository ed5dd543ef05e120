"""Named recipes: conf/config.yaml composed with conf/recipe/<name>.yaml by DVC's Hydra support, as
`dvc exp run -S recipe=<name>` does (DVC's own compose_and_dump)."""
from __future__ import annotations

import pytest
import yaml

from conftest import REPO, compose
from tsloc.params import flatten, load_params

RECIPES = sorted((REPO / "conf" / "recipe").glob("*.yaml"))


def _base() -> dict:
    base = yaml.safe_load((REPO / "conf" / "config.yaml").read_text())
    base.pop("defaults")
    return base


def test_params_yaml_is_the_default_composition(tmp_path):
    """`dvc repro` reads params.yaml as committed; `dvc exp run` recomposes it: they must agree, to the byte."""
    composed = compose(tmp_path / "params.yaml", REPO / "conf", [])
    assert (tmp_path / "params.yaml").read_text() == (REPO / "params.yaml").read_text()
    assert composed["recipe"] == "notebook" and composed == _base()


def test_recipes_exist():
    assert {p.stem for p in RECIPES} >= {"notebook", "best", "small"}


def _own(recipe) -> dict:
    """A recipe's keys over those of the recipes it extends (its Hydra `defaults`: small extends best)."""
    raw = yaml.safe_load(recipe.read_text())
    own = {}
    for parent in raw.pop("defaults", []):
        own.update(_own(recipe.parent / f"{parent}.yaml"))
    return own | flatten(raw)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_a_recipe_sets_exactly_its_params(tmp_path, recipe):
    own = _own(recipe)
    base = flatten(_base())
    assert own["recipe"] == recipe.stem  # the name dvc exp show / params diff display is the file's
    assert set(own) <= set(base), f"{recipe.name} sets keys the base config does not have: {set(own) - set(base)}"
    composed = flatten(compose(tmp_path / "params.yaml", REPO / "conf", [f"recipe={recipe.stem}"]))
    assert composed == {**base, **own}  # the recipe's keys take its values; every other key keeps the base's
    load_params(tmp_path / "params.yaml")  # and the result is valid


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_a_recipe_leaves_the_data_choice_alone(tmp_path, recipe):
    """A recipe says how to train, not on what: the data set stays one -S away whatever the recipe."""
    base = load_params(REPO / "params.yaml")
    p = load_params_from(tmp_path, [f"recipe={recipe.stem}", "data.source=local", "data.path=../somewhere"])
    assert (p.data.source, p.data.path, p.data.format) == ("local", "../somewhere", base.data.format)
    assert load_params_from(tmp_path, [f"recipe={recipe.stem}"]).data.source == base.data.source


def test_set_flags_apply_after_the_recipe(tmp_path):
    p = load_params_from(tmp_path, ["recipe=best", "train.seed=3", "data.source=local", "data.path=../belgiumtsc"])
    assert (p.recipe, p.train.seed, p.data.source, p.data.path, p.train.epochs) == ("best", 3, "local",
                                                                                    "../belgiumtsc", 18)


def test_notebook_recipe_is_the_default(tmp_path):
    assert load_params_from(tmp_path, ["recipe=notebook"]) == load_params(REPO / "params.yaml")


def load_params_from(tmp_path, overrides):
    compose(tmp_path / "params.yaml", REPO / "conf", overrides)
    return load_params(tmp_path / "params.yaml")
