"""The portal's FastAPI application: server-rendered pages (Jinja2, no JavaScript needed) and the
JSON API behind every page, both answered from a :class:`~pycvmfs.web.index.WebIndex`.

Pages and their API twins (stable paths, permalinks: every view is one GET URL)::

    /                                   /api/releases            releases, slots, repositories
    /releases/{release}                 /api/releases/{release}
    /releases/{release}/{platform}      /api/releases/{release}/{platform}
    /nightlies/{slot}                   /api/nightlies/{slot}    the status grid
    /nightlies/{slot}/{day}/{platform}  /api/nightlies/{slot}/{day}/{platform}
    /packages/{name}                    /api/packages/{name}
    /search?q=                          /api/search?q=
    /diff?a=..&b=..                     /api/diff?a=..&b=..
    /repositories, /repositories/{fqrn}  /api/repositories, /api/repositories/{fqrn}

and the repository browser, replicas, metrics and containers of
:mod:`pycvmfs.web.repo_routes`.

Unknown names answer 404 and malformed diff operands 400, with a message naming them. With a
``refresh_interval``, a background thread refreshes the index (at start, then periodically);
a request never reads a repository, except the browser's tree and diff views (a few capped
lookups through the verified reader; a read that fails verification answers 502).
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape

from pycvmfs.web import models
from pycvmfs.web.browse import BrowseBadRequest, BrowseNotFound, Browser, BrowseRefused
from pycvmfs.web.cache import ResponseCache
from pycvmfs.web.index import BadSpec, UnknownName, WebIndex
from pycvmfs.web.plot import human_bytes
from pycvmfs.web.repo_routes import add_repository_routes
from pycvmfs.web.repotables import duration

__all__ = ["create_app"]

_HERE = Path(__file__).parent
_ERRORS = {"model": models.ErrorBody}
_TITLES = {400: "Bad request", 404: "Not found", 502: "Refused"}


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "–"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} s"


def _duration(value: float | None) -> str:
    return "–" if value is None else duration(value)


def _run_time(value: float | None) -> str:
    """A build or test time: tenths of a second below 10 s, then as :func:`duration`."""
    if value is None:
        return "–"
    return f"{value:.1f} s" if value < 10 else duration(value)


def _dependency_links(depends: list[dict[str, str]]) -> Markup:
    """A package table's dependency cell: ``name-hash`` per dependency, each name a link to its
    row. Built here rather than in a template loop, where it was most of a large table's time."""
    cells = []
    for d in depends:
        name = escape(d["name"])
        cells.append(f'<a href="#pkg-{name}">{name}</a>-<code>{escape(d["hash"])}</code>')
    return Markup(", ".join(cells))


