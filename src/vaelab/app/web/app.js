// The vaelab explorer: every control is one request, one batched forward pass.
"use strict";
const $ = (id) => document.getElementById(id);
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                 "#7f7f7f", "#bcbd22", "#17becf"];
let runs = [], run = null, examples = null, z = [], busy = {};

async function api(path, body) {
  const r = await fetch(path, body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || r.statusText);
  $("error").hidden = true;
  return data;
}

function fail(e) { $("error").textContent = e.message; $("error").hidden = false; }

// one request in flight per control; the latest wish wins
function latest(key, make) {
  if (busy[key]) { busy[key] = make; return; }
  busy[key] = make;
  const go = () => {
    const job = busy[key];
    busy[key] = "running";
    job().catch(fail).finally(() => {
      if (busy[key] !== "running") go(); else busy[key] = null;
    });
  };
  go();
}

function labelOf() { return run.conditional ? Number($("label").value) : null; }

async function choose(name) {
  run = runs.find((r) => r.name === name);
  const [c, h, w] = run.image_shape;
  $("about").textContent = `${run.data}, ${c}x${h}x${w}, latent ${run.latent_dim}` +
    `${run.layers > 1 ? ` (${run.layers} layers)` : ""}, ${run.likelihood} likelihood, ` +
    `${run.prior} prior`;
  $("label-box").hidden = !run.conditional;
  $("label").innerHTML = run.classes.map((n, i) => `<option value="${i}">${esc(n)}</option>`).join("");
  $("map-note").textContent = run.map.plane ?
    `the plane of the two principal axes of ${run.map.points.length} test codes (E_q z); colour: label` :
    "the 2-D latent itself; points: posterior means of test images, coloured by label";
  z = new Array(run.latent_dim).fill(0);
  examples = await api(`/api/examples?run=${encodeURIComponent(run.name)}`);
  buildSliders();
  drawMap();
  await Promise.all([imagine(), decodeSliders()]);
}

function esc(s) { const d = document.createElement("span"); d.textContent = s; return d.innerHTML; }

async function imagine() {
  const g = await api("/api/imagine", {run: run.name, n: 100, seed: Number($("draw-again").dataset.seed || 0),
    temperature: Number($("temperature").value), label: labelOf()});
  $("grid-data").src = g.data; $("grid-mean").src = g.mean; $("grid-sample").src = g.sample;
}

// ---- the latent map -------------------------------------------------------------------
let marker = null;
function toCanvas(p) {
  const cv = $("map"), [ex, ey] = run.map.extent;
  return [(p[0] / ex + 1) / 2 * cv.width, (1 - (p[1] / ey + 1) / 2) * cv.height];
}
function fromCanvas(x, y) {
  const cv = $("map"), [ex, ey] = run.map.extent;
  return [(x / cv.width * 2 - 1) * ex, (1 - y / cv.height * 2) * ey];
}
function drawMap() {
  const cv = $("map"), g = cv.getContext("2d");
  g.fillStyle = "#fff"; g.fillRect(0, 0, cv.width, cv.height);
  g.strokeStyle = "#ddd"; g.beginPath();
  g.moveTo(cv.width / 2, 0); g.lineTo(cv.width / 2, cv.height);
  g.moveTo(0, cv.height / 2); g.lineTo(cv.width, cv.height / 2); g.stroke();
  run.map.points.forEach((p, i) => {
    const [x, y] = toCanvas(p);
    g.fillStyle = run.map.labels.length ? COLOURS[run.map.labels[i] % 10] : "#555";
    g.fillRect(x - 1, y - 1, 2.5, 2.5);
  });
  if (marker) {
    const [x, y] = toCanvas(marker);
    g.strokeStyle = "#000"; g.lineWidth = 2; g.beginPath(); g.arc(x, y, 7, 0, 7); g.stroke(); g.lineWidth = 1;
  }
}
$("map").addEventListener("mousemove", (ev) => {
  const r = ev.target.getBoundingClientRect();
  const p = fromCanvas((ev.clientX - r.left) * ev.target.width / r.width,
                       (ev.clientY - r.top) * ev.target.height / r.height);
  $("map-point").textContent = `(${p[0].toFixed(2)}, ${p[1].toFixed(2)})`;
  latest("map", async () => {
    const d = await api("/api/decode", {run: run.name, plane: [p], label: labelOf(), scale: 6});
    $("map-image").src = d.mean[0];
  });
});

