"""``vaelab serve``: the latent space live in the browser. An ASGI app (FastAPI on uvicorn,
the optional extra ``vaelab[serve]``) over one or more loaded runs (:mod:`.explore`); one
page and its script, shipped in the package (``vaelab/app/web``), nothing from the
internet. Every request is checked (size, shapes, ranges) and answered with a 4xx and a
message when it is wrong; the server only reads its runs and never writes into them."""
# (no "from __future__ import annotations": FastAPI reads the request models of the
# handlers below from their annotations, which must be the classes themselves)

import logging
import math
import socket
from importlib import resources
from pathlib import Path

import torch
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from ..errors import ConfigError
from .explore import Explorer
from .guard import BodyLimit, server_settings
from .pictures import heatmap, png

log = logging.getLogger(__name__)
MAX_IMAGES = 400  # images per request
MAX_Z = 50.0  # |z| of a requested code


WEB = resources.files(__package__) / "web"  # the page, its script and style
router = APIRouter()


# ---- every request checked: shapes, ranges (sizes and times: .guard) ------------------
async def invalid(request: Request, exc: RequestValidationError):
    where = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or 'body'}: {e['msg']}"
                      for e in exc.errors()[:3])
    return JSONResponse({"error": f"bad request: {where}"}, 422)


async def http_error(request: Request, exc: HTTPException):
    return JSONResponse({"error": exc.detail}, exc.status_code)


def explorer(request: Request, name: str) -> Explorer:
    runs = request.app.state.runs
    if name not in runs:
        raise HTTPException(404, f"no run {name!r}; the runs are: {', '.join(runs)}")
    return runs[name]


def checked_image(e: Explorer, pixels: list[float]) -> torch.Tensor:
    c, h, w = e.model.image_shape
    if len(pixels) != c * h * w:
        raise HTTPException(422, f"the image must have {c}x{h}x{w} = {c * h * w} values "
                                 f"in [0, 1] (channels first), got {len(pixels)}")
    x = torch.tensor(pixels, dtype=torch.float32).reshape(1, c, h, w)
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise HTTPException(422, "pixel values must be in [0, 1]")
    return e.quantize(x)


def checked_label(e: Explorer, label: int | None) -> int | None:
    if label is not None and not (e.model.classes and 0 <= label < e.model.classes):
        raise HTTPException(422, "label: this run takes no label" if not e.model.classes
                            else f"label must be in 0..{e.model.classes - 1}")
    return label


class Decode(BaseModel):
    run: str
    z: list[list[float]] | None = Field(None, max_length=MAX_IMAGES)
    plane: list[list[float]] | None = Field(None, max_length=MAX_IMAGES)
    label: int | None = None
    sample: bool = False
    scale: int = Field(4, ge=1, le=16)


class Imagine(BaseModel):
    run: str
    n: int = Field(100, ge=1, le=MAX_IMAGES)
    temperature: float = Field(1.0, gt=0, le=10, allow_inf_nan=False)
    seed: int = Field(0, ge=0, le=2 ** 31)
    label: int | None = None


class Image(BaseModel):
    run: str
    pixels: list[float] = Field(max_length=3 * 256 * 256)
    label: int | None = None


class Interpolate(BaseModel):
    run: str
    a: list[float] | None = Field(None, max_length=3 * 256 * 256)
    b: list[float] | None = Field(None, max_length=3 * 256 * 256)
    steps: int = Field(10, ge=2, le=32)
    seed: int = Field(0, ge=0, le=2 ** 31)


def codes(e: Explorer, req: Decode) -> torch.Tensor:
    if (req.z is None) == (req.plane is None):
        raise HTTPException(422, "give z (codes) or plane (points of the map), one of them")
    rows, width = (req.z, e.model.latent_dim) if req.z is not None else (req.plane, 2)
    if not rows or any(len(r) != width for r in rows):
        raise HTTPException(422, f"each row must have {width} numbers")
    t = torch.tensor(rows, dtype=torch.float64)
    if not torch.isfinite(t).all() or t.abs().max() > MAX_Z:
        raise HTTPException(422, f"values must be finite and within +-{MAX_Z:g}")
    return t.float() if req.z is not None else e.plane(t)


