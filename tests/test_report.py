"""The report: a real search of the tiny pipeline, its page's structure, its sources, the command line, a browser."""

from __future__ import annotations

import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml
from optuna.storages.journal import JournalFileBackend
from typer.testing import CliRunner

from autotune import pipelines
from autotune.apply import apply_settings
from autotune.cli import app
from autotune.hardware import probe
from autotune.measure.quality import PSNR_CAP, images_path, save_images
from autotune.report import REFERENCE, ReportError, psnr, report_source, write_report
from autotune.tuner.run import run_search

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
TRIALS = 4
PLOTS = ("tradeoff", "importances", "history")


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory):
    """A real search: 4 trials of the tiny pipeline, its profile p.yaml and study p.db."""
    out = tmp_path_factory.mktemp("report") / "p.yaml"
    return run_search("builtin:tiny-sd-random", budget="4GB", n_trials=TRIALS, out=out, steps=2, height=64, width=64,
                      max_batch=2, top_k=1, rounds=1, pinned={"compile": "none"})


@pytest.fixture(scope="module")
def study(searched) -> optuna.Study:
    return optuna.load_study(study_name=searched.study_name, storage=searched.profile.provenance.storage)


def render(settings: dict, prompts: list[str], seed: int) -> np.ndarray:
    """The workload's prompts, seeded, on a fresh tiny pipeline with `settings` applied."""
    pipe = pipelines.tiny_sd_random()
    apply_settings(pipe, settings, probe().hardware)
    images = pipe(prompts, num_inference_steps=2, height=64, width=64, output_type="np",
                  generator=torch.Generator().manual_seed(seed)).images
    return np.asarray(images, dtype=np.float32)


@pytest.fixture(scope="module")
def renderings(searched, study) -> dict[str, np.ndarray]:
    """Each trial's configuration rendered, keyed "trial N", plus the reference (the default configuration)."""
    workload = searched.profile.workload
    rendered = {REFERENCE: render({}, workload.prompts, workload.seed)}
    for trial in study.trials:
        rendered[f"trial {trial.number}"] = render(trial.user_attrs["settings"], workload.prompts, workload.seed)
    return rendered


@pytest.fixture(scope="module")
def images(searched, renderings) -> dict[str, np.ndarray]:
    """The reference, the chosen profile's configuration, and the trial whose images differ most: 3 rows."""
    workload = searched.profile.workload
    trials = [label for label in renderings if label != REFERENCE]
    farthest = min(trials, key=lambda label: np.mean([psnr(image, reference) for image, reference in zip(
        renderings[label], renderings[REFERENCE], strict=True)]))
    return {REFERENCE: renderings[REFERENCE],
            "chosen": render(searched.profile.settings_dict(), workload.prompts, workload.seed),
            farthest: renderings[farthest]}


class Page(HTMLParser):
    """What a test checks on a report: element ids, images, links, rows of the top table, captions, notes."""

    def __init__(self, text: str):
        super().__init__()
        self.ids: set[str] = set()
        self.images: list[dict] = []
        self.links: list[str] = []
        self.top_rows = 0
        self.captions: list[str] = []
        self.notes: list[str] = []
        self._table: str | None = None
        self._body = False
        self._text_into: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        self.links += [attrs[key] for key in ("src", "href") if attrs.get(key)]
        if tag == "img":
            self.images.append(attrs)
        elif tag == "table":
            self._table = attrs.get("class")
        elif tag == "tbody":
            self._body = True
        elif tag == "tr" and self._body and self._table == "top":
            self.top_rows += 1
        elif tag == "figcaption":
            self._text_into = self.captions
        elif tag == "p" and attrs.get("class") == "note":
            self._text_into = self.notes
        if self._text_into is not None and tag in ("figcaption", "p"):
            self._text_into.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._body = False
        elif tag in ("figcaption", "p"):
            self._text_into = None

    def handle_data(self, data: str) -> None:
        if self._text_into is not None:
            self._text_into[-1] += data


def test_the_report_of_a_real_search_has_every_section_and_no_external_link(searched, study, images, tmp_path):
    path = write_report(study, tmp_path / "r.html", searched.profile, images)
    text = path.read_text()
    page = Page(text)

    assert {"tradeoff", "importances", "history", "top", "images"} <= page.ids
    assert {f"plot-{name}" for name in PLOTS} <= page.ids
    assert "Speed against memory" in text and "Pareto front" not in text  # a single-objective study
    assert page.top_rows == TRIALS
    assert "(chosen)" in text
    assert len(page.images) == len(images) * len(searched.profile.workload.prompts)
    assert all(image["src"].startswith("data:image/png;base64,") for image in page.images)
    assert not [link for link in page.links if link.startswith(("http:", "https:", "//"))]
    assert searched.profile.model.id in text and searched.study_name in text


