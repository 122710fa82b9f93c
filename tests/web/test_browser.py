"""The portal in a real browser: headless Debian chromium driven by Playwright, against the real
uvicorn server of ``conftest.py`` over the repository the stack pipelines published there.

A user's paths through the pages (home → release → platform table → package, the compare form,
the search box, the nightly grid, the repository browser: revisions, tags, size plot, a revision
diff narrowed by its form, a file's object details, the tree at a tag), with their headings,
table contents and every link of every visited page followed (no 4xx); forms and pages again
with JavaScript disabled.
Full-page screenshots go to the test's temporary directory; with PYCVMFS_UPDATE_SCREENSHOTS=1
also to ``docs/images/web-<name>.png`` (committed, shown by the docs), so an ordinary run leaves
the checkout clean."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    expect,
    sync_playwright,
)

from web.conftest import FQRN, PLAT

CHROMIUM = Path("/usr/bin/chromium")
# without the networking switches chromium keeps calling Google's services on a closed network
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
VIEWPORT = {"width": 1280, "height": 800}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: install the Debian package 'chromium' "
                    "(apt-get install chromium)")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Tab:
    """A page of a fresh browser context on the portal, recording what went wrong while it was
    used: script errors, console errors and any answer of 400 or more."""

    def __init__(self, context: BrowserContext) -> None:
        self.context = context
        self.page: Page = context.new_page()
        self.problems: list[str] = []
        self.page.on("pageerror", lambda e: self.problems.append(f"script error: {e}"))
        self.page.on("console", self._console)
        self.page.on("response", lambda r: self.problems.append(f"{r.status} {r.url}")
                     if r.status >= 400 else None)


    def _console(self, message: ConsoleMessage) -> None:
        # the portal has no favicon (base.html names none), the browser's own request of
        # /favicon.ico answers 404: that one is not a page's fault
        if message.type == "error" and not message.location.get("url", "").endswith(
                "/favicon.ico"):
            self.problems.append(f"console: {message.text} {message.location}")


def open_tab(browser: Browser, portal, *, javascript: bool = True) -> Tab:
    return Tab(browser.new_context(base_url=portal.url, viewport=VIEWPORT, locale="en-US",
                                   color_scheme="light", java_script_enabled=javascript))


@pytest.fixture
def tab(browser, portal) -> Iterator[Tab]:
    t = open_tab(browser, portal)
    yield t
    t.context.close()
    assert t.problems == []


@pytest.fixture
def tab_without_js(browser, portal) -> Iterator[Tab]:
    t = open_tab(browser, portal, javascript=False)
    yield t
    t.context.close()
    assert t.problems == []


def screenshot(page: Page, name: str, tmp_path: Path) -> None:
    """Full-page screenshot in the test's tmp dir (and docs/images/web-<name>.png when
    PYCVMFS_UPDATE_SCREENSHOTS=1)."""
    target = tmp_path / f"web-{name}.png"
    page.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 10_000  # a rendered page, not an empty canvas
    if os.environ.get("PYCVMFS_UPDATE_SCREENSHOTS") == "1":
        IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(target, IMAGES / target.name)


def check_page(page: Page) -> None:
    """What every page must have: the stylesheet applied, the main heading, a label for every
    field, and links that lead somewhere (same-site links answer below 400, in-page links name
    an element of the page)."""
    header_bg = page.locator("header").evaluate("e => getComputedStyle(e).backgroundColor")
    assert header_bg == "rgb(238, 242, 247)", "style.css is not applied"
    expect(page.locator("main h1")).to_have_count(1)
    unlabelled = page.eval_on_selector_all(
        "input, select, textarea",
        "els => els.filter(e => e.type !== 'hidden' && e.labels.length === 0)"
        ".map(e => e.outerHTML)")
    assert unlabelled == []
    origin = urlsplit(page.url).netloc
    hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
    assert hrefs
    for href in sorted(set(hrefs)):
        url = urlsplit(href)
        assert url.netloc == origin, f"{page.url} links off-site: {href}"
        if url.fragment and url._replace(fragment="").geturl() == page.url.split("#")[0]:
            assert page.locator(f"[id='{url.fragment}']").count() == 1, href
            continue
        answer = page.request.get(href)
        assert answer.status < 400, f"{page.url} links to {href}: {answer.status}"


def expect_heading(page: Page, text: str) -> None:
    """Wait for the page showing ``text`` as its main heading (a click does not wait for the
    page it leads to), and for that page to have loaded."""
    expect(page.locator("main h1")).to_have_text(text)
    page.wait_for_load_state("load")


def table_rows(page: Page, table: str) -> list[list[str]]:
    """The body rows of ``table`` (a selector) as lists of their cells' texts."""
    return page.locator(f"{table} tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.innerText.trim()))")


