"""The MLflow UI over the store of a real search, seen in a real browser.

Debian's chromium, driven by Selenium through Debian's chromedriver (nothing is downloaded:
Selenium Manager is never asked), looks at what a person browsing the shared search `e2e`
(conftest's `search`) would see in `mlflow ui`: the runs table with the trials nested
under the search's parent run, a trial's val_acc chart, the parent's artifacts and the
registered model's `champion` alias. Every step leaves a screenshot in
`browser-screenshots/` (or `$BROWSER_SCREENSHOTS`).

Chromium missing: the tests fail in CI (`CI` or `BROWSER_TESTS_REQUIRED` set; `.ci/run`
installs chromium and sets the latter) and are skipped elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest

from bench.mlflow_server import START_DEADLINE_S, free_port
from search.record.store import ui_link  # the link the summary prints: what the browser opens

ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 60.0  # the longest wait for one thing to show: the machine may be busy
SERVER_START_S = START_DEADLINE_S
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--lang=en-US", "--window-size=1600,1000",
)
PLOTS = ("plots/learning_curves.png", "plots/metric_vs_params.png")


def model_link(base_url: str, name: str) -> str:
    """A registered model's page: its versions with their aliases (in the GenAI view the
    sidebar has no Model registry entry)."""
    return f"{base_url.rstrip('/')}/#/models/{quote(name, safe='')}?workflowType=machine_learning"


def literal(text: str) -> str:
    """`text` as an XPath 1.0 string literal."""
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    return "concat(" + ", \"'\", ".join(f"'{part}'" for part in text.split("'")) + ")"


def in_ci() -> bool:
    """Whether the browser must be there: in CI (`CI` set, as CI services do) or where
    `BROWSER_TESTS_REQUIRED` is set (.ci/run sets it)."""
    return any(os.environ.get(var, "").strip().lower() not in ("", "0", "false", "no")
               for var in ("CI", "BROWSER_TESTS_REQUIRED"))


# ------------------------------------------------------------------ the browser


def chromium_paths() -> tuple[str, str]:
    """(chromium, chromedriver): fails in CI when either is missing, skips elsewhere when
    chromium is (a driver without its browser is a broken install: it fails)."""
    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if browser is None and not in_ci():
        pytest.skip("chromium is not installed (apt-get install chromium chromium-driver)")
    missing = [name for name, path in (("chromium", browser), ("chromedriver", driver))
               if path is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found on PATH: the browser tests need "
                    "Debian's `chromium` and `chromium-driver` packages (.ci/run installs "
                    "them: apt-get install chromium chromium-driver)")
    return browser, driver


@pytest.fixture(scope="session", autouse=True)
def chromium() -> tuple[str, str]:
    """The browser's paths, looked for before anything slower (session-scoped: before the
    shared search runs)."""
    return chromium_paths()


@pytest.fixture(scope="module")
def shots() -> Path:
    """The folder of the screenshots; named at the end of the run."""
    folder = Path(os.environ.get("BROWSER_SCREENSHOTS") or ROOT / "browser-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder.resolve()


@pytest.fixture(scope="module")
def driver(request, shots, chromium):
    browser, chromedriver = chromium
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        pytest.fail(f"selenium is not installed ({e}): pip install -e '.[dev]'")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    # Explicit paths: Selenium Manager is not run, and offline in case it ever were.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_OFFLINE", "true")
        d = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    d.set_page_load_timeout(WAIT_S * 2)
    yield d
    d.quit()
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\nbrowser screenshots: {shots}")


# ------------------------------------------------------------------ mlflow ui


@pytest.fixture(scope="module")
def ui(search, tmp_path_factory):
    """The base URL of `mlflow ui` over the search's store, started in the search's folder
    as its closing line tells a user to (artifacts: the store's local default root)."""
    cwd, _, _ = search
    bin_dir = Path(sys.executable).parent
    port = free_port()
    log_path = tmp_path_factory.mktemp("mlflow-ui") / "mlflow-ui.log"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    # The server's job runner (seven huey consumers, for GenAI judges and the like) serves
    # none of the pages looked at here; without it the server starts in a third of the time.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(bin_dir / "mlflow"), "ui", "--backend-store-uri",
             f"sqlite:///{cwd / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"],
            cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow ui exited ({proc.returncode}):\n"
                            f"{log_path.read_text()[-3000:]}")
            with contextlib.suppress(OSError), \
                    urllib.request.urlopen(f"{base}/health", timeout=5) as r:
                if r.status == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow ui not healthy after {SERVER_START_S:.0f}s:\n"
                            f"{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):  # what is left of its process group
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


# ------------------------------------------------------------------ what the search left