def test_each_image_is_captioned_with_its_psnr_against_the_reference(searched, study, images, tmp_path):
    page = Page(write_report(study, tmp_path / "r.html", searched.profile, images).read_text())

    expected = ["" for _ in images[REFERENCE]]
    for label, array in images.items():
        if label != REFERENCE:
            scores = [psnr(image, reference) for image, reference in zip(array, images[REFERENCE], strict=True)]
            expected += ["identical" if s >= PSNR_CAP else f"PSNR {s:.1f} dB" for s in scores]
    assert page.captions == expected
    assert any(caption.startswith("PSNR") for caption in page.captions)  # fp32 and fp16 renderings differ


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # set_metric_names
def test_a_multi_objective_study_shows_its_pareto_front(searched, study, renderings, tmp_path):
    # The Pareto search writes such studies; this one holds the real trials with their renderings' real PSNR.
    pareto = optuna.create_study(directions=["maximize", "minimize", "maximize"], study_name="pareto")
    pareto.set_metric_names(["images/s", "peak memory (GiB)", "psnr"])
    for key, value in study.user_attrs.items():
        pareto.set_user_attr(key, value)
    for trial in study.trials:
        scores = [psnr(image, reference) for image, reference in
                  zip(renderings[f"trial {trial.number}"], renderings[REFERENCE], strict=True)]
        quality = min(100.0, float(np.mean(scores)))  # identical renderings have infinite PSNR: cap it
        attrs = trial.user_attrs
        pareto.add_trial(optuna.trial.create_trial(
            params=trial.params, distributions=trial.distributions, constraints=trial.constraints,
            values=[attrs["images_per_s"], attrs["peak_memory_bytes"] / 2**30, quality],
            user_attrs={**attrs, "quality": {"psnr": quality}}))

    text = write_report(pareto, tmp_path / "pareto.html", None, {REFERENCE: renderings[REFERENCE]}).read_text()
    page = Page(text)

    assert "Pareto front" in text and {f"plot-{name}" for name in PLOTS} <= page.ids
    assert page.top_rows == TRIALS
    assert text.count("<td>psnr ") == TRIALS
    assert "Objective Value" not in text  # the objectives are named


def test_too_few_trials_and_no_images_leave_a_note_instead(study, tmp_path):
    small = optuna.create_study(direction="maximize", study_name="small")
    small.add_trial(study.trials[0])

    page = Page(write_report(small, tmp_path / "small.html").read_text())

    assert "plot-importances" not in page.ids and "plot-history" in page.ids
    assert any(note.startswith("Too few completed trials (1)") for note in page.notes)
    assert any(note.startswith("No images were saved") for note in page.notes)
    assert page.top_rows == 1 and not page.images


def test_text_in_the_page_is_escaped(study, renderings, tmp_path):
    label = "<script>alert(1)</script>"
    text = write_report(study, tmp_path / "e.html", None, {REFERENCE: renderings[REFERENCE], label: renderings[
        REFERENCE]}).read_text()
    assert label not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text


# ---- sources ----


def test_the_images_sidecar_round_trips_and_a_profile_finds_its_study_and_images(searched, images, tmp_path):
    profile_path = tmp_path / "q.yaml"
    searched.profile.save(profile_path)
    save_images(images_path(profile_path), images)

    found = report_source(profile_path)

    assert images_path(profile_path).name == "q.images.npz"
    assert found.study.study_name == searched.study_name and found.profile == searched.profile
    assert list(found.images) == list(images) and all(np.array_equal(found.images[k], images[k]) for k in images)
    assert found.default_output == tmp_path / "q.html"
    assert report_source(searched.profile_path).images is None


def test_a_study_database_or_url_is_a_source_too(searched):
    database = Path(searched.profile.provenance.storage.removeprefix("sqlite:///"))

    by_file = report_source(database)
    by_url = report_source(searched.profile.provenance.storage, study_name=searched.study_name)

    assert by_file.study.study_name == by_url.study.study_name == searched.study_name
    assert by_file.profile is None and by_file.default_output == database.with_suffix(".html")
    assert by_url.default_output == Path(f"{searched.study_name}.html")


def test_a_journal_file_study_is_a_source_too_by_path_or_by_a_profiles_provenance(searched, tmp_path, monkeypatch):
    # A search given a plain path as --storage keeps its study in Optuna's journal file, not in SQLite.
    journal = tmp_path / "s.journal"
    optuna.copy_study(from_study_name=searched.study_name, from_storage=searched.profile.provenance.storage,
                      to_storage=optuna.storages.JournalStorage(JournalFileBackend(str(journal))))
    profile = searched.profile.model_dump(mode="json", by_alias=True)
    profile["provenance"]["storage"] = journal.name  # as recorded by a search run in the profile's folder
    (tmp_path / "j.yaml").write_text(yaml.safe_dump(profile))
    monkeypatch.chdir(tmp_path.parent)  # the relative path is found next to the profile

    by_file = report_source(journal)
    by_profile = report_source(tmp_path / "j.yaml")
    result = CliRunner().invoke(app, ["report", str(journal), "-o", str(tmp_path / "j.html")])

    assert by_file.study.study_name == by_profile.study.study_name == searched.study_name
    assert len(by_file.study.trials) == TRIALS and by_file.profile is None
    assert by_file.default_output == tmp_path / "s.html"
    # Written relative to the profile's folder, read back as a path of this machine.
    assert by_profile.profile.provenance.storage == str((tmp_path / "s.journal").resolve())
    assert by_profile.images is None
    assert by_profile.profile.settings == searched.profile.settings
    assert result.exit_code == 0, result.output
    assert Page((tmp_path / "j.html").read_text()).top_rows == TRIALS


