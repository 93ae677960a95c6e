"""The audit report in a real browser: headless Chromium (Debian's ``chromium``, installed by
.ci/run) opens report.html from disk, and every section and figure must render with no
broken image and no console error; a click on a tile shows its row's scores. A full-page
screenshot is kept under ``test-artifacts/`` (or ``$VETSET_TEST_ARTIFACTS``).

The report is built from real images (scikit-learn's digits with a simulated BadNets
trigger and label noise, and the truth table), real fusion and the real writers; the
detectors' scores are drawn from the truth table with noise, since this test is about the
report, not the detectors (tests/test_audit_flow.py renders the demo's real audit).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import cleansers  # noqa: F401  (registers the detectors and their kinds)
from cleansers.audit import write_outputs
from cleansers.base import DetectorResult
from cleansers.fusion import fuse_and_decide
from pipelines.embedded import load_digits_rgb
from pipelines.outputs import RunPaths, staged_run
from pipelines.report import render_report
from pipelines.simulate import SimulationSpec, simulate

ARTIFACTS = Path(os.environ.get("VETSET_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("no Chromium on PATH: install Debian's chromium package (.ci/run does: apt-get install chromium)")


def _report(tmp_path: Path) -> Path:
    clean = load_digits_rgb(size=32)
    sim = simulate(clean, SimulationSpec(attack="badnets", poison_rate=0.08, target=0, noise="symmetric",
                                         noise_rate=0.05, seed=0))
    ds, truth = sim.dataset, sim.truth
    rng = np.random.default_rng(0)
    poisoned, noisy = truth["is_poisoned"].to_numpy(bool), truth["is_noisy"].to_numpy(bool)
    n = len(ds)
    senti = np.where(poisoned, rng.uniform(0.5, 1.0, n), rng.uniform(0.0, 0.6, n))
    senti_flag = senti >= 0.5
    regions = {"0": [{"top": 24, "left": 24, "size": 8, "rows": int((senti_flag & (ds.labels == 0)).sum())}]}
    sentinet = DetectorResult("sentinet", senti, senti_flag, None, {
        "finding": "rows whose region alone moves other classes' images", "seconds": 1.0,
        "regions_per_class": regions,
        "class_evidence": [{"class": 0, "signal": "sentinet_rows", "value": int((senti_flag & (ds.labels == 0)).sum()),
                            "threshold": 10, "strength": "strong", "detail": "most in one window"}]})
    conf = np.where(noisy, rng.uniform(0.4, 1.0, n), rng.uniform(0.0, 0.5, n))
    conf_flag = conf >= 0.45
    guess = np.where(noisy, truth["original_label"].to_numpy(), (ds.labels + 1) % ds.num_classes)
    suggested = np.where(conf_flag, guess, -1)
    confident = DetectorResult("confident", conf, conf_flag, suggested, {"finding": "cleanlab", "seconds": 1.0})
    agpd = DetectorResult("agpd", poisoned * 2.0 + rng.normal(0, 1, n), np.zeros(n, bool), None,
                          {"finding": "no target class", "seconds": 1.0})
    results = [agpd, sentinet, confident]
    frame, verdict = fuse_and_decide(ds, results)
    paths = RunPaths(tmp_path / "audit")
    with staged_run(paths) as staged:
        manifest, metrics = write_outputs(ds, frame, results, staged, run_id="browser-test", config={},
                                          timings={}, truth=truth, verdict=verdict)
        render_report(ds, frame, manifest, metrics, staged, verdict, truth=truth)
    assert verdict.backdoor_classes == ["0"]
    return paths.report_html


def test_the_report_renders_in_headless_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    report = _report(tmp_path)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(report.as_uri())
            page.wait_for_load_state("load")
            for selector in ("#verdict", "#class-sizes", "#score-distributions", "#roc-pr", "#trigger img",
                             "#detectors table", "#truth table", "figure.tile"):
                assert page.locator(selector).count() >= 1, f"{selector} missing from the report"
            assert "Likely backdoor" in page.locator("#verdict").inner_text()
            images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])")
            broken = [alt for ok, width, alt in images if not ok or width == 0]
            assert not broken, f"broken images: {broken[:5]}"
            assert len(images) >= 4 + page.locator("figure.tile").count()
            # plots are drawn at a readable size
            assert page.evaluate("document.getElementById('class-sizes').naturalWidth") >= 400
            assert page.locator("#row-detail").is_hidden()
            page.locator("figure.tile").first.click()
            detail = page.locator("#row-detail")
            assert detail.is_visible() and "sentinet score" in detail.inner_text()
            assert "dirty score" in detail.inner_text()
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000


def _open(page, path: Path, errors: list[str]) -> None:
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])")
    assert images and not [alt for ok, width, alt in images if not ok or width == 0], images


def test_train_and_purify_reports_render_in_headless_chromium(tmp_path):
    """A real (tiny) ABL run on poisoned digits and a fine-tuning purification of it: each
    run folder gets a report.html with its CA / ASR table, its curves and (ABL) the isolated
    rows, and both render with no broken image or console error."""
    from playwright.sync_api import sync_playwright

    from pipelines.parquet_io import write_dataset_parquet
    from pipelines.simulate import write_simulation
    from trainers.purify.residual import ResidualConfig
    from trainers.purify.run import purify_and_save
    from trainers.train import train_and_save

    ds = load_digits_rgb(size=16)
    perm = np.random.default_rng(0).permutation(len(ds))
    train, test, clean = ds.subset(perm[:600]), ds.subset(perm[600:900]), ds.subset(perm[900:1100])
    sim = simulate(train, SimulationSpec(attack="badnets", poison_rate=0.1, seed=0))
    files = write_simulation(sim, tmp_path / "dirty")
    write_dataset_parquet(test, tmp_path / "test.parquet")
    model_dir = tmp_path / "abl"
    metrics = train_and_save(files["data"], model_dir, test=tmp_path / "test.parquet", model="small_cnn",
                             preset="cpu_small", epochs=2, device="cpu", log=None, defense="abl",
                             defense_options={"isolation_epochs": 2, "unlearn_epochs": 1, "isolation_ratio": 0.05})
    # every epoch of every stage carries CA and ASR on the test rows (the trigger.json beside the data)
    assert metrics["history"] and all({"clean_acc", "asr"} <= set(h) for h in metrics["history"])
    purified = tmp_path / "ft"
    purify_and_save(clean=clean, method="ft", out=purified, model_dir=model_dir, test=test, trigger=sim.trigger,
                    options={"epochs": 1}, device="cpu", log=None, force=True,
                    residual=ResidualConfig(rows=40, steps_per_class=40))
    train_html = (model_dir / "report.html").read_text()
    assert "Rows ABL isolated (30)" in train_html and "Against the truth table:" in train_html
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            _open(page, model_dir / "report.html", errors)
            for selector in ("#results table", "#training-curves", "#rows figure.tile", "#facts"):
                assert page.locator(selector).count() >= 1, selector
            assert page.locator("#rows figure.tile").count() == 30
            assert "Stages, in order: isolation, finetune, unlearn" in page.locator("#curves").inner_text()
            assert "CA and ASR per epoch" in page.locator("#monitor-note").inner_text()
            page.screenshot(path=str(ARTIFACTS / "train-report.png"), full_page=True)
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(purified.joinpath("report.html").as_uri())
            page.wait_for_load_state("load")
            assert page.locator("#results table tr").count() == 3 and page.locator("#residual-summary").count() == 1
            assert "Backdoor evidence before:" in page.locator("#residual-summary").inner_text()
            page.screenshot(path=str(ARTIFACTS / "purify-report.png"), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