def column_names(page: Page, table: str) -> list[str]:
    return [t.strip() for t in page.locator(f"{table} thead th").all_inner_texts()]


# -- the user's paths ----------------------------------------------------------------------------
def test_home_release_platform_table_and_package(tab, portal, published, tmp_path):
    page = tab.page
    page.goto("/")
    expect_heading(page, "Software stacks")
    assert page.title() == "Software stacks · pycvmfs stacks"
    releases = table_rows(page, "section[aria-labelledby=rel-title] table")
    assert [r[0] for r in releases] == ["LCG_901", "LCG_900"]
    assert releases[1][1:] == [f"{PLAT} ({len(published.hashes['LCG_900'])})", FQRN]
    check_page(page)
    screenshot(page, "home", tmp_path)

    page.get_by_role("link", name="LCG_900", exact=True).click()
    expect(page).to_have_url(f"{portal.url}/releases/LCG_900")
    expect_heading(page, "LCG_900")
    [row] = table_rows(page, "main table")
    assert row[0] == PLAT and row[-1] == FQRN
    check_page(page)
    screenshot(page, "release", tmp_path)

    page.get_by_role("link", name=PLAT, exact=True).click()
    expect_heading(page, f"LCG_900 on {PLAT}")
    columns = column_names(page, "main table")
    assert columns == ["Package", "Version", "Hash", "Category", "Dependencies", "Prefix"]
    rows = table_rows(page, "main table")
    assert all(len(r) == len(columns) for r in rows)  # no row short of a cell
    assert {r[0]: r[2] for r in rows} == published.hashes["LCG_900"]
    expect(page.locator("main table caption")).to_have_text(f"{len(rows)} packages")
    eta = next(r for r in rows if r[0] == "eta")
    assert eta[1] == "2.1" and eta[5] == f"/cvmfs/{FQRN}/lcg/releases/LCG_900/eta/2.1/{PLAT}"
    check_page(page)
    screenshot(page, "release-table", tmp_path)

    # a dependency link jumps to that package's row of the same table
    dependent = page.locator("main tbody tr").filter(
        has=page.locator("td a[href^='#pkg-']")).first
    target = dependent.locator("td a[href^='#pkg-']").first.get_attribute("href")
    dependent.locator("td a[href^='#pkg-']").first.click()
    assert page.url.endswith(target)
    expect(page.locator(target)).to_be_in_viewport()

    page.locator("main tbody th a", has_text="theta").click()
    expect_heading(page, "Package theta")
    assert page.locator("main h2").all_inner_texts() == ["theta 0.6", "theta 0.5"]
    section = page.locator("main section", has=page.locator("h2", has_text="theta 0.5"))
    used_in = section.locator("tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.innerText.trim()))")
    assert [published.hashes["LCG_900"]["theta"], "LCG_900", PLAT] in [r[:3] for r in used_in]
    assert any(r[1] == "dev4 Mon" for r in used_in)
    check_page(page)
    screenshot(page, "package", tmp_path)


