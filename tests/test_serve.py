"""`vaelab serve`: a real uvicorn process, its HTTP API with good and bad requests (it keeps
serving), 32 concurrent clients, and the page in headless Chromium."""
from __future__ import annotations

import concurrent.futures as cf

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import vaelab  # noqa: E402
from helpers import free_port, vaelab_server, wait_for  # noqa: E402
from vaelab.config import Config  # noqa: E402

pytestmark = pytest.mark.slow  # real processes, servers, browsers, trainings


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    vaelab.train(Config().override(epochs=3, hidden=(64,), latent_dim=4), root / "four",
                 progress=False)
    vaelab.train(Config().override(epochs=3, hidden=(64,), latent_dim=2), root / "two",
                 progress=False)
    vaelab.train(Config().override(epochs=2, hidden=(64,), latent_dim=3, conditional=True),
                 root / "labels", progress=False)
    return root


@pytest.fixture(scope="module")
def server(runs, tmp_path_factory):
    port = free_port()
    before = {p: p.stat().st_mtime_ns for p in runs.rglob("*")}
    with vaelab_server(["serve", runs / "four", runs / "two", runs / "labels", "--port", port],
                       port):
        yield f"http://127.0.0.1:{port}"
    after = {p: p.stat().st_mtime_ns for p in runs.rglob("*")}
    assert after == before  # the server never wrote into a run directory


def test_the_api_answers(server):
    r = httpx.get(server + "/api/runs").json()["runs"]
    assert [x["name"] for x in r] == ["four", "two", "labels"]
    four = r[0]
    assert sorted(four["order"]) == [0, 1, 2, 3] and len(four["map"]["points"]) > 100
    assert len(four["dim_labels"]) == 4 and all(t.startswith("KL ") for t in four["dim_labels"])
    d = httpx.post(server + "/api/decode", json={"run": "four", "z": [[0, 0, 0, 0], [1, 0, 0, 0]],
                                                  "sample": True}).json()
    assert len(d["mean"]) == 2 and d["mean"][0].startswith("data:image/png;base64,")
    assert d["mean"][0] != d["mean"][1] and len(d["sample"]) == 2
    g = httpx.post(server + "/api/imagine", json={"run": "four", "n": 25,
                                                   "temperature": 0.5}).json()
    assert set(g) == {"data", "mean", "sample"}
    ex = httpx.get(server + "/api/examples", params={"run": "four"}).json()
    e = httpx.post(server + "/api/encode", json={"run": "four", "pixels": ex["pixels"][0]},
                   timeout=30).json()
    assert len(e["mean"]) == 4 and all(s > 0 for s in e["std"])
    assert e["log_px"] >= e["elbo"] - 5 and e["bits_per_dim"] > 0 and len(e["point"]) == 2


def test_a_2d_run_shows_bayes_rule_and_a_conditional_one_p_y_given_x(server):
    ex = httpx.get(server + "/api/examples", params={"run": "two"}).json()
    e = httpx.post(server + "/api/encode", json={"run": "two", "pixels": ex["pixels"][1]},
                   timeout=30).json()
    assert set(e["bayes"]) >= {"posterior", "q", "box"}
    assert e["bayes"]["log_px_grid"] >= e["log_px"] - 5  # the grid's exact log p(x)
    ex = httpx.get(server + "/api/examples", params={"run": "labels"}).json()
    e = httpx.post(server + "/api/encode", json={"run": "labels", "pixels": ex["pixels"][0]},
                   timeout=60).json()
    assert len(e["p_y"]) == 10 and abs(sum(e["p_y"]) - 1) < 1e-4


@pytest.mark.parametrize("path, body, status, words", [
    ("/api/decode", {"run": "nope", "z": [[0]]}, 404, "no run"),
    ("/api/decode", {"run": "four"}, 422, "give z"),
    ("/api/decode", {"run": "four", "z": [[0, 0]]}, 422, "4 numbers"),
    ("/api/decode", {"run": "four", "z": [[1e9, 0, 0, 0]]}, 422, "within"),
    ("/api/decode", {"run": "four", "z": [[0, 0, 0, 0]] * 401}, 422, "bad request"),
    ("/api/decode", {"run": "four", "z": "x"}, 422, "bad request"),
    ("/api/decode", {"run": "four", "z": [[0, 0, 0, 0]], "label": 3}, 422, "no label"),
    ("/api/imagine", {"run": "four", "temperature": -1}, 422, "temperature"),
    ("/api/imagine", {"run": "four", "n": 10 ** 6}, 422, "n"),
    ("/api/encode", {"run": "four", "pixels": [0.5] * 3}, 422, "64 values"),
    ("/api/encode", {"run": "four", "pixels": [2.0] * 64}, 422, "[0, 1]"),
    ("/api/interpolate", {"run": "four", "a": [0.0] * 64}, 422, "both"),
])
def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(server, path, body,
                                                                   status, words):
    r = httpx.post(server + path, json=body)
    assert r.status_code == status and words in r.json()["error"], r.text
    assert httpx.get(server + "/api/runs").status_code == 200


