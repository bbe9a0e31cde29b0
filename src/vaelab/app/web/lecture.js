// The lecture's page: static as written; with `vaelab lecture --serve` its controls are
// answered by the models on the server that serves it (same origin, nothing else).
(() => {
  const live = document.body.dataset.live === "1";
  document.querySelectorAll(".live").forEach((e) => { e.hidden = !live; });
  if (!live) return;
  const $ = (id) => document.getElementById(id);
  const post = async (path, body) => {
    const r = await fetch(path, {method: "POST", headers: {"content-type": "application/json"},
                                 body: JSON.stringify(body)});
    const out = await r.json();
    if (!r.ok) throw new Error(out.error || r.statusText);
    return out;
  };
  const setNumber = (key, value, digits) => {
    const e = document.querySelector(`.num[data-key="${key}"]`);
    if (e) { e.dataset.value = value; e.textContent = value.toFixed(digits); }
  };
  // maximum likelihood: the log-likelihood at the chosen mu
  $("mu").addEventListener("input", async () => {
    const mu = Number($("mu").value);
    $("mu-value").textContent = mu.toFixed(3);
    const r = await post("/api/lecture/mle", {mu});
    $("mu-ll").textContent = r.log_likelihood.toFixed(2);
    $("mu-ll").dataset.value = r.log_likelihood;
  });
  // Bayes rule for another test image
  $("bayes-index").addEventListener("change", async () => {
    const r = await post("/api/lecture/bayes", {index: Number($("bayes-index").value)});
    for (const k of ["image", "lik", "prior", "post", "q"]) $(`bayes-${k}`).src = r[k];
    setNumber("bayes-log-px", r.log_px, 2);
    setNumber("bayes-elbo", r.elbo, 2);
    setNumber("bayes-gap", r.gap, 2);
    document.body.dataset.bayesIndex = r.index;
  });
  // imagination at a temperature
  $("temperature").addEventListener("input", async () => {
    const t = Number($("temperature").value);
    $("temperature-value").textContent = t.toFixed(2);
    const r = await post("/api/lecture/imagine", {temperature: t});
    $("imagine-mean").src = r.mean;
    $("imagine-sample").src = r.sample;
  });
})();
