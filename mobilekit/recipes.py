"""Recipes: one TOML file per checkpoint in mobilekit/recipes/ (id = file stem).

They ship inside the package so an installed mobilekit finds them without a source tree.

Each recipe pins a hub commit and stores, in its [config] table, the architecture-relevant
keys of that commit's config.json. `mobilekit info` builds the DecoderSpec from that table
without any network access, and `check_config` compares a downloaded config.json against it,
so a wrong snapshot fails loudly instead of silently producing a different spec.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Mapping

from mobilekit import families, quantize, targets
from mobilekit.checkpoint_config import spec_from_config
from mobilekit.errors import CheckpointError, RecipeError, UnknownNameError

_KNOWN_KEYS = {
    "name", "family", "repo", "revision", "default_checkpoint", "max_seq_len",
    "default_quant", "auto_goal", "budgets", "license", "stop_strings", "notes",
    "config", "special_ids", "chat_template", "tokenizer",
}
# [tokenizer]: where the tokenizer comes from when the checkpoint ships none (OpenELM).
_TOKENIZER_KEYS = {"repo", "revision", "files", "sha256", "config", "notes"}
# Where bos/eos ids come from: "config" (config.json's eos_token_id, plus the tokenizer's
# eos) or "tokenizer" (the tokenizer's alone: Fox-1's config.json has bos/eos swapped
# against its Gemma tokenizer, ARCHITECTURES.md §1).
SPECIAL_IDS = ("config", "tokenizer")
# TOML has no null: the [config] table lists the keys whose config.json value is null here.
NULL_KEYS = "_null"


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
    # target -> {"max_size": "120MB"} or {"max_ppl_increase": 5}: the goal of --quant auto when
    # the command line gives none (what lets default_quant name auto)
    auto_goal: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    # scheme -> {metric: bound}, overriding the scheme's default budget for this model
    budgets: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    # Where weights come from when --checkpoint is not given: "embedded" or the hub.
    default_checkpoint: str = ""
    stop_strings: tuple[str, ...] = ()
    notes: str = ""
    # Architecture-relevant keys of config.json at `revision` (None = JSON null).
    config: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    special_ids: str = "config"
    # A Jinja chat template (the format of tokenizer_config.json's chat_template) for
    # checkpoints whose tokenizer has none, e.g. LaMini's Alpaca wrapper.
    chat_template: str = ""
    # repo, revision (pinned commit), files, sha256 {file: digest}, config (written as
    # tokenizer_config.json): for checkpoints whose repo has no tokenizer (OpenELM)
    tokenizer: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self):
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
            if scheme not in targets.get(target).offered_schemes():
                raise RecipeError(
                    f"recipe {self.id}: default_quant.{target} = {scheme!r}, "
                    f"but {target} offers {', '.join(targets.get(target).offered_schemes())}"
                )
            if scheme in quantize.GOAL_SCHEMES and target not in self.auto_goal:
                raise RecipeError(f"recipe {self.id}: default_quant.{target} = {scheme!r} needs [auto_goal.{target}]")
        for target in self.auto_goal:
            self.goal_for(target)  # raises on a bad table
        for scheme, bounds in self.budgets.items():
            quantize.budget_for(scheme).with_overrides(bounds)  # raises on unknown names
        if self.special_ids not in SPECIAL_IDS:
            raise RecipeError(
                f"recipe {self.id}: special_ids {self.special_ids!r} must be one of {', '.join(SPECIAL_IDS)}"
            )
        if self.tokenizer:
            self._check_tokenizer_table()
        if self.config:
            claimed = families.for_architecture(self.config.get("architectures"), self.config.get("model_type"))
            if claimed.name != self.family:
                raise RecipeError(
                    f"recipe {self.id}: [config] describes a {claimed.name} checkpoint "
                    f"({self.config.get('architectures')}), but family is {self.family!r}"
                )

    def goal_for(self, target: str):
        """[auto_goal.TARGET] as a quantize.Goal, or None."""
        table = self.auto_goal.get(target)
        if table is None:
            return None
        if target not in _target_names() or set(table) - {"max_size", "max_ppl_increase"} or len(table) != 1:
            raise RecipeError(f"recipe {self.id}: [auto_goal.{target}] must name a target and hold one of "
                              "max_size = \"110MB\" or max_ppl_increase = 5")
        try:
            return quantize.Goal(quantize.parse_size(table["max_size"]) if "max_size" in table else None,
                                  table.get("max_ppl_increase"))
        except Exception as e:
            raise RecipeError(f"recipe {self.id}: [auto_goal.{target}]: {e}") from e

    def _check_tokenizer_table(self):
        table = self.tokenizer
        unknown = set(table) - _TOKENIZER_KEYS
        if unknown:
            raise RecipeError(f"recipe {self.id}: [tokenizer] has unknown keys {sorted(unknown)}; "
                              f"known: {sorted(_TOKENIZER_KEYS)}")
        missing = {"repo", "revision", "files"} - set(table)
        if missing:
            raise RecipeError(f"recipe {self.id}: [tokenizer] lacks {sorted(missing)}")
        if "/" not in table["repo"] or not table["revision"]:
            raise RecipeError(f"recipe {self.id}: [tokenizer] needs repo owner/name and a pinned revision")
        unlisted = set(table.get("sha256", {})) - set(table["files"])
        if unlisted:
            raise RecipeError(f"recipe {self.id}: [tokenizer] sha256 names files not in files: {sorted(unlisted)}")

    @property
    def checkpoint_source(self) -> str:
        return self.default_checkpoint or f"{self.repo}@{self.revision}"

    def spec(self):
        """The DecoderSpec of the pinned checkpoint, from the stored [config] (no network)."""
        if not self.config:
            raise RecipeError(f"recipe {self.id} has no [config] table to build a spec from")
        try:
            return spec_from_config(dict(self.config), f"recipe {self.id}'s [config]")
        except CheckpointError as e:  # the recipe's copy of config.json is at fault
            raise RecipeError(str(e)) from e


def check_config(recipe: Recipe, downloaded: Mapping) -> None:
    """Raise CheckpointError if a downloaded config.json disagrees with the recipe's stored
    [config] on any key the recipe stores, naming every differing key. A missing key counts
    as null. Call it on the config.json of the snapshot an export is about to use."""
    differing = []
    for key, want in recipe.config.items():
        got = downloaded.get(key)
        if not _same(want, got):
            shown = "(missing)" if key not in downloaded else repr(got)
            differing.append(f"{key}: recipe {want!r}, checkpoint {shown}")
    if differing:
        raise CheckpointError(
            f"the config.json of {recipe.repo}@{recipe.revision} does not match recipe {recipe.id} on "
            f"{len(differing)} key(s): " + "; ".join(differing) + ". The snapshot is not the pinned checkpoint "
            "(or the recipe's [config] is wrong): re-download it, or fix the recipe's revision and [config]."
        )


def check_checkpoint(recipe: Recipe, checkpoint) -> None:
    """check_config on a resolved checkpoint.Checkpoint when it is the recipe's pinned hub
    snapshot (source kind "hub", same repo and revision). Other sources (the embedded GGUF,
    whose config transformers rebuilds from GGUF metadata; local folders; another repo or
    revision given with --checkpoint) are the user's choice and are not compared."""
    source = checkpoint.source
    if source.get("kind") == "hub" and source.get("repo") == recipe.repo and source.get("revision") == recipe.revision:
        check_config(recipe, checkpoint.config)


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b if isinstance(a, bool) and isinstance(b, bool) else False
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        # float32 round trips (1e-05 -> 9.99999974e-06) are the same value
        return a == b or math.isclose(a, b, rel_tol=1e-6, abs_tol=0.0)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


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
    return parse(recipe_id, (_recipe_dir() / f"{recipe_id}.toml").read_text(encoding="utf-8"))


