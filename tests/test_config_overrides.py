"""Every setting of a run from the command line (``--set``, ``--config``, the shortcut flags):
parsing, precedence, refusals, the bit-exact round trip of a run's config.json, and
``--help`` / ``--version``."""

import dataclasses
import json
import math
import re
import typing
from importlib import metadata
from pathlib import Path

import pytest
import torch

from pbridge.checkpoint import load_checkpoint
from pbridge.cli import main
from pbridge.config import (
    BridgeSettings,
    ImageConfig,
    PaperSettings,
    ToyConfig,
    TrainSettings,
    config_from_dict,
    image_preset,
    upgrade_config_dict,
)
from pbridge.config_overrides import apply_overrides, parse_assignment

TINY_TOY = [
    "--set", "num_train=256",
    "--set", "num_samples=32",
    "--set", "hidden=16",
    "--set", "denoiser_width=16",
    "--set", "denoiser_blocks=1",
    "--set", "train.batch_size=32",
    "--steps", "3",
    "--no-progress",
]  # fmt: skip


@pytest.mark.parametrize(
    "text, value",
    [
        ("num_codes=256", 256),
        ("train.lr=1e-3", 1e-3),
        ("bridge.self_condition=false", False),
        ("bridge.self_condition=On", True),
        ("bridge.spherical_radius=none", None),
        ("bridge.spherical_radius=1.5", 1.5),
        ("max_train=100", 100),
        ("unet_mults=1,2,2", [1, 2, 2]),
        ("unet_mults=(1, 4)", [1, 4]),
        ("bridge.formulation=paper", "paper"),
    ],
    ids=["int", "float", "bool-false", "bool-on", "optional-none", "optional-float",
         "optional-int", "tuple", "tuple-parenthesised", "str"],
)  # fmt: skip
def test_a_set_value_is_read_as_the_field_type(text, value):
    override = parse_assignment(text, ImageConfig)
    assert override.value == value and type(override.value) is type(value)
    config = apply_overrides(image_preset("fashion-mnist", "small"), [override])
    *sections, name = override.key.split(".")
    target = config
    for section in sections:
        target = getattr(target, section)
    assert getattr(target, name) == (tuple(value) if isinstance(value, list) else value)


@pytest.fixture
def captured(monkeypatch):
    """Training is replaced by recording the config it was given (nothing is written)."""
    configs = []

    def record(config, *args, **kwargs):
        configs.append(config)
        return {}

    monkeypatch.setattr("pbridge.inference.images.run_images", record)
    monkeypatch.setattr("pbridge.inference.toy.run_toy", record)
    return configs


def test_precedence_is_preset_then_config_file_then_set_and_flags(tmp_path, captured):
    settings = tmp_path / "settings.toml"
    settings.write_text(
        'preset = "paper"\nnum_codes = 32\n[train]\nlr = 5e-4\nbatch_size = 7\nseed = 3\n'
    )
    argv = ["train", "cifar10", "--out", str(tmp_path / "run"), "--config", str(settings)]
    argv += ["--set", "train.lr=1e-4", "--seed", "5", "--batch-size", "9"]
    assert main(argv) == 0
    config = captured[-1]
    paper = image_preset("cifar10", "paper")
    assert config.unet_width == paper.unet_width == 128  # the file's preset, not small
    assert config.num_codes == 32 and config.train.steps == paper.train.steps  # file, preset
    assert (config.train.lr, config.train.seed, config.train.batch_size) == (1e-4, 5, 9)
    assert not (tmp_path / "run").exists()