@pytest.fixture(scope="module")
def store(search):
    """The search's experiment, parent run and trial runs, as MLflow's client reads them."""
    _, _, client = search
    exp = client.get_experiment_by_name("e2e")
    assert exp is not None, "the search left no experiment `e2e`"
    parents = client.search_runs([exp.experiment_id], filter_string="tags.role = 'search'")
    assert len(parents) == 1, [r.info.run_name for r in parents]
    parent = parents[0]
    children = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=1000)
    return exp.experiment_id, parent, children


# ------------------------------------------------------------------ looking at pages


class Page:
    """One test's view through the browser: explicit waits, and a screenshot per step."""

    def __init__(self, driver, shots: Path, test: str):
        self.d = driver
        self.shots = shots
        self.test = test
        self.n = 0

    def shot(self, name: str) -> Path:
        self.n += 1
        path = self.shots / f"{self.test}-{self.n:02d}-{name}.png"
        self.d.save_screenshot(str(path))
        return path

    def text(self) -> str:
        from selenium.common.exceptions import WebDriverException

        try:
            return self.d.find_element("tag name", "body").text
        except WebDriverException:
            return ""

    def wait(self, name: str, what: str, condition, timeout: float = WAIT_S):
        """The first truthy value of `condition(driver)` within `timeout`, then a
        screenshot `name`; otherwise a failure naming `what`, with a screenshot."""
        from selenium.common.exceptions import (
            NoSuchElementException,
            StaleElementReferenceException,
            TimeoutException,
        )
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            value = WebDriverWait(
                self.d, timeout, poll_frequency=0.25,
                ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
            ).until(condition)
        except TimeoutException:
            path = self.shot(f"{name}-FAILED")
            pytest.fail(f"not seen within {timeout:.0f}s: {what}\n  at {self.d.current_url}\n"
                        f"  screenshot: {path}\n  page text:\n{self.text()[:2000]}")
        self.shot(name)
        return value

    def open(self, url: str) -> None:
        """Load `url` afresh: going from one of the UI's links to another only changes the
        fragment, which the single-page app follows keeping its state (expanded runs, ...)."""
        self.d.get("about:blank")
        self.d.get(url)

    def close_assistant(self) -> None:
        """Close the MLflow Assistant panel, which MLflow 3 opens on the right of every page
        on a first visit: screenshots show the page itself."""
        from selenium.common.exceptions import WebDriverException

        for button in self.d.find_elements(
                "css selector", "[data-component-id='mlflow.assistant.chat_panel.close']"):
            with contextlib.suppress(WebDriverException):
                button.click()

    def click(self, xpath: str, what: str):
        """Click the element at `xpath` once it is there."""
        from selenium.common.exceptions import (
            ElementClickInterceptedException,
            ElementNotInteractableException,
            NoSuchElementException,
            StaleElementReferenceException,
            TimeoutException,
        )
        from selenium.webdriver.support.ui import WebDriverWait

        def clicked(d):
            el = d.find_element("xpath", xpath)
            d.execute_script("arguments[0].scrollIntoView({block: 'nearest'})", el)
            el.click()
            return True

        try:
            WebDriverWait(self.d, WAIT_S, poll_frequency=0.25, ignored_exceptions=(
                NoSuchElementException, StaleElementReferenceException,
                ElementClickInterceptedException, ElementNotInteractableException,
            )).until(clicked)
        except TimeoutException:
            path = self.shot("click-FAILED")
            pytest.fail(f"could not click {what} within {WAIT_S:.0f}s\n  at {self.d.current_url}"
                        f"\n  screenshot: {path}\n  page text:\n{self.text()[:2000]}")


@pytest.fixture
def page(request, driver, shots, ui):
    """A fresh visitor: the UI's remembered state (workflow type, expanded runs, ...) is
    cleared, so the links are checked as a first visit would see them."""
    driver.execute_cdp_cmd("Storage.clearDataForOrigin", {"origin": ui, "storageTypes": "all"})
    driver.delete_all_cookies()
    name = request.node.name.removeprefix("test_")
    return Page(driver, shots, re.sub(r"[^\w.-]+", "_", name))


# Rows of the runs table (AG Grid; the Run Name column is pinned left, so a row is split in
# two elements with the same row-id): the run's id, its position, its name as shown, and the
# left edge of the name (nested runs are indented).
ROWS_JS = r"""
const rows = [];
for (const r of document.querySelectorAll('.ag-row[row-id]')) {
  const id = r.getAttribute('row-id');
  const a = r.querySelector(`a[href$="/runs/${id}"]`);
  if (!a) continue;
  rows.push({id: id, index: Number(r.getAttribute('row-index')), name: a.textContent.trim(),
             x: a.getBoundingClientRect().left});
}
return rows.sort((p, q) => p.index - q.index);
"""