# ---- the routes ------------------------------------------------------------------------
@router.get("/", response_class=HTMLResponse)
def page():
    return (WEB / "index.html").read_text(encoding="utf-8")


@router.get("/app.js")
def script():
    return Response((WEB / "app.js").read_text(encoding="utf-8"), media_type="text/javascript")


@router.get("/style.css")
def style():
    return Response((WEB / "style.css").read_text(encoding="utf-8"), media_type="text/css")


@router.get("/api/runs")
def list_runs(request: Request):
    return {"runs": [{"name": name, **e.info()} for name, e in request.app.state.runs.items()]}


@router.get("/api/examples")
def examples(request: Request, run: str):
    x = explorer(request, run).examples
    return {"images": [png(x[i:i + 1], scale=4) for i in range(len(x))],
            "pixels": [x[i].reshape(-1).tolist() for i in range(len(x))]}


@router.post("/api/decode")
def decode(request: Request, req: Decode):
    e = explorer(request, req.run)
    out = e.decode(codes(e, req), checked_label(e, req.label), req.sample)
    return {k: [png(v[i:i + 1], scale=req.scale) for i in range(len(v))]
            for k, v in out.items()}


@router.post("/api/imagine")
def imagine(request: Request, req: Imagine):
    e = explorer(request, req.run)
    g = e.imagine(req.n, req.temperature, req.seed, checked_label(e, req.label))
    nrow = max(1, round(math.sqrt(req.n)))
    data = e.examples[:req.n]
    return {"data": png(data, max(1, round(math.sqrt(len(data)))), scale=2),
            "mean": png(g["mean"], nrow, scale=2), "sample": png(g["sample"], nrow, scale=2)}


@router.post("/api/encode")
def encode(request: Request, req: Image):
    e = explorer(request, req.run)
    x = checked_image(e, req.pixels)
    r = e.encode(x, checked_label(e, req.label))
    r["recon"] = png(r["recon"], scale=6)
    r["input"] = png(x, scale=6)
    if e.model.planar:
        g = e.bayes(x)
        r["bayes"] = {"posterior": heatmap(g["log_post"]), "q": heatmap(g["log_q"]),
                      "box": g["box"], "log_px_grid": g["log_px"]}
    return r


@router.post("/api/interpolate")
def interpolate(request: Request, req: Interpolate):
    e = explorer(request, req.run)
    if (req.a is None) != (req.b is None):
        raise HTTPException(422, "give both images a and b, or neither (prior samples)")
    xa = xb = None
    if req.a is not None:
        xa, xb = checked_image(e, req.a), checked_image(e, req.b)
    path = e.interpolate(xa, xb, req.steps, req.seed)
    return {"images": png(path, len(path), scale=3)}


def create_app(runs: dict[str, Explorer], first: tuple[APIRouter, ...] = ()) -> FastAPI:
    """The FastAPI app over ``runs`` (name -> Explorer); the routes of ``first`` come
    before the explorer's own."""
    app = FastAPI(title="vaelab explorer", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.runs = runs
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)
    for r in (*first, router):
        app.include_router(r)
    return app


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port``, before anything is loaded or announced."""
    if not 0 < port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {port}")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host} port {port} ({e.strerror or e}): the port "
                          "is in use or the address is not this machine's; choose another "
                          "with --port (or --host)") from None
    return sock


def explorers(specs: list[str], device: str = "cpu", data_dir: str | None = None
              ) -> dict[str, Explorer]:
    """name -> Explorer for each run (a run's folder name, or USER/REPO for hf://)."""
    runs = {}
    for spec in specs:
        name = Path(spec).name if not str(spec).startswith("hf://") else str(spec)[5:]
        while name in runs:
            name += "'"
        runs[name] = Explorer(spec, device, data_dir)
    return runs


def run_server(app: FastAPI, sock: socket.socket, host: str, ready=None) -> None:
    """Serve ``app`` (behind the guard's limits) on ``sock`` until interrupted."""
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this address can use the models "
                    "(the default, 127.0.0.1, is this machine only)", host)
    server = uvicorn.Server(uvicorn.Config(BodyLimit(app), log_level="warning",
                                           **server_settings()))
    if ready is not None:
        ready(server)
    server.run(sockets=[sock])
