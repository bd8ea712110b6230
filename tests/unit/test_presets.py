"""model.preset in params.yaml: a named option set, expanded where it is named, keys beside it win."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

from flows.config import DEFAULT_PRESET, LineParams, ModelParams, load_params, set_line_model_options
from flows.model.build import build_model
from flows.tune import EMBEDDINGS, POOLINGS, SCORE_RULES, embedding_choices
from padim_plugin import PRESETS, StreamingPadim

PRESET_KEYS = sorted(PRESETS["paper"])


def options(model: ModelParams) -> dict[str, object]:
    return {key: getattr(model, key) for key in PRESET_KEYS}


def test_the_paper_preset_is_the_constructors_own_defaults_which_are_anomalibs() -> None:
    defaults = {name: parameter.default for name, parameter in
                inspect.signature(StreamingPadim.__init__).parameters.items() if name in PRESET_KEYS}
    assert options(ModelParams(preset="paper")) == defaults


def test_a_line_that_names_no_preset_gets_aligned_maps() -> None:
    assert DEFAULT_PRESET == "aligned"
    assert options(ModelParams()) == PRESETS["aligned"] and ModelParams().align_maps is True
    model = build_model(LineParams(name="alpha", model={"n_features": 8, "weights": None})).model
    assert model.align_maps is True


def test_a_line_that_names_a_preset_takes_its_options_over_the_defaults_choices(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("defaults:\n  model: {align_maps: false, top_k_percent: 1.0, n_features: 50}\n"
                    "lines:\n  inherits: {}\n  paper: {model: {preset: paper}}\n"
                    "  aligned: {model: {preset: aligned}}\n")
    params = load_params(path)
    inherits = params.line("inherits").model
    assert (inherits.align_maps, inherits.top_k_percent) == (False, 1.0)
    assert options(params.line("paper").model) == PRESETS["paper"]
    assert options(params.line("aligned").model) == PRESETS["aligned"]
    assert {params.line(name).model.n_features for name in ("inherits", "paper", "aligned")} == {50}


def test_a_key_given_beside_a_preset_wins_over_it(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("defaults:\n  model: {preset: paper, pooling: shared}\n"
                    "lines:\n  alpha: {model: {preset: aligned, top_k_percent: 2.0}}\n  beta: {}\n")
    params = load_params(path)
    assert options(params.line("alpha").model) == PRESETS["aligned"] | {"top_k_percent": 2.0}
    assert options(params.line("beta").model) == PRESETS["paper"] | {"pooling": "shared"}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_tuning_tries_the_lines_own_preset_first(preset: str) -> None:
    line = LineParams(name="alpha", model={"preset": preset})
    first = embedding_choices(line)[0] | POOLINGS[0] | SCORE_RULES[0]
    assert {key: first[key] for key in PRESET_KEYS} == PRESETS[preset]
    assert len(embedding_choices(line)) == len(EMBEDDINGS)  # the same grid, reordered


def test_tuned_options_replace_the_preset_they_override(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("lines:\n  gravel:\n    model: {preset: paper}  # kept for its own reasons\n")
    tuned = PRESETS["paper"] | {"align_maps": True, "pooling_window": 3, "layers": None}
    set_line_model_options(path, "gravel", tuned)
    assert "preset" not in yaml.safe_load(path.read_text())["lines"]["gravel"]["model"]
    assert options(load_params(path).line("gravel").model) == {key: tuned[key] for key in PRESET_KEYS}
