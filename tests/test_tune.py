"""Matrix expansion into Tune's param_space and back into one trial's run config (no Ray started)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raysim.config import ConfigErrors, load_matrix
from raysim.tune.study import param_space
from raysim.tune.trial import resolve_trial_config

PHASE3 = Path(__file__).resolve().parents[1] / "ablations" / "phase3.yaml"


def test_param_space_is_a_grid_over_arms_and_seeds(tmp_path):
    matrix = load_matrix(PHASE3)
    space = param_space(matrix, "smoke", study_dir=str(tmp_path))
    assert space["arm"] == {"grid_search": list(matrix.arms)}
    assert space["seed"] == {"grid_search": [0]}
    assert set(json.loads(space["arm_configs"])) == set(matrix.arms)
    assert space["study_dir"] == str(tmp_path) and space["profile"] == "smoke"


def test_trial_config_resolves_arm_seed_and_overrides(tmp_path):
    space = param_space(load_matrix(PHASE3), "local", sets=["operator.epochs=3"], study_dir=str(tmp_path))
    config = {**space, "arm": "ushaped-256", "seed": 7, "overrides": {"operator.lr": 0.002, "model.drop_path": 0.1}}
    cfg = resolve_trial_config(config)
    assert (cfg.name, cfg.seed, cfg.model.tokens, cfg.model.processor) == ("ushaped-256", 7, 256, "u_shaped")
    assert (cfg.operator.epochs, cfg.operator.lr, cfg.model.drop_path) == (3, 0.002, 0.1)


def test_a_bad_override_in_a_search_fails_with_the_field(tmp_path):
    space = param_space(load_matrix(PHASE3), "smoke", study_dir=str(tmp_path))
    with pytest.raises(ConfigErrors, match=r"operator\.lr"):
        resolve_trial_config({**space, "arm": "pure-128", "seed": 0, "overrides": {"operator.lr": -1.0}})


def test_an_arm_counts_as_done_when_its_last_trial_completes():
    from types import SimpleNamespace

    from raysim.tune.callbacks import StudyCallback

    def trial(arm, status):
        return SimpleNamespace(config={"arm": arm}, status=status)

    a0, a1, b0 = trial("a", "TERMINATED"), trial("a", "RUNNING"), trial("b", "RUNNING")
    assert StudyCallback._done_arms([a0, a1, b0], a1) == {"a"}  # a1 is completing right now
    assert StudyCallback._done_arms([a0, a1, b0], b0) == {"b"}  # a1 still runs: arm a is not done