def test_diff_through_the_compare_form(tab, published, tmp_path):
    page = tab.page
    page.goto(f"/releases/LCG_900/{PLAT}")
    page.get_by_role("link", name="Compare with…").click()
    expect_heading(page, "Diff")
    expect(page.get_by_label("From")).to_have_value(f"LCG_900/{PLAT}")
    page.get_by_label("To").fill(f"LCG_901/{PLAT}")
    page.get_by_role("button", name="Compare").click()
    expect_heading(page, f"Diff LCG_900/{PLAT} → LCG_901/{PLAT}")
    assert "/diff?a=LCG_900%2F" in page.url  # the result is a permalink
    expect(page.locator("p.counts")).to_contain_text(
        "1 added, 1 removed, 1 version changed, 3 rebuilt")
    assert page.locator("main h2").all_inner_texts() == [
        "Added", "Removed", "Version changed", "Rebuilt (same version, new hash)"]
    new, old = published.hashes["LCG_901"], published.hashes["LCG_900"]
    assert table_rows(page, "table.diff-added") == [["kappa", "1.2", new["kappa"]]]
    assert table_rows(page, "table.diff-removed") == [["iota", "7", old["iota"]]]
    assert table_rows(page, "table.diff-version_changed") == [
        ["theta", f"0.5 {old['theta']}", f"0.6 {new['theta']}"]]
    rebuilt = table_rows(page, "table.diff-rebuilt")
    assert sorted(r[0] for r in rebuilt) == ["eta", "toygen", "zeta"]
    assert all(r[1].split()[0] == r[2].split()[0] and r[1] != r[2] for r in rebuilt)
    check_page(page)
    screenshot(page, "diff", tmp_path)


def test_search_box(tab, tmp_path):
    page = tab.page
    page.goto("/")
    box = page.get_by_role("searchbox", name="Search packages")
    box.fill("zet")
    box.press("Enter")
    expect_heading(page, "Search zet")
    assert page.url.endswith("/search?q=zet")
    expect(page.get_by_role("searchbox", name="Search packages")).to_have_value("zet")
    expect(page.locator("main p").first).to_have_text("1 match for “zet”.")
    assert [r[:2] for r in table_rows(page, "main table")] == [["zeta", "1.0"]]
    check_page(page)
    screenshot(page, "search", tmp_path)
    page.get_by_role("searchbox", name="Search packages").fill("no-such-package")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("main p").first).to_have_text("0 matches for “no-such-package”.")
    expect(page.locator("main table")).to_have_count(0)


def test_nightly_grid(tab, published, tmp_path):
    page = tab.page
    page.goto("/")
    page.get_by_role("link", name="dev4", exact=True).click()
    expect_heading(page, "Nightly dev4")
    grid = page.locator("table.grid")
    expect(grid.locator("caption")).to_have_text("Build status per package, platform and day")
    days = grid.locator("thead th a").all_inner_texts()
    assert days == ["Mon", "Tue"]
    states = grid.locator("thead .st").all_inner_texts()
    assert states == ["done", "unstable"]
    eta = grid.locator("tbody tr", has=page.get_by_role("link", name="eta", exact=True))
    mon, tue = eta.locator("td").nth(0), eta.locator("td").nth(1)
    # the failure is said in words, not only by the cell's colour
    assert tue.locator(".status").inner_text() == "FAILED"  # shown upper-case by the CSS
    assert tue.locator(".status").text_content() == "failed"
    expect(tue.locator("details summary")).to_have_text("error")
    tue.locator("details summary").click()
    expect(tue.locator("details pre")).to_be_visible()
    assert mon.locator(".status").text_content() in {"built", "reused"}
    colour = "e => getComputedStyle(e).backgroundColor"
    failed_bg, ok_bg = tue.evaluate(colour), mon.evaluate(colour)
    assert failed_bg == "rgb(249, 214, 214)" and failed_bg != ok_bg
    # every cell carries its status as text (or a dash where nothing ran)
    for cell in grid.locator("tbody td").all():
        assert cell.locator(".status").count() == 1 or cell.inner_text().strip() == "–"
    toygen = grid.locator("tbody tr",
                          has=page.get_by_role("link", name="toygen", exact=True))
    assert "test failed" in toygen.locator("td").nth(1).inner_text()
    # trends: one row per night and platform, the failure counted
    trends = table_rows(page, "table.trends")
    assert [(r[0], r[1]) for r in trends] == [(PLAT, "Mon"), (PLAT, "Tue")]
    assert trends[1][8] == "1" and trends[0][8] == "0"  # the Failed column
    check_page(page)
    screenshot(page, "nightly", tmp_path)  # with eta's error opened

    # a build's log, published with it, one click from its cell
    zeta = grid.locator("tbody tr", has=page.get_by_role("link", name="zeta", exact=True))
    zeta.locator("td").nth(0).get_by_role("link", name="build log").click()
    expect(page.locator("pre.logtext")).to_be_visible()
    assert page.url.endswith("/logs/build.log") and "/zeta/" in page.url
    assert facts_of(page)["Content hash"].endswith("(read through the verified reader)")
    check_page(page)
    screenshot(page, "build-log", tmp_path)
    page.go_back()

    page.locator("table.grid thead th a", has_text="Tue").click()
    expect_heading(page, f"Nightly dev4 Tue on {PLAT}")
    rows = table_rows(page, "main table")
    assert {r[0]: r[2] for r in rows} == {
        n: h for n, h in published.hashes["dev4/Tue"].items() if n != "eta"}


