import pytest

from vaelab.config import Config, field_specs
from vaelab.errors import ConfigError


def test_toml_round_trip(tmp_path):
    cfg = Config().override(latent_dim="50", hidden="400", dataset="fashion-mnist", lr="3e-4",
                            download="false", val_size="100")
    cfg.save(tmp_path / "c.toml")
    back = Config.load(tmp_path / "c.toml")
    assert back == cfg
    assert back.model.hidden == (400,) and back.train.lr == 3e-4 and back.data.download is False


@pytest.mark.parametrize("key, value, match", [
    ("latent_dim", "abc", "latent_dim must be of type int"),
    ("latent_dim", "0", "latent_dim must be >= 1"),
    ("binarize", "sometimes", "choose one of: auto, none, dynamic, static"),
    ("device", "tpu", "choose one of: auto, cpu, cuda, mps"),
    ("lr", "-1", "lr must be > 0"),
    ("nonsense", "1", "unknown setting 'nonsense'"),
])
def test_bad_values_name_the_choices(key, value, match):
    with pytest.raises(ConfigError, match=match):
        Config().override(**{key: value})


@pytest.mark.parametrize("text, match", [
    ("[model]\nlatent = 3\n", r"unknown key\(s\) \['latent'\] in \[model\]; valid keys: net"),
    ("[modle]\n", r"unknown section\(s\) \['modle'\]"),
    ("[model\n", "not valid TOML"),
])
def test_bad_files(tmp_path, text, match):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        Config.load(p)


def test_field_names_are_unique_flags():
    names = [name for _, name, _, _ in field_specs()]
    assert len(names) == len(set(names))


def test_the_kl_warmup_default_follows_the_objective(tmp_path):
    """10 epochs for the ELBO (chosen on validation); none for the IWAE bound and the
    autoencoder, which have no KL weight; an explicit value is kept, and refused where
    it has no meaning."""
    assert Config().train.warmup == 10 and Config().train.kl_warmup is None
    assert Config().override(objective="iwae", samples=5).train.warmup == 0
    assert Config().override(autoencoder="true").train.warmup == 0
    assert Config().override(kl_warmup="0").train.warmup == 0
    assert Config().override(kl_warmup="25").train.warmup == 25
    with pytest.raises(ConfigError, match="does not go with kl_warmup = 3; set --kl-warmup 0$"):
        Config().override(objective="iwae", samples=5, kl_warmup=3)
    with pytest.raises(ConfigError, match="with beta = 0.5, free_bits = 0.1, autoencoder; set "
                       "--beta 1, --free-bits 0, no --autoencoder$"):
        Config().override(objective="iwae", beta=0.5, free_bits=0.1, autoencoder="true")
    # a run's config.toml holds its warm-up: training it on the IWAE bound names the fix
    Config().override(kl_warmup="10").save(tmp_path / "run.toml")
    with pytest.raises(ConfigError, match="kl_warmup = 10; set --kl-warmup 0"):
        Config.load(tmp_path / "run.toml").override(objective="iwae", samples=5)
    assert Config.load(tmp_path / "run.toml").override(
        objective="iwae", samples=5, kl_warmup="0").train.warmup == 0
    Config().save(tmp_path / "c.toml")
    assert Config.load(tmp_path / "c.toml").train.warmup == 10


def test_a_run_records_its_warm_up_and_older_runs_keep_what_they_did(tmp_path):
    """config.toml names the resolved warm-up; a run written before `select` and
    `kl_warmup` existed resumes as it ran (kept on the ELBO, no warm-up)."""
    from vaelab.runs.rundir import legacy_settings
    from vaelab.training.loop import train

    small = Config().override(dataset="digits", epochs=1, hidden="16", latent_dim=2)
    train(small, tmp_path / "run", progress=False)
    text = (tmp_path / "run" / "config.toml").read_text()
    assert "kl_warmup = 10" in text and 'select = "nll"' in text
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.toml").write_text("[train]\nepochs = 3\n")
    tc = legacy_settings(Config(), old).train
    assert (tc.select, tc.warmup, tc.ema) == ("elbo", 0, 0.0)


def test_every_shipped_config_loads():
    """configs/*.toml: each parses and its settings pass their checks (an IWAE tail that
    does not fit its run, a misspelt key, would be refused here, not at a user's run)."""
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))
    assert len(files) >= 10
    for f in files:
        cfg = Config.load(f)
        assert cfg.train.tail < cfg.train.epochs, f.name