def _target_names() -> list[str]:
    return targets.names()


def parse(recipe_id: str, text: str) -> Recipe:
    """A recipe from its TOML text, or a RecipeError naming the recipe and the fault."""
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
    _check_types(recipe_id, data)
    return Recipe(
        id=recipe_id,
        name=data["name"],
        family=data["family"],
        repo=data["repo"],
        revision=data["revision"],
        license=data["license"],
        max_seq_len=int(data["max_seq_len"]),
        default_quant=MappingProxyType(dict(data.get("default_quant", {}))),
        auto_goal=MappingProxyType({k: dict(v) for k, v in data.get("auto_goal", {}).items()}),
        budgets=MappingProxyType({k: dict(v) for k, v in data.get("budgets", {}).items()}),
        default_checkpoint=data.get("default_checkpoint", ""),
        stop_strings=tuple(data.get("stop_strings", ())),
        notes=data.get("notes", ""),
        config=MappingProxyType(_config_table(recipe_id, data.get("config", {}))),
        special_ids=data.get("special_ids", "config"),
        chat_template=data.get("chat_template", ""),
        tokenizer=MappingProxyType(dict(data.get("tokenizer", {}))),
    )


# key -> (what it must be, check): TOML gives any type anywhere; each must be what Recipe reads.
def _str_table(v) -> bool:
    return isinstance(v, Mapping) and all(isinstance(x, str) for x in v.values())