// ---- sliders ---------------------------------------------------------------------------
function buildSliders() {
  const box = $("sliders");
  box.innerHTML = "";
  run.order.forEach((d) => {
    box.insertAdjacentHTML("beforeend",
      // dimensions numbered from 1, as in the report's traversals
      `<span>z<sub>${d + 1}</sub> <span class="note">${run.dim_labels[d]}</span></span>` +
      `<input type="range" min="-3" max="3" step="0.05" value="0" data-dim="${d}" aria-label="z${d + 1}">` +
      `<output id="zv${d}">0.00</output>`);
  });
  box.querySelectorAll("input").forEach((s) => s.addEventListener("input", () => {
    z[Number(s.dataset.dim)] = Number(s.value);
    $(`zv${s.dataset.dim}`).textContent = Number(s.value).toFixed(2);
    decodeSliders();
  }));
}
function setSliders(values) {
  z = values.slice();
  $("sliders").querySelectorAll("input").forEach((s) => {
    const d = Number(s.dataset.dim);
    s.value = z[d]; $(`zv${d}`).textContent = z[d].toFixed(2);
  });
  decodeSliders();
}
function decodeSliders() {
  return new Promise((done) => latest("sliders", async () => {
    const d = await api("/api/decode", {run: run.name, z: [z], label: labelOf(), scale: 6});
    $("slider-image").src = d.mean[0];
    done();
  }));
}

// ---- draw or drop ----------------------------------------------------------------------
const pad = $("pad"), pen = pad.getContext("2d");
let drawing = false;
function clearPad() { pen.fillStyle = "#000"; pen.fillRect(0, 0, pad.width, pad.height); }
function stroke(ev) {
  const r = pad.getBoundingClientRect();
  const x = (ev.clientX - r.left) * pad.width / r.width, y = (ev.clientY - r.top) * pad.height / r.height;
  pen.fillStyle = "#fff"; pen.beginPath(); pen.arc(x, y, pad.width / 18, 0, 7); pen.fill();
}
pad.addEventListener("pointerdown", (ev) => { drawing = true; stroke(ev); });
pad.addEventListener("pointermove", (ev) => { if (drawing) stroke(ev); });
window.addEventListener("pointerup", () => { if (drawing) { drawing = false; encodePad(); } });
$("pad-clear").onclick = () => { clearPad(); };
$("pad-example").onclick = () => {
  const i = Math.floor(Math.random() * examples.pixels.length);
  showPixels(examples.pixels[i]); encodePad();
};

