"""`cbmctl report`: the page's content against the run it describes, that it is self-contained, and — where a
Chromium is installed — that a real browser shows every image and fetches nothing."""
import csv
import html
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

from cbmctl.explain import Explainer
from cbmctl.report import build_report, weights_csv


class Links(HTMLParser):
    """Every URL the page could load or link to, and its headings and section anchors."""

    def __init__(self):
        super().__init__()
        self.urls, self.headings, self.anchors, self.policy, self._heading = [], [], [], None, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.urls += [attrs[key] for key in ("src", "href") if key in attrs]
        if tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy":
            self.policy = attrs["content"]
        if tag == "h2":
            self.anchors.append(attrs.get("id"))
        self._heading = tag in ("h2", "h3")

    def handle_data(self, data):
        if self._heading:
            self.headings.append(data)
            self._heading = False


def parsed(page: str) -> Links:
    links = Links()
    links.feed(page)
    return links


def test_report_of_a_comparison_holds_what_it_promises(cli, unit_runs, tmp_path):
    run = unit_runs["comparison"]
    out, weights = tmp_path / "report.html", tmp_path / "weights.csv"
    result = cli("report", run, "-o", out, "--weights-csv", weights, "--images", "4", "--examples", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out) and "report: wrote" in result.stderr  # progress on stderr
    page = out.read_text()
    links = parsed(page)
    page = html.unescape(page)
    assert links.policy and "default-src 'none'" in links.policy and "img-src data:" in links.policy
    assert links.urls and all(url.startswith(("data:", "#")) for url in links.urls)  # nothing outside the file
    assert links.anchors == ["run", "results", "plots", "weights", "units", "examples"]
    rows = json.loads((run / "compare.json").read_text())
    for row in rows:  # the comparison table with its intervals, and the verdict sentences
        assert f"{100 * row['top1']['mean']:.1f}±" in page
    assert "Δ vs none" in page and "paired over seeds" in page
    explainer = Explainer.from_run(run)
    head = explainer.model.class_concept_weights().numpy()
    used = [c for j, c in enumerate(explainer.concepts) if (head[:, j] != 0).any()]
    assert all(concept in links.headings for concept in used)  # every used unit's top images
    assert sum(1 for h in links.headings if h.startswith(("correct:", "wrong:"))) >= 2
    assert page.count('src="data:image/png') == 3  # curves, sparsity and activation histograms
    with weights.open(newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["class"] + explainer.concepts + ["bias"] and len(table) == 1 + len(explainer.classes)
    assert np.allclose(np.array(table[1:])[:, 1:-1].astype(float), head, atol=1e-5)
    quiet = cli("report", run, "-o", tmp_path / "quiet.html", "-q")
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_report_of_a_single_run_and_a_run_without_its_cache(cli, unit_runs, tmp_path):
    page = html.unescape(build_report(unit_runs["single"], unit_images=3, examples=1))
    assert "both heads" in page.lower() and "Comparison on the test split" not in page
    assert "(the run's model)" in page and "faithfulness" in page
    moved = tmp_path / "run"
    shutil.copytree(unit_runs["single"], moved)
    meta = json.loads((moved / "model.json").read_text())
    meta["cache"] = str(tmp_path / "gone.h5")
    (moved / "model.json").write_text(json.dumps(meta))
    page = build_report(moved)
    assert "is missing: no images" in page and 'id="weights"' in page  # what needs no cache is still there
    (moved / "curves.png").write_bytes(b"<svg onload=alert(1)>")  # not a PNG: left out, never embedded
    assert "curves.png is not a PNG cbmctl drew" in build_report(moved) and "onload" not in build_report(moved)


def test_names_in_the_page_and_the_csv_are_data_not_code():
    text = weights_csv(["=HYPERLINK(\"http://x\")", "@SUM(A1)", "plain"], ["+1 concept", "-x", "ok\x1b[2J"],
                       np.zeros((3, 3)), np.zeros(3))
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["class", "'+1 concept", "'-x", "ok\\x1b[2J", "bias"]
    assert [r[0] for r in rows[1:]] == ["'=HYPERLINK(\"http://x\")", "'@SUM(A1)", "plain"]
    from cbmctl.html_page import table
    from cbmctl.html_page import text as escaped
    assert escaped("<script>\x1b") == "&lt;script&gt;\\x1b"
    assert "<img" not in table(["a"], [["<img src=x onerror=alert(1)>"]])


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHECK = """<script>
const blocked = [];
document.addEventListener('securitypolicyviolation', e => blocked.push(e.blockedURI));
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  document.documentElement.setAttribute('data-check', JSON.stringify({images: images.length,
    loaded: images.filter(i => i.complete && i.naturalWidth > 0).length,
    requests: performance.getEntriesByType('resource').map(r => r.name), blocked: blocked}));
});
</script>"""


def test_report_renders_in_a_headless_browser_without_any_request(unit_runs, tmp_path):
    browser = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if browser is None:
        pytest.skip("no Chromium here (apt-get install chromium): the page is checked in a real browser only "
                    "where one exists")
    page = build_report(unit_runs["comparison"], unit_images=3, examples=1)
    # the checker script needs the policy gone, which also shows that the page itself asks for nothing: any
    # URL it referenced would now be fetched, and listed by the browser's resource timing
    checked = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page).replace("<head>", "<head>" + CHECK, 1)
    (tmp_path / "report.html").write_text(checked)
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--no-first-run", "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=5000",
                           "--dump-dom", (tmp_path / "report.html").as_uri()], capture_output=True, text=True,
                          timeout=120)
    found = re.search(r'data-check="([^"]*)"', done.stdout)
    assert found, done.stderr[-2000:]
    result = json.loads(found.group(1).replace("&quot;", '"'))
    assert result["images"] > 10 and result["loaded"] == result["images"]  # every thumbnail and plot decoded
    assert result["requests"] == [] and result["blocked"] == []
