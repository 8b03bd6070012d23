"""The config tree: shipped configs validate, overrides apply, mistakes are named."""

from pathlib import Path

import pytest
import yaml

from llm360.config import CONFIG_DIR, load_config, save_config, to_dict
from llm360.errors import UserError

SHIPPED = sorted(CONFIG_DIR.glob("*.yaml"))


def test_configs_are_shipped():
    assert {p.stem for p in SHIPPED} >= {"demo", "amber-7b", "crystal-7b"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.data.stages, "a shipped config trains on at least one stage"
    assert sum(s.chunks for s in cfg.data.stages) >= 1


def test_amber_matches_the_paper():
    cfg = load_config("amber-7b")
    assert sum(s.chunks for s in cfg.data.stages) == 360
    assert cfg.train.global_batch_rows == 2240 and cfg.train.steps_per_chunk == 762
    assert cfg.data.seq_len == 2048
    assert len(cfg.data.sources) == 7
    assert cfg.data.stages[0].mix["refinedweb"] == pytest.approx(665.01)
    assert (cfg.train.lr, cfg.train.min_lr, cfg.train.warmup_steps) == (3e-4, 3e-5, 2000)


def test_crystal_and_amber_configs_set_the_published_recipes():
    from llm360.model.args import model_args

    cfg = load_config("crystal-7b")
    # Crystal's phases: 79,721 / 214,387 / 27,728 steps of 2,112 x 2,048 tokens
    steps = [s.chunks * s.steps_per_chunk for s in cfg.data.stages]
    assert steps == [79_721, 214_387, 27_728] and cfg.train.global_batch_rows == 2112
    phases = [cfg.train.stage_schedules[s.name] for s in cfg.data.stages]
    assert [(p.warmup_steps, p.lr, p.end_lr, p.decay_steps) for p in phases] == [
        (86, 0.012, 1.2408e-4, 294_337), (86, 0.0087825, 1.3679e-4, 214_301), (276, 0.002, 0.0002, 27_452)]
    assert [p.warmup_steps + p.decay_steps for p in phases[1:]] == steps[1:]  # phases 2, 3 end with their stage
    assert cfg.train.decay == "linear" and cfg.train.eps == 1e-9 and tuple(cfg.train.betas) == (0.9, 0.95)
    assert [s.fim for s in cfg.data.stages][0] == {} and cfg.data.stages[1].fim["starcoder"].rate == 0.9
    assert {f.rate for f in cfg.data.stages[2].fim.values()} == {0.3}
    assert sum(cfg.data.stages[2].mix.values()) == pytest.approx(1.0, abs=1e-3)
    args = model_args(cfg.model.preset)
    assert (args.hidden_lr_scale, args.embedding_scale, args.output_scale) == (0.0625, 14.6, 2.22 * 0.0625)
    amber = load_config("amber-7b")
    assert amber.train.no_decay == [] and amber.train.warmup_from_zero and amber.data.stages[0].exact_mix
    assert "starcoderdata" in amber.data.stages[0].mix and model_args("amber-7b").init == "normal"


def test_overrides_are_read_as_yaml():
    cfg = load_config(None, ["--train.lr=3e-4", "--data.strict=true", "--train.fault_injection.nan_at_steps=[5]",
                             "--data.stages.0.chunks=4", "--name=x y"])
    assert cfg.train.lr == 3e-4 and cfg.data.strict is True
    assert cfg.train.fault_injection.nan_at_steps == [5]
    assert cfg.data.stages[0].chunks == 4 and cfg.name == "x y"


@pytest.mark.parametrize("override, words", [
    ("--train.lrr=1", ["unknown config key 'train.lrr'", "lr"]),
    ("--train.lr=abc", ["train.lr", "number"]),
    ("--train.precision=fp64", ["train.precision", "fp32"]),
    ("--data.stages.0.mix.nosuch=1", ["unknown source", "nosuch"]),
    ("--train.micro_batch_rows=5", ["global_batch_rows", "micro_batch_rows"]),
    ("--data.stages.9.chunks=1", ["data.stages.9"]),
    ("train.lr", ["--section.key=value"]),
])
def test_bad_values_name_the_key(override, words):
    with pytest.raises(UserError) as e:
        load_config(None, [override])
    for word in words:
        assert word in str(e.value)


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ntrain:\n  lr: [1,\n")
    with pytest.raises(UserError, match=r"bad.yaml:\d+: not valid YAML"):
        load_config(path)


def test_unknown_section_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trian: {lr: 1}\n")
    with pytest.raises(UserError, match="unknown config key 'trian'"):
        load_config(path)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["--train.lr=5e-4"])
    save_config(cfg, tmp_path / "run.yaml")
    tree = yaml.safe_load((tmp_path / "run.yaml").read_text())
    assert tree["train"]["spike"]["window"] == cfg.train.spike.window  # defaults filled in
    assert "base_dir" not in tree  # a path of this machine: kept out of the run
    again = load_config(tmp_path / "run.yaml")
    assert to_dict(again) == to_dict(cfg)


def test_missing_config_file():
    with pytest.raises(UserError, match="does not exist"):
        load_config(Path("/nonexistent/c.yaml"))
    with pytest.raises(UserError, match="shipped configs: .*demo"):
        load_config("nosuchpreset")


@pytest.mark.parametrize("override, words", [
    ("--model.preset=huge", "config key 'model.preset': not a model preset; presets are tiny, demo, 1b, amber-7b"),
    ("--data.seq_len=1024", r"data.seq_len \(1024\) is beyond the model's context model.max_seq_len \(512 of preset 'demo'\)"),
    ("--model.max_seq_len=64", r"data.seq_len \(128\) is beyond .* model.max_seq_len \(64\)"),
    ("--model.dim=62", "model.dim 62 is not divisible by model.n_heads 4"),
    ("--model.n_kv_heads=3", "model.n_heads 4 is not divisible by model.n_kv_heads 3"),
    ("--model.n_layers=0", "model.n_layers must be at least 1"),
])
def test_a_model_that_cannot_exist_is_refused_at_load(override, words):
    with pytest.raises(UserError, match=words) as e:
        load_config(None, [override])
    assert "\n" not in str(e.value)


def test_model_config_fields_follow_model_args():
    """Every architecture field can be set in the config's `model` section, and nothing else."""
    from dataclasses import fields

    from llm360.config import ModelConfig
    from llm360.model.args import ModelArgs

    not_in_config: set[str] = set()  # ModelArgs fields deliberately kept out of the config (none)
    config_keys = set(ModelConfig.model_fields) - {"preset"}
    args_fields = {f.name for f in fields(ModelArgs)}
    assert config_keys <= args_fields, f"model.* keys that ModelArgs lacks: {sorted(config_keys - args_fields)}"
    assert args_fields - not_in_config == config_keys, \
        f"ModelArgs fields missing from ModelConfig: {sorted(args_fields - not_in_config - config_keys)}"


@pytest.mark.parametrize("override, key", [
    ("--train.lr=.nan", "train.lr"),
    ("--train.betas=[0.9, .inf]", "train.betas.1"),
    ("--data.stages.0.mix.python-docs=.nan", "data.stages.0.mix.python-docs"),
    ("--data.stages.0.mix.python-docs=.inf", "data.stages.0.mix.python-docs"),
    ("--model.rope_theta=-.inf", "model.rope_theta"),
    ("--train.spike.zscore=.inf", "train.spike.zscore"),
])
def test_non_finite_floats_are_refused(override, key):
    with pytest.raises(UserError, match=rf"config key '{key}': Input should be a finite number"):
        load_config(None, [override])


@pytest.mark.parametrize("seed, words", [
    (-1, "greater than or equal to 0"),
    (2**63, "less than or equal to 9223372036854775807"),
])
def test_seed_fits_the_generators(seed, words):
    with pytest.raises(UserError, match=f"config key 'seed': Input should be {words}"):
        load_config(None, [f"--seed={seed}"])
    assert load_config(None, [f"--seed={2**63 - 1}"]).seed == 2**63 - 1


def test_config_that_is_a_folder_or_not_utf8_is_named(tmp_path):
    with pytest.raises(UserError, match=rf"config file {tmp_path} is a folder"):
        load_config(tmp_path)
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=rf"{path}: not UTF-8 text \(byte 9 is 0xe9\)"):
        load_config(path)


def test_a_run_recorded_with_a_retired_key_still_loads(tmp_path):
    from llm360.config import load_config, load_run_config, save_config

    cfg = load_config("demo")
    save_config(cfg, tmp_path / "run.yaml")
    text = (tmp_path / "run.yaml").read_text().replace("train:\n", "train:\n  log_every: 1\n", 1)
    (tmp_path / "run.yaml").write_text(text)
    assert load_run_config(tmp_path).train == cfg.train
    with pytest.raises(UserError, match="log_every"):  # a user's config is not a record: refused
        load_config(tmp_path / "run.yaml")
