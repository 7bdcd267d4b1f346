"""Config schema: every ablation validates; every class of bad input fails with the field named."""

from __future__ import annotations

import glob
import re
from pathlib import Path

import pytest
import yaml

from raysim.cli import main
from raysim.config import (
    ConfigErrors,
    expand_arms,
    load_matrix,
    load_run,
    parse_sets,
    resolve_arm,
)
from raysim.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PHASE3 = ROOT / "ablations" / "phase3.yaml"


@pytest.mark.parametrize("path", sorted(glob.glob(str(ROOT / "ablations" / "*.yaml"))))
def test_every_ablation_file_validates(path):
    assert main(["validate", path]) == 0


def test_phase3_is_the_guide():
    m = load_matrix(PHASE3)
    assert list(m.arms) == ["ushaped-128", "ushaped-256", "pure-128", "pure-256", "pure-128-chansep", "fno-baseline"]
    assert [a for a, arm in m.arms.items() if arm.baseline] == ["fno-baseline"]
    assert m.arms["ushaped-128"].reference_values["nrmse_rollout"] == 0.0577
    assert m.arms["ushaped-256"].reference_values["nrmse_rollout"] == 0.0596
    assert m.metric == "nrmse_rollout_operator"  # architecture hypotheses: the operator's own rollout
    h = {x.id: x for x in m.hypotheses}
    assert (h["H1"].test, h["H1"].candidate, h["H1"].reference, h["H1"].tolerance) == (
        "within",
        "pure-128",
        "ushaped-128",
        0.05,
    )
    assert (h["H2"].test, h["H2"].candidate, h["H2"].reference, h["H2"].margin) == (
        "better_by",
        "pure-256",
        "ushaped-256",
        0.10,
    )
    assert (h["H3"].candidate, h["H3"].reference) == ("pure-128", "pure-128-chansep")
    for profile in ("smoke", "local", "cloud"):
        arms = expand_arms(m, profile)
        assert {a: c.model.family for a, c in arms.items()} == {
            a: "fno" if a == "fno-baseline" else "upt" for a in arms
        }
        assert {a: c.model.tokens for a, c in arms.items() if c.model.family == "upt"} == {
            "ushaped-128": 128,
            "ushaped-256": 256,
            "pure-128": 128,
            "pure-256": 256,
            "pure-128-chansep": 128,
        }
        assert arms["pure-128-chansep"].model.attention == "channel_separated"
        assert arms["ushaped-256"].model.processor == "u_shaped"
    assert expand_arms(m, "cloud")["pure-128"].resources.accelerator_type == "A100"
    smoke = expand_arms(m, "smoke")["fno-baseline"].model
    assert (smoke.fno_width, smoke.fno_modes, smoke.fno_layers) == (16, 8, 2)  # the smoke profile stays tiny