def table_rows(page: Page) -> list[dict]:
    return page.d.execute_script(ROWS_JS)


def open_runs_table(page: Page, ui: str, experiment_id: str, parent_id: str) -> list[dict]:
    """Open the experiment's link and wait for the parent run's row; its rows."""
    page.open(ui_link(ui, experiment_id))

    def shown(_):
        rows = table_rows(page)
        return parent_id in {r["id"] for r in rows} and rows

    rows = page.wait("runs-table", f"the runs table with the search's parent run {parent_id}",
                     shown)
    page.close_assistant()
    return rows


def expand(page: Page, parent_id: str, child_ids: set[str]) -> list[dict]:
    """Expand the parent's row (unless it is already) and wait for its children's rows."""
    if not child_ids <= {r["id"] for r in table_rows(page)}:
        page.click(f"//div[contains(@class,'ag-row') and @row-id='{parent_id}']"
                   f"//div[@role='gridcell'][.//a[contains(@href,'/runs/{parent_id}')]]//button",
                   "the expand button of the parent run's row")

    def shown(_):
        rows = table_rows(page)
        return child_ids <= {r["id"] for r in rows} and rows

    return page.wait("runs-expanded", f"the {len(child_ids)} trial runs under the parent",
                     shown)


# ------------------------------------------------------------------ the checks


def test_link_opens_the_training_runs_table(page, ui, store):
    """a. The experiment's link shows its runs table, not the GenAI overview of traces."""
    experiment_id, parent, children = store
    rows = open_runs_table(page, ui, experiment_id, parent.info.run_id)
    url = page.d.current_url
    assert f"/experiments/{experiment_id}/runs" in url, url
    assert "workflowType=machine_learning" in url, url
    text = page.wait("runs-table-count", "the count of the experiment's runs",
                     lambda d: re.search(r"\d+ matching runs", t := page.text()) and t)
    assert f"{1 + len(children)} matching runs" in text, text[:2000]
    assert "Run Name" in text, text[:2000]
    assert "No data available" not in text, "a GenAI dashboard panel is shown:\n" + text[:2000]
    assert "e2e" in {r["name"] for r in rows}, rows


def test_trials_are_nested_under_the_search(page, ui, store):
    """b. One parent run (role=search, named e2e) with the 8 trial runs nested under it."""
    experiment_id, parent, children = store
    assert parent.info.run_name == "e2e"
    assert len(children) == 8, [c.info.run_name for c in children]
    pid = parent.info.run_id
    child_ids = {c.info.run_id for c in children}

    rows = open_runs_table(page, ui, experiment_id, pid)
    # Collapsed, the table shows the search's run alone: its trials are hidden under it.
    assert [r["id"] for r in rows] == [pid], rows
    assert rows[0]["name"] == "e2e"

    rows = expand(page, pid, child_ids)
    ids = [r["id"] for r in rows]
    assert ids[0] == pid, rows
    shown_children = ids[1:]
    assert len(shown_children) == 8 and set(shown_children) == child_ids, rows
    names = {c.info.run_id: c.info.run_name for c in children}
    parent_x = rows[0]["x"]
    for r in rows[1:]:
        assert r["name"] == names[r["id"]], r
        assert r["x"] > parent_x + 5, f"trial run {r['name']} is not indented: {rows}"


def test_trial_page_charts_one_point_per_epoch(page, ui, store, search):
    """c. A trial's page charts val_acc with one point per epoch the trial ran, at those
    epochs, with the values MLflow holds: the longest trial and the shortest."""
    _, _, client = search
    _, _, children = store
    histories = {c.info.run_id: sorted(client.get_metric_history(c.info.run_id, "val_acc"),
                                       key=lambda m: m.step)
                 for c in children}
    by_epochs = sorted(children, key=lambda c: (len(histories[c.info.run_id]), c.info.run_name))
    longest, shortest = by_epochs[-1], by_epochs[0]
    assert len(histories[longest.info.run_id]) >= 2, "no trial ran past its first epoch"
    check_val_acc_chart(page, ui, store, longest, histories[longest.info.run_id], "longest")
    if len(histories[shortest.info.run_id]) < len(histories[longest.info.run_id]):
        check_val_acc_chart(page, ui, store, shortest, histories[shortest.info.run_id],
                            "shortest")


