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


def test_crystal_has_three_stages_and_rewarms():
    cfg = load_config("crystal-7b")
    assert [s.chunks for s in cfg.data.stages] == [35, 96, 12]
    assert cfg.data.stages[2].rewarm_steps > 0


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
