"""Recipes: one TOML file per checkpoint in mobilekit/recipes/ (id = file stem).

They ship inside the package so an installed mobilekit finds them without a source tree.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from types import MappingProxyType

from mobilekit.errors import RecipeError, UnknownNameError

_KNOWN_KEYS = {
    "name", "family", "repo", "revision", "default_checkpoint", "max_seq_len",
    "default_quant", "budgets", "license", "stop_strings", "notes",
}


@dataclass(frozen=True)
class Recipe:
    id: str
    name: str
    family: str
    repo: str  # Hugging Face repo id
    revision: str  # pinned commit
    license: str
    max_seq_len: int
    # target name -> default quant scheme
    default_quant: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    # scheme -> {metric: bound}, overriding the scheme's default budget for this model
    budgets: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    # Where weights come from when --checkpoint is not given: "embedded" or the hub.
    default_checkpoint: str = ""
    stop_strings: tuple[str, ...] = ()
    notes: str = ""

    def __post_init__(self):
        from mobilekit import families, quantize, targets

        if self.family not in families.names():
            raise RecipeError(f"recipe {self.id}: family {self.family!r} is not one of {families.names()}")
        if "/" not in self.repo:
            raise RecipeError(f"recipe {self.id}: repo {self.repo!r} must be owner/name")
        if not self.revision:
            raise RecipeError(f"recipe {self.id}: revision must pin a commit of {self.repo}")
        if not 16 <= self.max_seq_len <= 131072:
            raise RecipeError(f"recipe {self.id}: max_seq_len {self.max_seq_len} must be in 16..131072")
        for target, scheme in self.default_quant.items():
            if target not in targets.names():
                raise RecipeError(f"recipe {self.id}: default_quant names unknown target {target!r}")
            if scheme not in targets.get(target).schemes:
                raise RecipeError(
                    f"recipe {self.id}: default_quant.{target} = {scheme!r}, "
                    f"but {target} offers {', '.join(targets.get(target).schemes)}"
                )
        for scheme, bounds in self.budgets.items():
            quantize.budget_for(scheme).with_overrides(bounds)  # raises on unknown names

    @property
    def checkpoint_source(self) -> str:
        return self.default_checkpoint or f"{self.repo}@{self.revision}"


def names() -> list[str]:
    return sorted(p.name.removesuffix(".toml") for p in _recipe_dir().iterdir() if p.name.endswith(".toml"))


def get(recipe_id: str) -> Recipe:
    if recipe_id not in names():
        raise UnknownNameError("recipe", recipe_id, names())
    return _load(recipe_id)


def all_recipes() -> list[Recipe]:
    return [get(n) for n in names()]


def _recipe_dir():
    return resources.files("mobilekit") / "recipes"


@cache
def _load(recipe_id: str) -> Recipe:
    text = (_recipe_dir() / f"{recipe_id}.toml").read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"recipe {recipe_id}.toml is not valid TOML: {e}") from e
    return from_dict(recipe_id, data)


def from_dict(recipe_id: str, data: dict) -> Recipe:
    unknown = set(data) - _KNOWN_KEYS
    if unknown:
        raise RecipeError(f"recipe {recipe_id}: unknown keys {sorted(unknown)}; known: {sorted(_KNOWN_KEYS)}")
    missing = {"name", "family", "repo", "revision", "license", "max_seq_len"} - set(data)
    if missing:
        raise RecipeError(f"recipe {recipe_id}: missing keys {sorted(missing)}")
    return Recipe(
        id=recipe_id,
        name=data["name"],
        family=data["family"],
        repo=data["repo"],
        revision=data["revision"],
        license=data["license"],
        max_seq_len=int(data["max_seq_len"]),
        default_quant=MappingProxyType(dict(data.get("default_quant", {}))),
        budgets=MappingProxyType({k: dict(v) for k, v in data.get("budgets", {}).items()}),
        default_checkpoint=data.get("default_checkpoint", ""),
        stop_strings=tuple(data.get("stop_strings", ())),
        notes=data.get("notes", ""),
    )