def check_val_acc_chart(page: Page, ui: str, store, trial, history, label: str) -> None:
    """From the runs table to `trial`'s page, its Model metrics tab and its val_acc chart:
    one marker per logged epoch, placed as the values go, fed with MLflow's history.
    `label` names the trial in the screenshots' names (run names change with each search)."""
    experiment_id, parent, children = store
    pid = parent.info.run_id
    rid, name = trial.info.run_id, trial.info.run_name
    steps = [m.step for m in history]
    values = [m.value for m in history]

    # As a person gets there: the table, the parent expanded, the trial's name.
    open_runs_table(page, ui, experiment_id, pid)
    expand(page, pid, {c.info.run_id for c in children})
    page.click(f"//a[contains(@href, '/runs/{rid}')]", f"the name of trial run {name}")
    shown_name = literal(" ".join(name.split()))
    page.wait(f"{label}-trial", f"the page of trial run {name}, with its parent run e2e",
              lambda d: f"/runs/{rid}" in d.current_url
              and d.find_element("xpath", f"//*[normalize-space(text())={shown_name}]")
              and d.find_element("xpath", f"//a[contains(@href, '/runs/{pid}')]"
                                          "[normalize-space(.)='e2e']"))
    page.close_assistant()
    page.click("//button[@role='tab'][normalize-space(.)='Model metrics']",
               "the Model metrics tab")
    card_xpath = ("//*[@data-testid='experiment-view-compare-runs-card']"
                  "[.//*[normalize-space(text())='val_acc']]")
    card = page.wait(f"{label}-trial-metrics", f"the val_acc chart of {name}",
                     lambda d: d.find_element("xpath", card_xpath))
    page.d.execute_script("arguments[0].scrollIntoView({block: 'center'})", card)

    def drawn(d):
        chart = d.execute_script(CHART_JS, d.find_element("xpath", card_xpath))
        return chart and len(chart["points"]) == len(steps) and chart

    chart = page.wait(f"{label}-trial-val_acc",
                      f"the {len(steps)} points of {name}'s val_acc chart", drawn)
    # What the chart draws: one marker per epoch (a marker drawn twice at one place, as
    # MLflow does for a single step, is one), left to right, higher for a higher val_acc
    # (equal values at one height).
    points = chart["points"]
    xs = [p[0] for p in points]
    assert xs == sorted(xs) and len(set(xs)) == len(xs), points
    for i in range(len(points)):
        for j in range(i + 1, len(points)):
            dv, dy = values[i] - values[j], points[i][1] - points[j][1]
            if abs(dv) < 1e-12:
                assert abs(dy) < 0.5, (i, j, points, values)
            else:
                assert dv * dy < 0, (i, j, points, values)  # y grows downwards
    # What the chart was given: the run's val_acc at step = epoch, as MLflow holds it.
    marked = [t for t in chart["traces"] if "markers" in t["mode"]]
    assert marked, chart["traces"]
    for trace in marked:
        assert trace["name"] == name, trace
        assert trace["x"] == steps, (trace, steps)
        assert trace["y"] == pytest.approx(values, rel=1e-9), (trace, values)
    assert chart["xtitle"] == "Step", chart["xtitle"]


CHART_JS = r"""
const plot = arguments[0].querySelector('.js-plotly-plot');
if (!plot || !plot.data) return null;
const points = [];
for (const p of plot.querySelectorAll('.scatterlayer .trace .point')) {
  const m = /translate\(\s*([-\d.e]+)[ ,]+([-\d.e]+)\s*\)/.exec(p.getAttribute('transform') || '');
  if (!m) continue;
  const [x, y] = [Number(m[1]), Number(m[2])];
  if (!points.some(([u, v]) => Math.abs(u - x) < 0.5 && Math.abs(v - y) < 0.5)) points.push([x, y]);
}
points.sort((p, q) => p[0] - q[0]);
const title = plot.layout && plot.layout.xaxis && plot.layout.xaxis.title;
return {
  points: points,
  traces: plot.data.map(t => ({name: t.name, mode: t.mode || '',
                               x: Array.from(t.x || []), y: Array.from(t.y || [])})),
  xtitle: title && typeof title === 'object' ? title.text : title,
};
"""


def artifact_tree(page: Page) -> list[str]:
    return [e.text.strip() for e in page.d.find_elements(
        "css selector", "[data-testid='artifact-tree-node']") if e.text.strip()]