_TYPES = {
    **{k: ("a string", lambda v: isinstance(v, str)) for k in (
        "name", "family", "repo", "revision", "license", "default_checkpoint", "notes", "special_ids",
        "chat_template")},
    "max_seq_len": ("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "default_quant": ("a table of target = scheme strings", _str_table),
    "auto_goal": ("a table of [auto_goal.TARGET] tables", lambda v: isinstance(v, Mapping) and all(
        isinstance(t, Mapping) for t in v.values())),
    "budgets": ("a table of [budgets.SCHEME] tables of metric = number", lambda v: isinstance(v, Mapping) and all(
        isinstance(b, Mapping) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in b.values())
        for b in v.values())),
    "stop_strings": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
    "config": ("a table", lambda v: isinstance(v, Mapping)),
    "tokenizer": ("a table", lambda v: isinstance(v, Mapping)),
}
_TOKENIZER_TYPES = {
    "repo": ("a string", lambda v: isinstance(v, str)), "revision": ("a string", lambda v: isinstance(v, str)),
    "files": ("a list of file names", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
    "sha256": ("a table of file = digest strings", _str_table), "config": ("a table", lambda v: isinstance(v, Mapping)),
    "notes": ("a string", lambda v: isinstance(v, str)),
}


def _check_types(recipe_id: str, data: Mapping) -> None:
    for key, (what, ok) in _TYPES.items():
        if key in data and not ok(data[key]):
            raise RecipeError(f"recipe {recipe_id}: {key} must be {what}, not {data[key]!r:.80}")
    for key, (what, ok) in _TOKENIZER_TYPES.items():
        table = data.get("tokenizer", {})
        if key in table and not ok(table[key]):
            raise RecipeError(f"recipe {recipe_id}: [tokenizer] {key} must be {what}, not {table[key]!r:.80}")
    config = data.get("config", {})
    architectures, model_type = config.get("architectures"), config.get("model_type")
    if architectures is not None and not (isinstance(architectures, list)
                                          and all(isinstance(a, str) for a in architectures)):
        raise RecipeError(f"recipe {recipe_id}: [config] architectures must be a list of class names")
    if model_type is not None and not isinstance(model_type, str):
        raise RecipeError(f"recipe {recipe_id}: [config] model_type must be a string")
    nulls = config.get(NULL_KEYS, [])
    if not (isinstance(nulls, list) and all(isinstance(k, str) for k in nulls)):
        raise RecipeError(f"recipe {recipe_id}: [config] {NULL_KEYS} must be a list of key names")


def _config_table(recipe_id: str, table: Mapping) -> dict:
    if not isinstance(table, Mapping):
        raise RecipeError(f"recipe {recipe_id}: [config] must be a table of config.json keys")
    config = {k: v for k, v in table.items() if k != NULL_KEYS}
    for key in table.get(NULL_KEYS, ()):
        if key in config:
            raise RecipeError(f"recipe {recipe_id}: [config] gives {key!r} a value and lists it in {NULL_KEYS}")
        config[key] = None
    if config and not (config.get("architectures") or config.get("model_type")):
        raise RecipeError(f"recipe {recipe_id}: [config] needs architectures or model_type")
    return config