class _Failure(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _ask(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except (UnknownName, BrowseNotFound) as e:
        raise _Failure(404, str(e)) from None
    except (BadSpec, BrowseBadRequest) as e:
        raise _Failure(400, str(e)) from None
    except BrowseRefused as e:
        raise _Failure(502, str(e)) from None


def _answer(data: Any) -> Response:
    """An API answer serialised by the C JSON encoder, as built by the index. The route's
    ``response_model`` documents it in ``/openapi.json``; that the answers match it is tested
    (tests/web/test_api_schema.py and the schemathesis run), not re-validated per request,
    which took most of the time of a large table."""
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return Response(body.encode(), media_type="application/json")


def _refresher(index: WebIndex, interval: float, stop: threading.Event) -> None:
    while True:
        index.refresh()
        if stop.wait(interval):
            return


def create_app(index: WebIndex, *, refresh_interval: float | None = 300.0,
               cache_bytes: int = 256 << 20) -> FastAPI:
    """The portal on ``index``; ``refresh_interval`` (seconds, None: never) re-reads the
    repositories' manifests in a background thread while the app runs; ``cache_bytes`` bounds
    the answers kept until the index changes (:mod:`pycvmfs.web.cache`; 0: none kept)."""
    browser = Browser(index)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        thread = None
        if refresh_interval is not None:
            thread = threading.Thread(target=_refresher, args=(index, refresh_interval, stop),
                                      name="pycvmfs-web-refresh", daemon=True)
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread is not None:
                thread.join()
            browser.close()

    app = FastAPI(title="pycvmfs software stacks portal", version="1",
                  description="Releases, packages, diffs and nightly results of the software "
                              "stacks published on CernVM-FS, read through the verified reader.",
                  lifespan=lifespan)
    app.mount("/static", StaticFiles(directory=_HERE / "static"), name="static")
    if cache_bytes > 0:
        app.add_middleware(ResponseCache, index=index, max_bytes=cache_bytes)
    templates = Jinja2Templates(directory=_HERE / "templates")
    templates.env.filters["when"] = _when
    templates.env.filters["seconds"] = _seconds
    templates.env.filters["duration"] = _duration
    templates.env.filters["run_time"] = _run_time
    templates.env.filters["bytes"] = human_bytes
    templates.env.filters["dependency_links"] = _dependency_links
    app.state.index = index
    app.state.browser = browser

    @app.exception_handler(_Failure)
    async def failure(request: Request, exc: _Failure) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)
        return page(request, "error.html", {"title": _TITLES.get(exc.status, "Error"),
                                            "message": str(exc)}, status=exc.status)

    def page(request: Request, name: str, context: dict[str, Any], *,
             status: int = 200) -> HTMLResponse:
        repos = index.repositories()
        context = {"repositories": repos,
                   "problems": [r for r in repos if r["error"]], **context}
        return templates.TemplateResponse(request, name, context, status_code=status)

    # -- JSON API ------------------------------------------------------------------------------
    @app.get("/api/repositories", response_model=list[models.Repository], tags=["api"])
    def api_repositories() -> Any:
        return _answer(index.repositories())

    @app.get("/api/repositories/{fqrn}", response_model=models.Repository, tags=["api"],
             responses={404: _ERRORS})
    def api_repository(fqrn: str) -> Any:
        return _answer(_ask(index.repository, fqrn))

    @app.get("/api/releases", response_model=models.Releases, tags=["api"])
    def api_releases() -> Any:
        return _answer(index.releases())

    @app.get("/api/releases/{release}", response_model=models.Release, tags=["api"],
             responses={404: _ERRORS})
    def api_release(release: str) -> Any:
        return _answer(_ask(index.release, release))

    @app.get("/api/releases/{release}/{platform}", response_model=models.PackageTable,
             tags=["api"], responses={404: _ERRORS})
    def api_release_platform(release: str, platform: str) -> Any:
        return _answer(_ask(index.release_packages, release, platform))

    @app.get("/api/nightlies/{slot}", response_model=models.Nightly, tags=["api"],
             responses={404: _ERRORS})
    def api_nightly(slot: str) -> Any:
        return _answer(_ask(index.nightly, slot))

    @app.get("/api/nightlies/{slot}/{day}/{platform}", response_model=models.PackageTable,
             tags=["api"], responses={404: _ERRORS})
    def api_nightly_day(slot: str, day: str, platform: str) -> Any:
        return _answer(_ask(index.release_packages, slot, platform, day))

    @app.get("/api/packages/{name}", response_model=models.Package, tags=["api"],
             responses={404: _ERRORS})
    def api_package(name: str) -> Any:
        return _answer(_ask(index.package, name))

    @app.get("/api/search", response_model=models.SearchResult, tags=["api"])
    def api_search(q: str = Query("", max_length=200)) -> Any:
        return _answer({"q": q, "hits": index.search(q)})

    @app.get("/api/diff", response_model=models.Diff, tags=["api"],
             responses={400: _ERRORS, 404: _ERRORS})
    def api_diff(a: str = Query(..., max_length=300), b: str = Query(..., max_length=300)
                 ) -> Any:
        return _answer(_ask(index.diff, a, b))

    # -- pages ---------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home(request: Request) -> HTMLResponse:
        return page(request, "index.html", {"title": "Software stacks", **index.releases(),
                                            "replica_status": index.replicas(),
                                            "images": index.containers()["images"]})

    @app.get("/releases/{release}", response_class=HTMLResponse, include_in_schema=False)
    def release_page(request: Request, release: str) -> HTMLResponse:
        data = _ask(index.release, release)
        return page(request, "release.html", {"title": release, "release": data})

    @app.get("/releases/{release}/{platform}", response_class=HTMLResponse,
             include_in_schema=False)
    def release_platform_page(request: Request, release: str, platform: str) -> HTMLResponse:
        table = _ask(index.release_packages, release, platform)
        return page(request, "packages.html", {"title": f"{release} on {platform}",
                                               "table": table, "spec": f"{release}/{platform}"})

    @app.get("/nightlies/{slot}", response_class=HTMLResponse, include_in_schema=False)
    def nightly_page(request: Request, slot: str) -> HTMLResponse:
        grid = _ask(index.nightly, slot)
        return page(request, "nightly.html", {"title": f"Nightly {slot}", "grid": grid})

    @app.get("/nightlies/{slot}/{day}/{platform}", response_class=HTMLResponse,
             include_in_schema=False)
    def nightly_day_page(request: Request, slot: str, day: str, platform: str) -> HTMLResponse:
        table = _ask(index.release_packages, slot, platform, day)
        return page(request, "packages.html", {"title": f"Nightly {slot} {day} on {platform}",
                                               "table": table,
                                               "spec": f"{slot}/{day}/{platform}"})

    @app.get("/packages/{name}", response_class=HTMLResponse, include_in_schema=False)
    def package_page(request: Request, name: str) -> HTMLResponse:
        data = _ask(index.package, name)
        return page(request, "package.html", {"title": f"Package {name}", "package": data})

    @app.get("/search", response_class=HTMLResponse, include_in_schema=False)
    def search_page(request: Request, q: str = Query("", max_length=200)) -> HTMLResponse:
        return page(request, "search.html", {"title": f"Search {q}" if q else "Search", "q": q,
                                             "hits": index.search(q)})

    @app.get("/diff", response_class=HTMLResponse, include_in_schema=False)
    def diff_page(request: Request, a: str = Query("", max_length=300),
                  b: str = Query("", max_length=300)) -> HTMLResponse:
        diff = _ask(index.diff, a, b) if a and b else None
        return page(request, "diff.html", {"title": f"Diff {a} → {b}" if diff else "Diff",
                                           "a": a, "b": b, "diff": diff})

    add_repository_routes(app, index, browser, page, _ask)

    return app
