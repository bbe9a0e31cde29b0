"""``vaelab lecture --serve``: the lecture's page on the explorer's server, its controls
answered by the models (the maximum-likelihood curve at any mu, Bayes rule for any test
image, imagination at any temperature). Needs ``vaelab[serve]``."""
# (no "from __future__ import annotations": FastAPI reads the request models from them)

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from ..studies import lecture as study
from ..studies.sample import imagine
from .pictures import heatmap, png

router = APIRouter()


class Mu(BaseModel):
    mu: float = Field(ge=-10, le=10, allow_inf_nan=False)


class Index(BaseModel):
    index: int = Field(ge=0)


class Temperature(BaseModel):
    temperature: float = Field(gt=0, le=10, allow_inf_nan=False)


@router.get("/", response_class=HTMLResponse)
@router.get("/lecture", response_class=HTMLResponse)
def page(request: Request):
    return request.app.state.lecture["page"]


@router.post("/api/lecture/mle")
def mle(request: Request, req: Mu):
    m = request.app.state.lecture["mle"]
    ll = study.log_likelihood(m["values"], m["mus"].new_tensor([req.mu]), m["var"])
    return {"mu": req.mu, "log_likelihood": ll.item()}


@router.post("/api/lecture/bayes")
def bayes(request: Request, req: Index):
    state = request.app.state.lecture
    data = state["data"]
    if req.index >= len(data.test):
        raise HTTPException(422, f"index must be in 0..{len(data.test) - 1}")
    with state["lock"]:
        b = study.bayes(state["plane"], data, req.index)
    g = b["grid"]
    return {"index": req.index, "image": png(b["image"], scale=8), "lik": heatmap(g["log_lik"]),
            "prior": heatmap(g["log_prior"]), "post": heatmap(g["log_post"]),
            "q": heatmap(g["log_q"]), "log_px": b["log_px"], "elbo": b["elbo"],
            "gap": b["gap"]}


@router.post("/api/lecture/imagine")
def imagination(request: Request, req: Temperature):
    state = request.app.state.lecture
    with state["lock"]:
        g = imagine(state["vae"], 36, req.temperature, seed=0)
    return {"mean": png(g["mean"].cpu(), 6, scale=4), "sample": png(g["sample"].cpu(), 6,
                                                                      scale=4)}