def test_a_profile_set_uses_its_first_profiles_study(searched, tmp_path):
    first = searched.profile.model_dump(mode="json", by_alias=True)
    (tmp_path / "set.yaml").write_text(yaml.safe_dump({"profiles": [first, first], "picks": {"fastest": 0}}))

    assert report_source(tmp_path / "set.yaml").study.study_name == searched.study_name


@pytest.mark.parametrize("case, message", [
    ("missing file", "no such file; give a profile YAML"),
    ("missing database", "no such database file"),
    ("unknown study", "no study 'nope' in sqlite:///"),
    ("hidden password", "hides its password; give the URL with --storage"),
    ("no storage", "records no study storage; give it with --storage"),
    ("missing journal", "no such journal file"),
])
def test_a_bad_source_says_what_to_give_instead(searched, tmp_path, case, message):
    profile = searched.profile.model_dump(mode="json", by_alias=True)
    if case == "hidden password":
        profile["provenance"]["storage"] = "postgresql://tuner:***@db.example/studies"
    if case == "no storage":
        profile["provenance"]["storage"] = None
    if case == "missing journal":
        profile["provenance"]["storage"] = str(tmp_path / "nothing.journal")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(profile))
    source, study = {
        "missing file": (tmp_path / "nothing.yaml", None),
        "missing database": (f"sqlite:///{tmp_path / 'nothing.db'}", None),
        "unknown study": (searched.profile.provenance.storage, "nope"),
    }.get(case, (tmp_path / "p.yaml", None))

    with pytest.raises(ReportError, match=message.replace("(", r"\(")):
        report_source(source, study_name=study)
    assert not (tmp_path / "nothing.db").exists() and not (tmp_path / "nothing.journal").exists()


# ---- the command line ----


def test_autotune_report_writes_the_page_and_prints_its_path(searched, tmp_path):
    result = CliRunner().invoke(app, ["report", str(searched.profile_path), "-o", str(tmp_path / "out.html")])

    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(tmp_path / "out.html")
    assert Page((tmp_path / "out.html").read_text()).top_rows == TRIALS


def test_autotune_report_on_a_missing_file_gives_one_line_and_exit_2(tmp_path):
    script = Path(sys.executable).with_name("autotune")
    result = subprocess.run([str(script), "report", "nothing.yaml"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)

    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["autotune: error: nothing.yaml: no such file; give a profile YAML, a study's .db or .journal "
                     "file, or a storage URL"], result.stderr


# ---- in a browser ----


def chromium(page: Path, *flags: str) -> subprocess.CompletedProcess:
    profile = page.parent / f".chromium-{page.stem}"
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", *flags, page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Chromium at /usr/bin/chromium (apt-get install chromium)")
def test_the_report_renders_in_headless_chromium_without_script_errors(searched, study, images, tmp_path):
    path = write_report(study, tmp_path / "r.html", searched.profile, images)

    dom = chromium(path, "--dump-dom").stdout

    for name in PLOTS:  # plotly drew each figure: its div holds plotly's svg
        assert 'class="main-svg"' in dom.split(f'id="plot-{name}"', 1)[1].split("</section>", 1)[0], name
    assert 'class="js-error"' not in dom
    # The page does record a script error: the check above can fail.
    broken = tmp_path / "broken.html"
    broken.write_text(path.read_text().replace("</body>", "<script>no_such_function()</script></body>"))
    assert 'class="js-error"' in chromium(broken, "--dump-dom").stdout

    shot = tmp_path / "report.png"
    chromium(path, f"--screenshot={shot}", "--window-size=1280,4000")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("AUTOTUNE_REPORT_SCREENSHOT"):  # for a person to look at
        Path(os.environ["AUTOTUNE_REPORT_SCREENSHOT"]).write_bytes(shot.read_bytes())


def test_without_plotly_the_report_says_so_in_one_line(study, tmp_path, monkeypatch):
    # A GPU machine without a package index may lack plotly: the report's plots need it, nothing else does.
    import sys

    from autotune.exceptions import Unavailable

    monkeypatch.setitem(sys.modules, "plotly", None)
    monkeypatch.setitem(sys.modules, "plotly.offline", None)
    with pytest.raises(Unavailable, match=r"^the report draws its plots with plotly, which is not installed here"):
        write_report(study, tmp_path / "no-plotly.html")
    assert not (tmp_path / "no-plotly.html").exists()