def test_malformed_and_oversized_bodies(server):
    r = httpx.post(server + "/api/decode", content=b'{"run": "four", "z": [[NaN, 0, 0, 0]]}',
                   headers={"content-type": "application/json"})
    assert r.status_code == 422 and "finite" in r.json()["error"]
    r = httpx.post(server + "/api/decode", content=b"{nope", headers={"content-type":
                                                                        "application/json"})
    assert r.status_code == 422
    # 2 MiB announced: refused on its head, before a byte of it is read (a client that went
    # on writing it could see the closed connection's reset before the answer, so the test
    # sends the head alone and reads)
    import socket

    port = int(server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /api/encode HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nContent-Length: %d\r\n\r\n" % (2 << 20))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413") and b"over 1048576 bytes" in answer
    assert httpx.get(server + "/nothing-here").status_code == 404
    assert httpx.get(server + "/../config.toml").status_code == 404


def test_32_concurrent_clients_get_no_error(server):
    def one(i):
        with httpx.Client(timeout=60) as c:
            return [c.post(server + "/api/decode", json={"run": "four", "z": [[i / 32, 0, 0, 0]]})
                    .status_code for _ in range(5)]

    with cf.ThreadPoolExecutor(32) as pool:
        codes = [c for cs in pool.map(one, range(32)) for c in cs]
    assert codes == [200] * 160


# ---- the page in Chromium ----------------------------------------------------------------
def test_the_page_moves_draws_and_switches(server, browser):
    browser.set_window_size(1280, 1800)
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    wait_for(browser, "return document.body.dataset.ready === '1';")
    assert wait_for(browser, "return document.getElementById('grid-mean').naturalWidth;") > 0
    assert wait_for(browser, "return document.getElementById('slider-image').naturalWidth;") > 0
    # a slider moves: the decoded image changes
    before = browser.execute_script("return document.getElementById('slider-image').src;")
    browser.execute_script("""const s = document.querySelector('#sliders input');
        s.value = 2.5; s.dispatchEvent(new Event('input'));""")
    wait_for(browser, f"return document.getElementById('slider-image').src !== {before!r};")
    # drawing on the canvas: the reconstruction and the numbers appear
    pad = browser.find_element(By.ID, "pad")
    ActionChains(browser).move_to_element_with_offset(pad, -40, -60).click_and_hold() \
        .move_by_offset(20, 40).move_by_offset(20, 40).move_by_offset(10, 30).release().perform()
    wait_for(browser, "return document.getElementById('enc-recon').naturalWidth > 0;")
    text = wait_for(browser, "return document.getElementById('enc-numbers').innerText;")
    assert "ELBO" in text and "bits/dim" in text
    # hovering the map decodes the point under the cursor
    ActionChains(browser).move_to_element_with_offset(browser.find_element(By.ID, "map"), 30, -20)\
        .perform()
    wait_for(browser, "return document.getElementById('map-image').naturalWidth > 0;")
    # another run: its own description and sliders
    browser.execute_script("""const r = document.getElementById('run');
        r.value = 'two'; r.dispatchEvent(new Event('change'));""")
    wait_for(browser, "return document.getElementById('about').textContent.includes('latent 2');")
    wait_for(browser, "return document.querySelectorAll('#sliders input').length === 2;")
    assert browser.find_element(By.ID, "sliders").text.count("KL ") == 2  # each dim's label
    # numbered from 1 as in the report's traversals: z1 and z2, in the ranked order
    labels = browser.execute_script("""return [...document.querySelectorAll(
        '#sliders input')].map((s) => [s.dataset.dim, s.getAttribute('aria-label')]);""")
    assert sorted(label for _, label in labels) == ["z1", "z2"]
    assert all(label == f"z{int(d) + 1}" for d, label in labels)
    assert not browser.execute_script("return !document.getElementById('error').hidden;")
