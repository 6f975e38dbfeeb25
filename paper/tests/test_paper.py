"""The paper cannot drift from saved_results/: every macro main.tex uses is generated from the CSVs,
every figure it includes is rendered from them, both deterministically, and the prose types no
result number and makes no claim the data cannot carry. A slow test builds the PDF."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "paper"
SCRIPTS = PAPER / "scripts"


def run_script(name: str, *args: str) -> None:
    subprocess.run([sys.executable, str(SCRIPTS / name), *args], check=True, capture_output=True, cwd=ROOT)


def tex_without_comments() -> str:
    return "\n".join(re.sub(r"(?<!\\)%.*", "", line) for line in (PAPER / "main.tex").read_text().splitlines())


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper")
    run_script("numbers.py", "--out", str(out / "numbers.tex"))
    run_script("render_paper_figures.py", "--out", str(out / "figures"))
    return out


def defined_macros(numbers: Path) -> set[str]:
    return set(re.findall(r"\\newcommand\{\\(\w+)\}", numbers.read_text()))


def test_every_number_macro_main_tex_uses_is_generated(generated):
    defined = defined_macros(generated / "numbers.tex")
    from_csv = {m for m in defined if not m.endswith(("CI", "N"))}
    used = set(re.findall(r"\\([A-Z]\w+)", tex_without_comments())) & {m for name in from_csv for m in (name, name + "CI", name + "N")}
    assert used, "main.tex quotes no generated number"
    capitalised = set(re.findall(r"\\([A-Z][A-Za-z]+)\{\}", tex_without_comments()))
    assert capitalised <= defined, f"main.tex uses undefined macros {sorted(capitalised - defined)}"


def test_every_included_figure_is_rendered_from_the_committed_csvs(generated):
    included = re.findall(r"\\includegraphics(?:\[[^]]*\])?\{generated/figures/([\w.]+)\}", tex_without_comments())
    assert included
    for name in included:
        assert (generated / "figures" / name).is_file(), f"{name} is not produced by render_paper_figures.py"


def test_the_generator_and_the_renderer_are_deterministic(generated, tmp_path):
    run_script("numbers.py", "--out", str(tmp_path / "numbers.tex"))
    run_script("render_paper_figures.py", "--out", str(tmp_path / "figures"))
    assert (tmp_path / "numbers.tex").read_bytes() == (generated / "numbers.tex").read_bytes()
    for path in sorted((generated / "figures").iterdir()):
        assert (tmp_path / "figures" / path.name).read_bytes() == path.read_bytes(), f"{path.name} differs between two renders"


def test_a_changed_csv_value_changes_its_macro(tmp_path):
    saved = tmp_path / "saved_results"
    shutil.copytree(ROOT / "saved_results", saved)
    csv = saved / "phase03_repair_4q.csv"
    text = csv.read_text().splitlines()
    header = text[0].split(",")
    for i, line in enumerate(text[1:], start=1):
        cells = line.split(",")
        row = dict(zip(header, cells))
        if (row["condition"], row["B"], row["K"]) == ("IdleKV", "192", "24"):
            cells[header.index("accuracy")] = "0.123"
            text[i] = ",".join(cells)
    csv.write_text("\n".join(text) + "\n")
    run_script("numbers.py", "--saved", str(saved), "--out", str(tmp_path / "numbers.tex"))
    assert "\\newcommand{\\FourQIdleKV}{0.123}" in (tmp_path / "numbers.tex").read_text()


def test_the_prose_types_no_result_number():
    body = tex_without_comments().split("\\begin{document}", 1)[1]
    # a decimal in the body is a result unless it is a length (a figure's width) or part of a name (Llama-3.1-8B)
    decimals = re.findall(r"(?<![\w.\-])\d+\.\d+(?![\w.\-])(?!\s*(?:\\linewidth|\\textwidth))", body)
    assert not decimals, f"hand-typed decimals in main.tex: {decimals}; quote them through paper/scripts/numbers.py"


def paragraphs() -> list[str]:
    body = tex_without_comments().split("\\begin{document}", 1)[1]
    return [p for p in re.split(r"\n\s*\n", body) if p.strip()]


def test_the_language_carries_only_what_the_data_can():
    text = tex_without_comments()
    assert not re.search(r"\bprove[sd]?\b", text, re.IGNORECASE), "no result proves anything here"
    quoted = re.compile(r"\\([A-Z][A-Za-z]+?)(CI|N)?\{\}")
    for paragraph in paragraphs():
        for sentence in re.split(r"(?<=[.!?])\s+", paragraph):
            if re.search(r"significant", sentence, re.IGNORECASE):
                assert "CI{}" in sentence, f"'significant' without an interval in: {sentence[:120]}"
        results = [m for m in quoted.finditer(paragraph) if m.group(2) is None]
        if results:
            assert any(m.group(2) == "N" for m in quoted.finditer(paragraph)), f"a result stated without its n: {paragraph[:160]}"
            for m in results:  # every quoted mean comes with its interval, in the same paragraph
                assert f"\\{m.group(1)}CI{{}}" in paragraph or m.group(1) in ALLOWED_WITHOUT_INTERVAL, f"\\{m.group(1)} without its interval"


ALLOWED_WITHOUT_INTERVAL = {"FourQFull", "FourQSpanRefKeight", "TurnsFullLast"}  # ceilings and references, not claims


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("latexmk") is None, reason="latexmk is not installed (apt-get install latexmk texlive-latex-recommended texlive-latex-extra)")
def test_make_paper_builds_the_pdf():
    done = subprocess.run([sys.executable, str(SCRIPTS / "build.py")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (PAPER / "main.pdf").stat().st_size > 50_000