function padPixels() {  // the pad at the run's size, channels first, in [0, 1]
  const [c, h, w] = run.image_shape, small = document.createElement("canvas");
  small.width = w; small.height = h;
  const g = small.getContext("2d");
  g.imageSmoothingEnabled = true; g.drawImage(pad, 0, 0, w, h);
  const rgba = g.getImageData(0, 0, w, h).data, out = new Array(c * h * w);
  for (let ch = 0; ch < c; ch++)
    for (let i = 0; i < h * w; i++)
      out[ch * h * w + i] = (c === 1 ? (rgba[4 * i] + rgba[4 * i + 1] + rgba[4 * i + 2]) / 3 : rgba[4 * i + ch]) / 255;
  return out;
}
function showPixels(px) {
  const [c, h, w] = run.image_shape, small = document.createElement("canvas");
  small.width = w; small.height = h;
  const g = small.getContext("2d"), img = g.createImageData(w, h);
  for (let i = 0; i < h * w; i++) {
    for (let ch = 0; ch < 3; ch++) img.data[4 * i + ch] = 255 * px[(c === 1 ? 0 : ch) * h * w + i];
    img.data[4 * i + 3] = 255;
  }
  g.putImageData(img, 0, 0);
  pen.imageSmoothingEnabled = false; pen.drawImage(small, 0, 0, pad.width, pad.height);
}
function encodePad() {
  latest("encode", async () => {
    const r = await api("/api/encode", {run: run.name, pixels: padPixels(), label: null});
    $("enc-input").src = r.input; $("enc-recon").src = r.recon;
    const unit = r.discrete ? "" : " (a density)";
    const rows = [["−ELBO", `${(-r.elbo).toFixed(2)} nats${r.bits_per_dim !== null ? `, ${r.bits_per_dim.toFixed(4)} bits/dim` : unit}`],
                  [`−log p(x), k = ${r.k}`, `${(-r.log_px).toFixed(2)} nats${r.nll_bits_per_dim !== null ? `, ${r.nll_bits_per_dim.toFixed(4)} bits/dim` : unit}`]];
    $("enc-numbers").innerHTML = rows.map(([a, b]) => `<tr><td>${a}</td><td>${b}</td></tr>`).join("");
    drawPosterior(r.mean, r.std);
    marker = r.point; drawMap();
    $("classes").innerHTML = r.p_y ? "<p>p(y|x) by Bayes rule from log p(x|y):</p>" + r.p_y.map((p, i) =>
      `<div>${esc(run.classes[i])} <span class="bar" style="width:${(120 * p).toFixed(0)}px"></span> ${p.toFixed(3)}</div>`).join("") : "";
    $("bayes").hidden = !r.bayes;
    if (r.bayes) { $("bayes-post").src = r.bayes.posterior; $("bayes-q").src = r.bayes.q; }
    setSliders(r.mean);
  });
}
function drawPosterior(mean, std) {
  const cv = $("posterior"), g = cv.getContext("2d"), n = mean.length, w = cv.width / n;
  g.fillStyle = "#fff"; g.fillRect(0, 0, cv.width, cv.height);
  const y = (v) => cv.height / 2 - v / 4 * cv.height / 2;
  g.strokeStyle = "#ccc"; g.beginPath(); g.moveTo(0, y(0)); g.lineTo(cv.width, y(0)); g.stroke();
  run.order.forEach((d, i) => {
    g.fillStyle = "#9cf"; g.fillRect(i * w + 1, y(mean[d] + std[d]), Math.max(1, w - 2), y(mean[d] - std[d]) - y(mean[d] + std[d]));
    g.fillStyle = "#036"; g.fillRect(i * w + 1, y(mean[d]) - 1, Math.max(1, w - 2), 2);
  });
}
pad.addEventListener("dragover", (ev) => ev.preventDefault());
pad.addEventListener("drop", (ev) => { ev.preventDefault(); loadFile(ev.dataTransfer.files[0]); });
$("file").onchange = (ev) => loadFile(ev.target.files[0]);
function loadFile(f) {
  if (!f) return;
  const img = new Image();
  img.onload = () => { clearPad(); pen.imageSmoothingEnabled = true; pen.drawImage(img, 0, 0, pad.width, pad.height); encodePad(); };
  img.onerror = () => fail(new Error(`${f.name} is not an image the browser can read`));
  img.src = URL.createObjectURL(f);
}

// ---- interpolation ---------------------------------------------------------------------
$("interp-data").onclick = () => latest("interp", async () => {
  const n = examples.pixels.length, i = Math.floor(Math.random() * n), j = (i + 1 + Math.floor(Math.random() * (n - 1))) % n;
  $("interp").src = (await api("/api/interpolate", {run: run.name, a: examples.pixels[i], b: examples.pixels[j]})).images;
});
$("interp-prior").onclick = () => latest("interp", async () => {
  $("interp").src = (await api("/api/interpolate", {run: run.name, seed: Math.floor(Math.random() * 1e6)})).images;
});

// ---- controls --------------------------------------------------------------------------
$("temperature").addEventListener("input", () => {
  $("temperature-value").textContent = Number($("temperature").value).toFixed(2);
  latest("imagine", imagine);
});
$("draw-again").onclick = () => {
  $("draw-again").dataset.seed = Math.floor(Math.random() * 1e6);
  latest("imagine", imagine);
};
$("label").onchange = () => { latest("imagine", imagine); decodeSliders(); };
$("sliders-zero").onclick = () => setSliders(new Array(run.latent_dim).fill(0));
$("run").onchange = () => choose($("run").value).catch(fail);

(async () => {
  clearPad();
  try {
    runs = (await api("/api/runs")).runs;
    $("run").innerHTML = runs.map((r) => `<option>${esc(r.name)}</option>`).join("");
    await choose(runs[0].name);
    document.body.dataset.ready = "1";
  } catch (e) { fail(e); }
})();
