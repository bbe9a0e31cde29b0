"""`vaelab lecture`: the page from the reader's runs (and the runs it trains when one is
missing), opened in headless Chromium from a file:// URL and live on its server: nine
sections in the lecture's order with their figures drawn, no external URL, numbers equal
to `vaelab evaluate` / `vaelab baselines` of the same runs, and the live controls answered
by the models."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

import vaelab
from helpers import free_port, vaelab_server, wait_for
from vaelab.app.lecture_page import TITLES
from vaelab.config import Config

pytestmark = pytest.mark.slow  # trainings, processes, a browser

SECTIONS = [i for i, _ in TITLES]
SMALL = dict(epochs=4, hidden=(64,), seed=0)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("lecture-cache")),
            "VAELAB_HOME": str(tmp_path_factory.mktemp("lecture-home"))}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lecture-runs")
    for name, kw in {"vae": dict(latent_dim=8), "plane": dict(latent_dim=2),
                     "ae": dict(latent_dim=8, autoencoder=True)}.items():
        vaelab.train(Config().override(**SMALL, **kw), root / name, progress=False)
    return root


def _cli(env, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vaelab", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def page(runs, env, tmp_path_factory):
    out = tmp_path_factory.mktemp("lecture-page")
    r = _cli(env, "-q", "lecture", runs / "vae", runs / "plane", runs / "ae", "--out", out,
             "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "trained now" not in r.stdout  # every role was given
    return out / "index.html"


def _numbers(browser) -> dict:
    return browser.execute_script(
        "const o = {}; document.querySelectorAll('.num[data-key]').forEach("
        "e => { o[e.dataset.key] = Number(e.dataset.value); }); return o;")


def test_the_page_walks_the_lecture_with_every_figure_drawn(page, browser):
    text = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", text)  # nothing from the network
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    browser.get(page.as_uri())
    ids = browser.execute_script(
        "return [...document.querySelectorAll('section')].map(s => s.id);")
    assert ids == SECTIONS
    for sid in SECTIONS:
        drawn = browser.execute_script(f"""
            const s = document.getElementById('{sid}');
            const imgs = [...s.querySelectorAll('img')];
            return imgs.every(i => i.complete && i.naturalWidth > 0) &&
                   (imgs.length + s.querySelectorAll('svg').length +
                    s.querySelectorAll('table').length) > 0;""")
        assert drawn, sid
    assert browser.execute_script("return [...document.querySelectorAll('.live')]"
                                  ".every(e => e.hidden);")  # no controls without a server


def test_the_numbers_are_those_of_evaluate_and_baselines(page, runs, env, browser):
    browser.get(page.as_uri())
    got = _numbers(browser)
    ev = json.loads(_cli(env, "-q", "evaluate", runs / "vae", "--k", got["k"], "--json",
                         "--no-progress").stdout)
    # another process: its float32 sums may split differently (MKL threads), hence 1e-3
    assert got["vae-nll"] == pytest.approx(ev["nll"], abs=1e-3)
    assert got["vae-elbo"] == pytest.approx(-ev["elbo"], abs=1e-3)
    base = json.loads(_cli(env, "-q", "baselines", "--run", runs / "vae", "--models",
                           "gaussian", "--json").stdout)
    assert got["factorized-nll"] == pytest.approx(base[0]["nll"], abs=1e-6)
    assert abs(got["mle-argmax"] - got["mle-mean"]) <= 0.0025 / 2 + 1e-12  # half a grid step
    assert got["bayes-log-px"] >= -1e9 and got["bayes-gap"] >= -0.05  # KL >= 0, up to MC


def test_a_missing_role_is_trained_once_and_cached(runs, env, tmp_path):
    t0 = time.time()
    r = _cli(env, "-q", "lecture", runs / "vae", runs / "plane", "--out", tmp_path / "a",
             "--no-progress")
    assert r.returncode == 0, r.stderr
    assert re.search(r"autoencoder: .*\(trained now\)", r.stdout), r.stdout
    first = time.time() - t0
    t0 = time.time()
    r = _cli(env, "-q", "lecture", runs / "vae", runs / "plane", "--out", tmp_path / "b",
             "--no-progress")
    assert r.returncode == 0 and "trained now" not in r.stdout, r.stdout
    assert time.time() - t0 < max(30.0, first)
    r = _cli(env, "-q", "lecture", runs / "vae", runs / "vae", "--out", tmp_path / "c")
    assert r.returncode == 2 and "both a vae run" in r.stderr


def test_live_the_controls_are_answered_by_the_models(runs, env, tmp_path, browser):
    port = free_port()
    args = ["-q", "lecture", runs / "vae", runs / "plane", runs / "ae", "--out",
            tmp_path / "live", "--serve", "--port", port, "--no-progress"]
    with vaelab_server(args, port, env):
        url = f"http://127.0.0.1:{port}/"
        browser.get(url)
        wait_for(browser, "return !document.querySelector('.live').hidden;")
        before = browser.execute_script("return document.getElementById('mu-ll').textContent;")
        browser.execute_script("""const s = document.getElementById('mu');
            s.value = 0.05; s.dispatchEvent(new Event('input'));""")
        wait_for(browser, f"return document.getElementById('mu-ll').textContent !== {before!r};")
        post = browser.execute_script("return document.getElementById('bayes-post').src;")
        browser.execute_script("""const s = document.getElementById('bayes-index');
            s.value = 7; s.dispatchEvent(new Event('change'));""")
        wait_for(browser, f"return document.getElementById('bayes-post').src !== {post!r};")
        assert browser.execute_script("return document.body.dataset.bayesIndex;") == "7"
        mean = browser.execute_script("return document.getElementById('imagine-mean').src;")
        browser.execute_script("""const s = document.getElementById('temperature');
            s.value = 0.3; s.dispatchEvent(new Event('input'));""")
        wait_for(browser, f"return document.getElementById('imagine-mean').src !== {mean!r};")
