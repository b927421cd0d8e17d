"""Copy build inputs that live outside docs/ into the site (run by mkdocs-gen-files).

* ``experiments/figures/*.png`` -> ``figures/*.png`` (the experiment pages show them);
* ``experiments/quickstart.ipynb`` -> ``quickstart.ipynb`` (rendered by mkdocs-jupyter, not executed);
* ``CONTRIBUTING.md`` and ``CHANGELOG.md`` are included by ``contributing.md``/``changelog.md``.

The files stay single-sourced in the repository; nothing copied here is committed.
"""

from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parent.parent

for png in sorted((ROOT / "experiments" / "figures").glob("*.png")):
    with mkdocs_gen_files.open(Path("figures", png.name), "wb") as fd:
        fd.write(png.read_bytes())

with mkdocs_gen_files.open("quickstart.ipynb", "w") as fd:
    fd.write((ROOT / "experiments" / "quickstart.ipynb").read_text(encoding="utf-8"))