def open_parent_artifacts(page: Page, ui: str, store) -> list[str]:
    """From the runs table to the parent run's Artifacts tab; the names in its tree."""
    experiment_id, parent, _ = store
    pid = parent.info.run_id
    open_runs_table(page, ui, experiment_id, pid)
    page.click(f"//div[contains(@class,'ag-row') and @row-id='{pid}']"
               f"//a[contains(@href, '/runs/{pid}')]", "the name of the parent run e2e")
    page.wait("parent-run", "the page of the parent run e2e",
              lambda d: f"/runs/{pid}" in d.current_url
              and d.find_element("xpath", "//button[@role='tab'][normalize-space(.)='Artifacts']"))
    page.close_assistant()
    page.click("//button[@role='tab'][normalize-space(.)='Artifacts']", "the Artifacts tab")
    return page.wait("parent-artifacts", "the parent run's artifact tree (best.yaml)",
                     lambda d: "best.yaml" in (names := artifact_tree(page)) and names)


def preview(page: Page, path: str) -> None:
    """Click `path` in the artifact tree (opening its folders) and wait for its preview."""
    *folders, leaf = path.split("/")
    for folder in folders:
        if leaf not in artifact_tree(page):
            page.click(f"//*[@data-testid='artifact-tree-node'][normalize-space(.)='{folder}']",
                       f"the artifact folder {folder}/")
    page.click(f"//*[@data-testid='artifact-tree-node'][normalize-space(.)='{leaf}']",
               f"the artifact {path}")


def test_parent_shows_its_artifacts(page, ui, store, search):
    """d. The parent run's artifacts list best.yaml and top_trials.json, and show them."""
    _, _, client = search
    names = open_parent_artifacts(page, ui, store)
    assert {"best.yaml", "top_trials.json"} <= set(names), names
    pid = store[1].info.run_id
    for artifact in ("best.yaml", "top_trials.json"):
        expected = shown_of(Path(client.download_artifacts(pid, artifact)))
        preview(page, artifact)
        page.wait(f"preview-{Path(artifact).stem}", f"the preview of {artifact}: {expected}",
                  lambda d, artifact=artifact, expected=expected:
                  "Path: " in (t := page.text()) and artifact in t
                  and all(e in t for e in expected))


def shown_of(path: Path) -> list[str]:
    """What a preview of the file at `path` shows: a table's columns and first column (the
    UI draws a JSON `{"columns", "data"}` as a table), else the first line."""
    text = path.read_text()
    if path.suffix == ".json":
        table = json.loads(text)
        if isinstance(table, dict) and {"columns", "data"} <= table.keys():
            return [str(c) for c in table["columns"]] + [str(row[0]) for row in table["data"]]
    return [next(line for line in text.splitlines() if line.strip()).strip()[:60]]


# The sizes of the images loaded in the page from the artifacts (the preview's `blob:`s).
IMAGES_JS = r"""
return Array.from(document.querySelectorAll('img'))
  .filter(i => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0)
  .map(i => [i.naturalWidth, i.naturalHeight]);
"""


def png_size(path: Path) -> list[int]:
    """[width, height] of a PNG file, from its header."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return [int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")]


def test_parent_shows_the_search_plots(page, ui, store, search):
    """d. The parent run's artifacts hold the search's plots, and they show as images of
    their files' sizes."""
    _, _, client = search
    names = open_parent_artifacts(page, ui, store)
    assert "plots" in names, f"no plots/ folder in the parent run's artifacts: {names}"
    for path in PLOTS:
        size = png_size(Path(client.download_artifacts(store[1].info.run_id, path)))
        preview(page, path)
        page.wait(f"preview-{Path(path).stem}", f"the image {path}, {size[0]}x{size[1]}",
                  lambda d, path=path, size=size: path in page.text()
                  and size in d.execute_script(IMAGES_JS))


def test_model_page_shows_the_champion(page, ui, search):
    """e. The registered model's page shows the champion alias on the version it names."""
    _, _, client = search
    version = client.get_model_version_by_alias("digits-test", "champion").version
    page.open(model_link(ui, "digits-test"))
    row = page.wait("model", f"digits-test's version {version} with the alias champion",
                    lambda d: d.find_element(
                        "xpath", f"//*[@role='row'][.//a[normalize-space(.)='Version {version}']]"
                        "[contains(., 'champion')]"))
    page.close_assistant()
    assert "@" in row.text and "champion" in row.text, row.text
    others = page.d.find_elements(
        "xpath", f"//*[@role='row'][contains(., 'champion')][not(.//a[normalize-space(.)="
                 f"'Version {version}'])]")
    assert not others, [r.text for r in others]
    # The version's own page names the alias too.
    page.click(f"//*[@role='row']//a[normalize-space(.)='Version {version}']",
               f"the link of version {version}")
    page.wait("model-version", f"the page of version {version} with its alias champion",
              lambda d: f"/models/digits-test/versions/{version}" in d.current_url
              and re.search(r"Aliases\s*:?\s*@\s*champion", page.text()))