def facts_of(page: Page) -> dict[str, str]:
    """The ``dl.facts`` list of the page as term -> description."""
    return dict(zip(page.locator("dl.facts dt").all_inner_texts(),
                    page.locator("dl.facts dd").all_inner_texts(), strict=True))


def test_repository_browser(tab, portal, published, tmp_path):
    page = tab.page
    head = published.pub.head().revision
    page.goto("/")
    page.locator("section[aria-labelledby=repo-title] a", has_text=FQRN).first.click()
    expect_heading(page, f"Repository {FQRN}")
    facts = facts_of(page)
    assert facts["Indexed revision"] == str(head)
    assert facts["Last refresh"] == "verified"
    assert facts["Stacks folder"] == "lcg"
    assert facts["Location"] == str(published.pub.config.storage)
    assert facts["Published"].endswith(" UTC")
    revisions = page.locator("table.revisions")
    expect(revisions.locator("caption")).to_have_text(f"{head} revisions, newest first")
    rows = table_rows(page, "table.revisions")
    assert [r[0].split()[0] for r in rows] == [str(n) for n in range(head, 0, -1)]
    assert "current" in rows[0][0]
    tagged = page.locator("table.revisions tbody tr", has=page.locator(".tag", has_text="LCG_900"))
    expect(tagged.locator("th")).to_have_text("2")  # the release's publication was tagged
    expect(page.locator("figure svg")).to_be_visible()  # the size plot, drawn server-side
    check_page(page)
    screenshot(page, "repository", tmp_path)

    # the changes of the last revision (the partial Tuesday night), then one file of them
    page.locator("table.revisions tbody tr").first.get_by_role("link", name="changes").click()
    expect(page).to_have_url(f"{portal.url}/repositories/{FQRN}/diff?a={head - 1}&b={head}")
    page.wait_for_load_state("load")
    expect(page.locator("p.counts")).to_contain_text(f"Revision {head - 1} → {head} below /")
    summary = f"/lcg/nightlies/dev4/Tue/LCG_externals_{PLAT}.json"
    everything = table_rows(page, "table.diff-added")
    assert [summary, "file"] in everything
    check_page(page)
    page.get_by_label("Below").fill("/lcg/nightlies/dev4")  # narrowed through the form
    page.get_by_role("button", name="Compare").click()
    expect(page.locator("p.counts")).to_contain_text(
        f"Revision {head - 1} → {head} below /lcg/nightlies/dev4:")
    below = table_rows(page, "table.diff-added")
    assert below == [r for r in everything if r[0].startswith("/lcg/nightlies/dev4/")]
    check_page(page)
    screenshot(page, "revision-diff", tmp_path)

    page.get_by_role("link", name=summary, exact=True).click()
    expect_heading(page, f"{FQRN}:{summary}")
    facts = facts_of(page)
    assert facts["Type"] == "file"
    assert facts["Revision"].startswith(f"{head}, root catalog ")
    assert len(facts["Content hash"]) >= 40 and facts["Compression"] == "zlib"
    check_page(page)
    screenshot(page, "tree-file", tmp_path)

    page.get_by_role("navigation", name="Path").get_by_role("link", name="Tue").click()
    expect_heading(page, f"{FQRN}:/lcg/nightlies/dev4/Tue")
    assert facts_of(page)["Type"] == "dir"
    names = [r[0] for r in table_rows(page, "table.children")]
    assert f"LCG_externals_{PLAT}.json" in names and "zeta/" in names
    # the same folder in the tagged release's revision does not exist yet
    page.get_by_label("Revision or tag").fill("LCG_900")
    seen = len(tab.problems)
    page.get_by_role("button", name="Show").click()
    expect_heading(page, "Not found")
    assert "/dev4/Tue" in page.locator("p.message").inner_text()
    refused = tab.problems[seen:]  # the 404 asked for, and chromium's console line about it
    assert refused[0].startswith("404 ") and refused[0].endswith("?revision=LCG_900")
    assert all("404" in p for p in refused), refused
    del tab.problems[seen:]
    page.goto(f"/repositories/{FQRN}/tree?revision=LCG_900")
    assert facts_of(page)["Revision"].startswith("2, ")

    page.goto(f"/repositories/{FQRN}")
    page.get_by_role("link", name="JSON", exact=True).click()
    expect(page.locator("body")).to_contain_text(f'"fqrn":"{FQRN}"')


