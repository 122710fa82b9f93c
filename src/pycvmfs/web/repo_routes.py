"""The portal's repository pages and their JSON twins: the repository browser (revisions,
size plot, file tree, revision diffs), the stratum 1 status, ``/metrics`` and the container
images.

Pages and API (every view is one GET URL)::

    /repositories                               /api/repositories
    /repositories/{fqrn}                        /api/repositories/{fqrn},
                                                /api/repositories/{fqrn}/revisions
    /repositories/{fqrn}/tree/{path}?revision=  /api/repositories/{fqrn}/tree/{path}?revision=
    /repositories/{fqrn}/diff?a=..&b=..         /api/repositories/{fqrn}/diff?a=..&b=..
    /replicas                                   /api/replicas
    /containers                                 /api/containers
    /logs/{fqrn}/{path}                         /api/logs/{fqrn}/{path}  (builds' logs only)
    /metrics                                    (Prometheus text format 0.0.4)

Revisions, size history, replica rows and images come from the index; a tree or a diff is
read per request through the verified reader (:mod:`pycvmfs.web.browse`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse

from pycvmfs.web import models
from pycvmfs.web.browse import Browser
from pycvmfs.web.index import WebIndex
from pycvmfs.web.plot import size_plot
from pycvmfs.web.repoinfo import DIFF_LIMIT

__all__ = ["METRICS_CONTENT_TYPE", "add_repository_routes"]

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_ERRORS = {"model": models.ErrorBody}
_BROWSE_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _ERRORS, 404: _ERRORS, 502: {**_ERRORS, "description": "a read failed verification"}}
_REF = Query(None, max_length=200, description="a revision number or a tag (default: the "
                                                "indexed revision)")
#: revisions and tags offered as suggestions in the diff form
_SUGGESTIONS = 200


def _suggestions(revisions: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for r in revisions[:_SUGGESTIONS]:
        out.append(str(r["revision"]))
        out += r["named_tags"]
    return out


def add_repository_routes(app: FastAPI, index: WebIndex, browser: Browser,
                          page: Callable[..., HTMLResponse],
                          ask: Callable[..., Any]) -> None:
    """Register the routes on ``app``; ``page(request, template, context)`` renders a page,
    ``ask(fn, *args)`` turns the index's and browser's errors into 404/400/502 answers."""

    # -- JSON API ------------------------------------------------------------------------------
    @app.get("/api/repositories/{fqrn}/revisions", response_model=models.Revisions,
             tags=["api"], responses={404: _ERRORS})
    def api_revisions(fqrn: str) -> Any:
        return ask(index.revisions, fqrn)

    @app.get("/api/repositories/{fqrn}/tree", response_model=models.TreeEntry, tags=["api"],
             responses=_BROWSE_ERRORS)
    def api_tree_root(fqrn: str, revision: str | None = _REF,
                      limit: int = Query(2000, ge=1, le=10000)) -> Any:
        return ask(lambda: browser.tree(fqrn, "/", revision, limit=limit))

    @app.get("/api/repositories/{fqrn}/tree/{path:path}", response_model=models.TreeEntry,
             tags=["api"], responses=_BROWSE_ERRORS)
    def api_tree(fqrn: str, path: str, revision: str | None = _REF,
                 limit: int = Query(2000, ge=1, le=10000)) -> Any:
        return ask(lambda: browser.tree(fqrn, path, revision, limit=limit))

    @app.get("/api/repositories/{fqrn}/diff", response_model=models.RevisionDiff,
             tags=["api"], responses=_BROWSE_ERRORS)
    def api_revision_diff(fqrn: str, a: str = Query(..., max_length=200),
                          b: str = Query(..., max_length=200),
                          path: str = Query("/", max_length=4096),
                          limit: int = Query(DIFF_LIMIT, ge=1, le=DIFF_LIMIT)) -> Any:
        return ask(lambda: browser.diff(fqrn, a, b, path=path, limit=limit))

    @app.get("/api/logs/{fqrn}/{path:path}", response_model=models.LogText, tags=["api"],
             responses=_BROWSE_ERRORS)
    def api_log(fqrn: str, path: str) -> Any:
        return ask(lambda: browser.log(fqrn, path))

    @app.get("/api/replicas", response_model=models.Replicas, tags=["api"])
    def api_replicas() -> Any:
        return index.replicas()

    @app.get("/api/containers", response_model=models.Containers, tags=["api"])
    def api_containers() -> Any:
        return index.containers()

    @app.get("/metrics", response_class=PlainTextResponse, include_in_schema=False)
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(index.metrics(), media_type=METRICS_CONTENT_TYPE)

    # -- pages ---------------------------------------------------------------------------------
    @app.get("/repositories", response_class=HTMLResponse, include_in_schema=False)
    def repositories_page(request: Request) -> HTMLResponse:
        return page(request, "repositories.html", {"title": "Repositories"})

    @app.get("/repositories/{fqrn}", response_class=HTMLResponse, include_in_schema=False)
    def repository_page(request: Request, fqrn: str) -> HTMLResponse:
        repo = ask(index.repository, fqrn)
        history = index.revisions(fqrn)
        return page(request, "repository.html", {
            "title": f"Repository {fqrn}", "repo": repo, "history": history,
            "plot": size_plot(history["size_history"])})

    def tree_page(request: Request, fqrn: str, path: str, revision: str | None
                  ) -> HTMLResponse:
        entry = ask(lambda: browser.tree(fqrn, path, revision))
        crumbs, so_far = [], ""
        for part in entry["path"].strip("/").split("/") if entry["path"] != "/" else []:
            so_far += "/" + part
            crumbs.append((part, so_far))
        return page(request, "tree.html", {
            "title": f"{fqrn}:{entry['path']}", "entry": entry, "fqrn": fqrn,
            "revision": revision or "", "crumbs": crumbs})

    @app.get("/repositories/{fqrn}/tree", response_class=HTMLResponse, include_in_schema=False)
    def tree_root_page(request: Request, fqrn: str, revision: str | None = _REF
                       ) -> HTMLResponse:
        return tree_page(request, fqrn, "/", revision)

    @app.get("/repositories/{fqrn}/tree/{path:path}", response_class=HTMLResponse,
             include_in_schema=False)
    def tree_path_page(request: Request, fqrn: str, path: str, revision: str | None = _REF
                       ) -> HTMLResponse:
        return tree_page(request, fqrn, path, revision)

    @app.get("/repositories/{fqrn}/diff", response_class=HTMLResponse,
             include_in_schema=False)
    def revision_diff_page(request: Request, fqrn: str, a: str = Query("", max_length=200),
                           b: str = Query("", max_length=200),
                           path: str = Query("/", max_length=4096)) -> HTMLResponse:
        repo = ask(index.repository, fqrn)
        diff = ask(lambda: browser.diff(fqrn, a, b, path=path)) if a else None
        title = f"{fqrn}: {a} → {b or repo['revision']}" if diff else f"{fqrn}: compare"
        return page(request, "revision_diff.html", {
            "title": title, "fqrn": fqrn, "a": a, "b": b, "path": path, "diff": diff,
            "suggestions": _suggestions(index.revisions(fqrn)["revisions"])})

    @app.get("/logs/{fqrn}/{path:path}", response_class=HTMLResponse,
             include_in_schema=False)
    def log_page(request: Request, fqrn: str, path: str) -> HTMLResponse:
        log = ask(lambda: browser.log(fqrn, path))
        return page(request, "log.html", {"title": f"{fqrn}:{log['path']}", "log": log})

    @app.get("/replicas", response_class=HTMLResponse, include_in_schema=False)
    def replicas_page(request: Request) -> HTMLResponse:
        return page(request, "replicas.html", {"title": "Replicas", **index.replicas()})

    @app.get("/containers", response_class=HTMLResponse, include_in_schema=False)
    def containers_page(request: Request) -> HTMLResponse:
        return page(request, "containers.html", {"title": "Container images",
                                                 **index.containers()})
