"""make paper: figures and numbers from saved_results/, then paper/main.pdf with latexmk.

Intermediates go to paper/build/. The build fails on an undefined reference or citation and on an
overfull box wider than OVERFULL_PT (each reported with its line in main.log).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAPER = HERE.parent
OVERFULL_PT = 5.0
UNDEFINED = re.compile(r"(LaTeX Warning: (Reference|Citation) .* undefined|There were undefined references|Warning--I didn't find a database entry)")
OVERFULL = re.compile(r"Overfull \\[hv]box \((\d+(?:\.\d+)?)pt too (?:wide|high)\)")


def problems(log: str) -> list[str]:
    found = [m.group(0) for m in UNDEFINED.finditer(log)]
    found += [m.group(0) for m in OVERFULL.finditer(log) if float(m.group(1)) > OVERFULL_PT]
    return found


def main() -> int:
    if shutil.which("latexmk") is None:
        print("latexmk is not installed: apt-get install latexmk texlive-latex-recommended texlive-latex-extra", file=sys.stderr)
        return 2
    for script in ("render_paper_figures.py", "numbers.py"):
        subprocess.run([sys.executable, str(HERE / script)], check=True)
    build = PAPER / "build"
    done = subprocess.run(["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", f"-outdir={build}", "main.tex"],
                          cwd=PAPER, capture_output=True, text=True)
    log = (build / "main.log").read_text(errors="replace") if (build / "main.log").exists() else ""
    blg = (build / "main.blg").read_text(errors="replace") if (build / "main.blg").exists() else ""
    found = problems(log + blg)
    if done.returncode != 0 or found:
        print(done.stdout[-3000:], file=sys.stderr)
        for line in found:
            print(f"paper: {line}", file=sys.stderr)
        return 1
    shutil.copyfile(build / "main.pdf", PAPER / "main.pdf")
    print(f"wrote {PAPER / 'main.pdf'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