# -- without JavaScript --------------------------------------------------------------------------
def test_pages_work_without_javascript(tab_without_js, published):
    page = tab_without_js.page
    page.goto("/")
    # scripts really do not run in this context
    page.set_content("<p id='x'>static</p><script>document.getElementById('x')"
                     ".textContent = 'scripted'</script>")
    assert page.locator("#x").inner_text() == "static"

    page.goto("/")
    expect_heading(page, "Software stacks")
    assert [r[0] for r in table_rows(page, "section[aria-labelledby=rel-title] table")] == \
        ["LCG_901", "LCG_900"]
    check_page(page)
    box = page.get_by_role("searchbox", name="Search packages")
    box.fill("kap")
    page.get_by_role("button", name="Search").click()  # a plain GET form
    expect_heading(page, "Search kap")
    assert [r[0] for r in table_rows(page, "main table")] == ["kappa"]

    page.goto("/diff")
    page.get_by_label("From").fill(f"dev4/Mon/{PLAT}")
    page.get_by_label("To").fill(f"dev4/Tue/{PLAT}")
    page.get_by_role("button", name="Compare").click()
    expect_heading(page, f"Diff dev4/Mon/{PLAT} → dev4/Tue/{PLAT}")
    assert [r[0] for r in table_rows(page, "table.diff-removed")] == ["eta"]
    check_page(page)

    page.goto("/nightlies/dev4")
    failed = page.locator("table.grid tbody td.st-failed")
    expect(failed.locator(".status")).to_have_text("failed", ignore_case=True)
    failed.locator("details summary").click()  # details open natively, no script needed
    expect(failed.locator("details pre")).to_be_visible()
    check_page(page)

    page.goto(f"/repositories/{FQRN}")
    expect(page.locator("figure svg")).to_be_visible()  # the plot needs no script
    page.locator("table.revisions tbody tr").first.get_by_role("link", name="files").click()
    expect_heading(page, f"{FQRN}:/")
    assert "lcg/" in [r[0] for r in table_rows(page, "table.children")]
    check_page(page)
