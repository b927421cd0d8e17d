"""Generate one API reference page per public module of lstm_jax (run by mkdocs-gen-files).

Walks ``lstm_jax/`` at build time, so modules that are added, moved or turned into packages
are documented without editing anything here. Private modules (a path part starting with
``_``, other than ``__init__``) are skipped. The pages live under ``reference/`` with a
``SUMMARY.md`` that mkdocs-literate-nav turns into the navigation.
"""

from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lstm_jax"

nav = mkdocs_gen_files.Nav()

for path in sorted(PACKAGE.rglob("*.py")):
    module_path = path.relative_to(ROOT).with_suffix("")
    parts = tuple(module_path.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
        doc_path = Path(*parts[1:], "index.md") if len(parts) > 1 else Path("index.md")
    elif parts[-1] == "__main__":
        continue
    else:
        doc_path = Path(*parts[1:]).with_suffix(".md")
    if any(part.startswith("_") for part in parts):
        continue
    ident = ".".join(parts)
    nav[parts] = doc_path.as_posix()
    with mkdocs_gen_files.open(Path("reference", doc_path), "w") as fd:
        if len(parts) == 1:
            # The top-level package re-exports names documented on their own modules' pages.
            fd.write(f"# {ident}\n\n::: {ident}\n    options:\n      members: false\n")
        else:
            fd.write(f"# {ident}\n\n::: {ident}\n")
    mkdocs_gen_files.set_edit_path(Path("reference", doc_path), path.relative_to(ROOT))

with mkdocs_gen_files.open("reference/SUMMARY.md", "w") as nav_file:
    nav_file.writelines(nav.build_literate_nav())