def test_set_overrides_and_include(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("model: {tokens: 64, latent_dim: 32, heads: 2}\noperator: {lr: 0.001}\n")
    child = tmp_path / "child.yaml"
    child.write_text("include: base.yaml\nmodel: {tokens: 128}\n")
    cfg = load_run(child, ["operator.lr=0.0005", "model.attention=channel_separated", "model.group_size=8"])
    assert (cfg.model.tokens, cfg.model.latent_dim, cfg.operator.lr) == (128, 32, 0.0005)
    assert cfg.model.attention == "channel_separated"
    assert parse_sets(["a.b.c=3"]) == {"a": {"b": {"c": 3}}}


def test_profile_and_arm_order():
    m = load_matrix(PHASE3)
    cfg = resolve_arm(m, "pure-256", "smoke", seed=3, sets=["operator.epochs=7"])
    assert (cfg.model.tokens, cfg.model.latent_dim, cfg.operator.epochs, cfg.seed, cfg.name) == (
        256,
        32,
        7,
        3,
        "pure-256",
    )


BAD_RUNS = [
    ("model: {tokens: -3}", "model.tokens", "positive"),
    ("model: {tokens: many}", "model.tokens", "integer"),
    ("model: {latent_dim: 30, heads: 4}", "model.heads", "divisible"),
    ("model: {attention: channel_separated, latent_dim: 64, heads: 4, group_size: 24}", "model.group_size", "divide"),
    ("model: {processor: u_shaped, tokens: 12, stage_depths: [1, 1, 1, 1]}", "model.tokens", "halve"),
    ("model: {processor: transformer}", "model.processor", "one of"),
    ("model: {attention: channelsep}", "model.attention", "one of"),
    ("model: {tokenz: 128}", "model.tokenz", "unknown key"),
    ("operator: {lr: -0.001}", "operator.lr", "learning rate"),
    ("operator: {lr: 5.0}", "operator.lr", "learning rate"),
    ("diffusion: {epochs: 0}", "diffusion.epochs", "positive"),
    ("data: {path: /nonexistent/file.h5}", "data.path", "does not exist"),
    ("data: {splits: [0.5, 0.1]}", "data.splits", "fractions"),
    ("data: {x_stride: 0}", "data.x_stride", "positive"),
    ("model: {drop_path: 1.5}", "model.drop_path", "[0, 1)"),
    ("resources: {accelerator_type: A100}", "resources.accelerator_type", "use_gpu"),
    ("evaluation: {ttc_candidates: 0}", "evaluation.ttc_candidates", "positive"),
    ("logging: {mode: loud}", "logging.mode", "one of"),
    ("model: [1, 2]", "model", "mapping"),
    ("operator: {unroll_steps: 1.5}", "operator.unroll_steps", "integer"),
    ("model: {family: cnn}", "model.family", "one of"),
    ("model: {fno_modes: 0}", "model.fno_modes", "positive"),
    ("model: {fno_width: -1}", "model.fno_width", "positive"),
    ("model: {fno_layers: 0}", "model.fno_layers", "positive"),
    ("model: {fno_width: 2.5}", "model.fno_width", "integer"),
    ("model: {family: fno, fno_modes: 200}", "model.fno_modes", "at most 128, half the 256 grid points"),
    ("operator: {loss: l1}", "operator.loss", "one of"),
    ("operator: {unroll_steps: 0}", "operator.unroll_steps", "positive"),
    ("operator: {unroll_steps: 41}", "operator.unroll_steps", "below the 41 frames"),
    ("operator: {unroll_curriculum: 1.5}", "operator.unroll_curriculum", "[0, 1]"),
    ("operator: {unroll_curriculum: soon}", "operator.unroll_curriculum", "number"),
    ("operator: {input_noise: -0.1}", "operator.input_noise", "[0, 1)"),
    ("operator: {ema_warmup: 1}", "operator.ema_warmup", "true or false"),
    ("operator: {validation_samples: 0}", "operator.validation_samples", "positive"),
    ("diffusion: {validation_samples: many}", "diffusion.validation_samples", "integer"),
    ("model: {attention_locality: yes please}", "model.attention_locality", "true or false"),
    ("model: {decoder_point_features: 0}", "model.decoder_point_features", "true or false"),
]


@pytest.mark.parametrize(("text", "field", "words"), BAD_RUNS)
def test_bad_run_config_names_file_and_field(tmp_path, capsys, text, field, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigErrors) as exc:
        load_run(path)
    line = str(exc.value).splitlines()[0]
    assert line.startswith(f"{path}: {field}: ") and words in line
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: {field}: " in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "words"),
    [("", "empty file"), ("- a\n- b\n", "top level must be a mapping"), ("model: {tokens: [1, 2\n", "invalid YAML")],
)
def test_bad_yaml_files(tmp_path, capsys, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert words in err and str(path) in err and len(err.strip().splitlines()) == 1


def _matrix(tmp_path, mutate) -> Path:
    data = yaml.safe_load(PHASE3.read_text())
    (tmp_path / "burgers_base.yaml").write_text((ROOT / "ablations" / "burgers_base.yaml").read_text())
    mutate(data)
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [
        (lambda d: d["hypotheses"][0].update(candidate="pure-512"), "hypotheses[0].candidate", "does not exist"),
        (lambda d: d["hypotheses"][1].update(reference="ushaped-999"), "hypotheses[1].reference", "does not exist"),
        (lambda d: d["hypotheses"][2].update(reference="pure-128"), "hypotheses[2].reference", "two different arms"),
        (lambda d: d["hypotheses"][0].update(test="roughly"), "hypotheses[0].test", "one of"),
        (lambda d: d["profiles"].pop("cloud"), "profiles.cloud", "missing"),
        (lambda d: d.update(metric="accuracy"), "metric", "unknown metric"),
        (
            lambda d: d["arms"]["pure-256"]["overrides"]["model"].update(tokens=-3),
            "arms.pure-256[smoke].model.tokens",
            "positive",
        ),
        (lambda d: d.update(base="nope.yaml"), "base", "does not exist"),
        (lambda d: d["arms"]["fno-baseline"].update(baseline="yes"), "arms.fno-baseline.baseline", "true or false"),
        (lambda d: d["hypotheses"][0].update(candidate="fno-baseline"), "hypotheses[0].candidate", "baseline arm"),
        (lambda d: d["hypotheses"][2].update(reference="fno-baseline"), "hypotheses[2].reference", "baseline arm"),
    ],
)
def test_bad_matrix(tmp_path, capsys, mutate, field, words):
    path = _matrix(tmp_path, mutate)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: {field}: " in err and words in err, err


def test_unknown_arm_and_profile():
    m = load_matrix(PHASE3)
    with pytest.raises(UserError, match=re.escape("--arm: unknown arm 'pure-512'")):
        resolve_arm(m, "pure-512", "local")
    with pytest.raises(UserError, match=re.escape("--profile: unknown profile 'huge'")):
        resolve_arm(m, "pure-128", "huge")
    with pytest.raises(ConfigErrors, match=re.escape("model.tokenz: unknown key")):
        resolve_arm(m, "pure-128", "local", sets=["model.tokenz=3"])


def test_cli_usage_errors_exit_2(capsys):
    assert main(["frobnicate"]) == 2
    assert main(["run", str(PHASE3), "--profile", "huge", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown profile 'huge'" in err and "Traceback" not in err


def test_set_reads_exponent_floats_as_numbers():
    from raysim.config import parse_sets

    assert parse_sets(["operator.lr=4e-3", "a=1E+2", "b=x1e3"]) == {"operator": {"lr": 0.004}, "a": 100.0, "b": "x1e3"}