def test_a_run_config_json_works_as_a_config_file(tmp_path, captured):
    source = image_preset("digits", "small")
    source = apply_overrides(source, [parse_assignment("bridge.commitment=0.3", ImageConfig)])
    path = tmp_path / "config.json"
    path.write_text(json.dumps(source.to_dict()))
    assert main(["train", "digits", "--out", str(tmp_path / "run"), "--config", str(path)]) == 0
    assert captured[-1] == source


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--set", "bridge.num_code=256"],
         "unknown setting 'bridge.num_code'; bridge has: formulation, estimator"),
        (["--set", "nonsense=1"], "unknown setting 'nonsense'; an image config has: dataset"),
        (["--set", "train.lr=fast"], "--set train.lr=fast: train.lr must be float, got 'fast'"),
        (["--set", "bridge.formulation=tite"],
         "formulation must be one of ('tight', 'paper'), got 'tite'"),
        (["--set", "unet_mults=1,x"], "unet_mults must be tuple[int, ...], got '1,x'"),
        (["--set", "train.steps=0"], "--set train.steps=0: steps must be a positive integer"),
        (["--set", "num_codes"], "expected KEY=VALUE"),
        (["--set", "train=1"], "'train' is a section, not a setting; set its fields: train.steps"),
        (["--set", "dataset=cifar10"], "the data set is DATASET, here fashion-mnist"),
        (["--set", "train.lr=1e-3", "--lr", "2e-3"], "both set train.lr: give one"),
        (["--lr", "-1"], "--lr -1.0: lr must be a finite number > 0, got -1.0"),
        (["--config", "missing.toml"], "--config missing.toml: no such file"),
    ],
    ids=["unknown-section-key", "unknown-key", "bad-float", "bad-choice", "bad-tuple",
         "post-init-check", "no-equals", "a-section", "another-dataset", "given-twice",
         "bad-flag-value", "missing-file"],
)  # fmt: skip
def test_bad_settings_are_refused_naming_them_and_nothing_is_written(
    argv, named, tmp_path, capsys, captured
):
    out = tmp_path / "run"
    assert main(["train", "fashion-mnist", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pbridge: ") and "\n" not in err and named in err, err
    assert not out.exists() and captured == []


@pytest.mark.parametrize(
    "text, named",
    [
        ('[bridge]\nnum_codes = 3\n', "unknown setting 'bridge.num_codes'; bridge has:"),
        ('[train]\nlr = "fast"\n', "train.lr must be float, got 'fast'"),
        ("train = 3\n", "train must be an object, got 3"),
        ("[train\n", "is not valid TOML"),
    ],
    ids=["unknown-key", "bad-type", "section-not-a-table", "broken-toml"],
)  # fmt: skip
def test_bad_config_files_are_refused_naming_the_file_and_key(
    text, named, tmp_path, capsys, captured
):
    path = tmp_path / "settings.toml"
    path.write_text(text)
    out = tmp_path / "run"
    assert main(["train", "fashion-mnist", "--out", str(out), "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{path}" in err and named in err and "\n" not in err, err
    assert not out.exists() and captured == []


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 3-step toy run with a small denoiser, every size set with --set."""
    out = tmp_path_factory.mktemp("overrides") / "a"
    assert main(["train", "toy", "--out", str(out), *TINY_TOY]) == 0
    return out


def test_a_run_config_json_fed_back_with_config_reproduces_the_run(tiny_run, tmp_path):
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["denoiser_width"] == 16 and config["train"]["batch_size"] == 32
    again = tmp_path / "b"
    argv = ["train", "toy", "--out", str(again), "--config", str(tiny_run / "config.json")]
    assert main([*argv, "--no-progress"]) == 0
    assert json.loads((again / "config.json").read_text()) == config
    first, second = (
        load_checkpoint(tiny_run / "checkpoint.pt"),
        load_checkpoint(again / "checkpoint.pt"),
    )
    assert first["model"].keys() == second["model"].keys()
    for key, value in first["model"].items():
        assert torch.equal(value, second["model"][key]), key
    assert first["losses"] == second["losses"] and len(first["losses"]) == 3


def test_resume_refuses_settings_that_change_the_run_and_allows_extending_steps(
    tiny_run, tmp_path, capsys, captured
):
    resume = ["train", "toy", "--out", str(tiny_run), "--resume"]
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"train": {"lr": 0.5}}))
    for argv, named in [
        (["--set", "hidden=32"], "--set hidden=32 (the run's: 16)"),
        (["--config", str(settings)], f"{settings}: train.lr = 0.5 (the run's: 0.002)"),
        (["--set", "train.steps=9"], "--set train.steps=9 differs from the run's 3 steps"),
        (["--set", "train.steps=2", "--extend-steps"], "must exceed the 3 steps"),
    ]:
        assert main([*resume, *argv]) == 2
        assert named in capsys.readouterr().err
    assert captured == []
    same = ["--config", str(tiny_run / "config.json"), "--set", "hidden=16"]
    assert main([*resume, *same]) == 0  # settings equal to the run's are accepted
    assert captured[-1] == ToyConfig.from_dict(json.loads((tiny_run / "config.json").read_text()))
    assert main([*resume, "--set", "train.steps=9", "--extend-steps"]) == 0
    assert captured[-1].train.steps == 9


def test_help_shows_defaults_and_the_settings(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    assert "(default: auto)" in shown  # --device
    assert "train.lr (float): 0.002 / 0.001" in shown  # toy / fashion-mnist small
    assert "unet_mults (tuple[int, ...]): - / 1,2,2" in shown
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    assert "(default: 1000)" in capsys.readouterr().out  # --num


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"pbridge {metadata.version('pbridge')}"


# flag and value -> its setting, the value it must give, a different value in a --config file;
# falsy values where the flag allows them (a flag taken only ``if value:`` is lost over a file).
FLAG_TABLE = {
    "steps": (["--steps", "5"], "train.steps", 5, 9),
    "seed-0": (["--seed", "0"], "train.seed", 0, 3),
    "lr": (["--lr", "0.003"], "train.lr", 0.003, 0.0005),
    "batch-size": (["--batch-size", "4"], "train.batch_size", 4, 8),
    "latent-warmup-0": (["--latent-warmup", "0"], "train.latent_warmup", 0, 10),
    "autocast": (["--autocast"], "train.autocast", True, False),
    "preset": (["--preset", "small"], "preset", "small", "paper"),
    "variant": (["--variant", "two-stage"], "variant", "two-stage", "pixelcnn"),
    "codebook": (["--codebook", "gradient"], "vqvae_codebook", "gradient", "ema"),
    "restart-dead-codes": (["--restart-dead-codes", "0.5"], "restart_dead_codes", 0.5, 2.0),
    "vqvae-steps-0": (["--vqvae-steps", "0"], "vqvae_steps", 0, 50),
}


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def _setting(config, key: str):
    for part in key.split("."):
        config = getattr(config, part)
    return config


def test_the_flag_table_covers_every_shortcut_flag():
    from pbridge.cli.train import _SETTING_FLAGS

    assert {key for _, key, _, _ in FLAG_TABLE.values()} == set(_SETTING_FLAGS.values())


@pytest.mark.parametrize("name", list(FLAG_TABLE))
def test_every_train_flag_reaches_its_setting_over_a_config_file(name, tmp_path, captured):
    """``--config FILE`` sets the key to one value, the flag to another (0 and False
    included): the run receives the flag's value; without the flag, the file's."""
    argv, key, value, in_file = FLAG_TABLE[name]
    section, _, field = key.rpartition(".")
    path = tmp_path / "settings.toml"
    line = f"{field} = {_toml_value(in_file)}\n"
    path.write_text(f"[{section}]\n{line}" if section else line)
    base = ["train", "fashion-mnist", "--out", str(tmp_path / "run"), "--config", str(path)]
    assert main([*base, *argv]) == 0
    assert _setting(captured[-1], key) == value and type(_setting(captured[-1], key)) is type(value)
    assert main(base) == 0
    assert _setting(captured[-1], key) == in_file


NUMERIC = {
    BridgeSettings: {
        "spherical_radius": "> 0",
        "commitment": ">= 0",
        "readout_aux": ">= 0",
        "codes_lr_scale": "> 0",
    },
    PaperSettings: {
        "tau_p": "> 0",
        "tau_q": ">= 0",
        "encoder_scale": "> 0",
        "gumbel_temperature": "> 0",
    },
    TrainSettings: {
        "steps": "int > 0",
        "batch_size": "int > 0",
        "lr": "> 0",
        "clip_norm": "> 0",
        "seed": "int >= 0",
        "checkpoint_every": "int >= 0",
        "latent_warmup": "int >= 0",
        "ema_decay": ">= 0",
        "log_every": "int > 0",
        "eval_every": "int >= 0",
        "heldout_items": "int > 0",
        "sample_every": "int >= 0",
    },
    ToyConfig: {
        "num_train": "int > 0",
        "length": "int > 0",
        "noise": "> 0",
        "num_codes": "int > 0",
        "latent_dim": "int > 0",
        "hidden": "int > 0",
        "denoiser_width": "int > 0",
        "denoiser_blocks": "int > 0",
        "num_steps": "int > 0",
        "delta": "> 0",
        "num_samples": "int > 0",
    },
    ImageConfig: {
        "vqvae_steps": "int >= 0",
        "restart_dead_codes": "> 0",
        "num_codes": "int > 0",
        "latent_dim": "int > 0",
        "downsamples": "int >= 0",
        "unet_width": "int > 0",
        "unet_mults": "int > 0",
        "unet_blocks": "int > 0",
        "num_steps": "int > 0",
        "pixelcnn_channels": "int > 0",
        "pixelcnn_layers": "int > 0",
        "max_train": "int > 0",
        "eval_items": "int > 0",
    },
}
"""Every numeric setting of every config class and what it allows."""


def _bad_values(allowed: str) -> list:
    bad = [math.nan, math.inf, -math.inf, -1]
    bad += [0] if "> 0" in allowed else []
    bad += [2.5] if allowed.startswith("int") else []
    return bad


def test_the_table_of_ranges_names_every_numeric_setting():
    for cls, ranges in NUMERIC.items():
        hints = typing.get_type_hints(cls)
        numeric = {
            f.name
            for f in dataclasses.fields(cls)
            if {int, float} & ({hints[f.name]} | set(typing.get_args(hints[f.name])))
        }
        assert numeric == set(ranges), cls.__name__


@pytest.mark.parametrize(
    "cls, name, value",
    [
        pytest.param(cls, name, value, id=f"{cls.__name__}.{name}={value}")
        for cls, ranges in NUMERIC.items()
        for name, allowed in ranges.items()
        for value in _bad_values(allowed)
    ],
)
def test_every_numeric_setting_is_range_checked_naming_it(cls, name, value):
    if name == "unet_mults":  # a tuple: each entry is checked
        value = (1, value)
    with pytest.raises(
        ValueError, match=rf"^{name} must be (a|an) .*, got {re.escape(repr(value))}$"
    ):
        cls(**{name: value})


def test_unet_mults_may_not_be_empty():
    with pytest.raises(ValueError, match="unet_mults must be a non-empty tuple"):
        ImageConfig(unet_mults=())


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--set", "train.clip_norm=-1"], "--set train.clip_norm=-1: clip_norm must be a finite "
         "number > 0, got -1.0"),
        (["--lr", "inf"], "--lr inf: lr must be a finite number > 0, got inf"),
        (["--lr", "nan"], "--lr nan: lr must be a finite number > 0, got nan"),
        (["--set", "num_steps=0"], "--set num_steps=0: num_steps must be a positive integer"),
        (["--set", "downsamples=4"], "downsamples=4 halves fashion-mnist's 28 x 28 images 4 "
         "times, and 2**4 = 16 does not divide 28 and 28: downsamples must lie in 0..2"),
        (["--set", "train.ema_decay=1"], "ema_decay must be a finite number >= 0 and < 1"),
    ],
    ids=["negative-clip-norm", "infinite-lr", "nan-lr", "no-steps", "too-many-downsamples",
         "ema-decay-one"],
)  # fmt: skip
def test_out_of_range_settings_are_one_line_naming_the_key(argv, named, tmp_path, capsys, captured):
    out = tmp_path / "run"
    assert main(["train", "fashion-mnist", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pbridge: ValueError: ") and "\n" not in err and named in err, err
    assert not out.exists() and captured == []


def test_toy_settings_are_range_checked_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    for setting in ("num_steps=0", "delta=nan", "noise=-1"):
        assert main(["train", "toy", "--out", str(out), "--set", setting]) == 2
        err = capsys.readouterr().err.strip()
        assert f"--set {setting}: {setting.split('=')[0]} must be" in err and "\n" not in err
        assert not out.exists()


def test_the_set_example_of_the_help_and_the_docs_is_accepted(capsys, tmp_path, captured):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    example = re.search(r"e\.g\. (--set .*?);", shown).group(1).split()
    docs = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    row = re.search(r"\| `--set KEY=VALUE` \| [^`]*`([^`]*)`", docs).group(1).split()
    for argv in (example, row):
        assert main(["train", "fashion-mnist", "--out", str(tmp_path / "run"), *argv]) == 0
    assert len(captured) == 2


@pytest.mark.parametrize(
    "argv, suggestion",
    [
        (["--set", "bridge.num_codes=256"], "did you mean num_codes?"),
        (["--set", "lr=1e-3"], "did you mean train.lr?"),
        (["--set", "train.tau_p=0.5"], "did you mean bridge.paper.tau_p?"),
    ],
    ids=["top-level-in-a-section", "section-key-at-top", "another-section"],
)
def test_an_unknown_setting_suggests_the_key_at_another_level(argv, suggestion, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "fashion-mnist", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pbridge: ValueError: --set ") and err.endswith(suggestion), err
    assert not out.exists()


def test_a_config_file_key_at_the_wrong_level_gets_the_suggestion(tmp_path, capsys):
    path = tmp_path / "settings.toml"
    path.write_text("[bridge]\nnum_codes = 3\n")
    assert (
        main(["train", "fashion-mnist", "--out", str(tmp_path / "r"), "--config", str(path)]) == 2
    )
    assert capsys.readouterr().err.strip().endswith("did you mean num_codes?")


def test_the_paper_settings_are_its_own_section_and_refused_with_the_tight_formulation(
    tmp_path, capsys, captured
):
    out = tmp_path / "run"
    assert main(["train", "toy", "--out", str(out), "--set", "bridge.paper.tau_p=0.2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "the paper formulation's settings (bridge.paper) are read by it alone" in err
    assert "(changed: tau_p=0.2)" in err
    assert "\n" not in err and not out.exists() and not captured
    paper = ["--set", "bridge.formulation=paper", "--set", "bridge.paper.tau_p=0.2"]
    assert main(["train", "toy", "--out", str(out), *paper]) == 0
    assert captured[-1].bridge.paper == PaperSettings(tau_p=0.2)


def test_end_to_end_images_default_to_slow_codes_and_an_old_config_reads_one_rate():
    """The image preset's end-to-end schedule trains the encoder and codebook at a tenth of the
    rate; a config.json written before the setting existed (every run trained at one rate)
    reads as 1, so old runs keep what they did."""
    assert image_preset("fashion-mnist", "small").bridge.codes_lr_scale == 0.1
    assert ToyConfig().bridge.codes_lr_scale == 1.0
    old = image_preset("fashion-mnist", "small").to_dict()
    del old["bridge"]["codes_lr_scale"]
    assert config_from_dict(ImageConfig, old, "config.json").bridge.codes_lr_scale == 1.0


def test_a_config_of_before_the_paper_section_reads_with_its_settings_moved():
    """``bridge.tau_p`` (flat, as runs wrote it before ``PaperSettings``) reads as
    ``bridge.paper.tau_p``; today's keys and the rest of the dict are kept as they are."""
    old = ToyConfig().to_dict()
    paper = old["bridge"].pop("paper")
    old["bridge"].update(paper, formulation="paper", tau_p=0.3)
    config = config_from_dict(ToyConfig, old, "config.json")
    assert config.bridge.paper == PaperSettings(tau_p=0.3)
    bridge = dataclasses.replace(ToyConfig().bridge, formulation="paper", paper=config.bridge.paper)
    assert config == dataclasses.replace(ToyConfig(), bridge=bridge)
    today = config.to_dict()
    assert upgrade_config_dict(today) is today
