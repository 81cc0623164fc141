"""Build the documentation site offline: mkdocs + mkdocs-material + mkdocs-jupyter (all from PyPI).

nbdev's own docs path (`nbdev_docs`, `nbdev_readme`) needs Quarto, which is not pip-installable and cannot
be fetched on this project's machines; this script builds the same material with pip-installable tools:

1. the library notebooks (those with `#| default_exp`) are executed on copies, cell by cell, so that their
   demo outputs (figures, tables) appear; cells flagged with settings.ini's `tst_flags` (`#| notest`,
   `#| slow`: the slow ones) or `#| eval: false` are shown but not run. Executed copies are cached under
   _build/cache, keyed by the notebook and the library's code. `#| hide` cells are dropped and `#|`
   directive lines removed from what is shown;
2. the experiment reports outputs/*.ipynb are copied with their ipywidget state stripped;
3. an API reference page per module is written from the docstrings and docments (fastcore.docments), with
   no source links (nbdev's show_doc links end in `#LNone` and point at a site that does not exist);
4. `mkdocs build --strict` (a warning is an error, internal links included), then every href/src of the
   built site is checked for a target that exists.

usage: python scripts/build_docs.py [--no-exec]     (scripts/build_docs.sh runs it in .venv)
"""
import argparse
import hashlib
import html
import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from configparser import ConfigParser
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
BUILD, SITE = ROOT / "_build", ROOT / "site"
SRC = BUILD / "docs"  # mkdocs' docs_dir: docs/ plus the generated pages
sys.path.insert(0, str(ROOT / "scripts"))
from strip_widgets import strip_widgets  # noqa: E402


# that MathJax ships only the STIX-Web fonts: without this, formulas that need a TeX font glyph fail
MATHJAX_LOCAL = """MathJax.Hub.Config({"HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null}});
MathJax.Ajax.loadComplete("[MathJax]/config/local/cfx.js");
"""


def log(msg): print(f"build_docs: {msg}", flush=True)


def _src(cell): return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _flags(cell):
    "The nbdev directives of a cell, e.g. {'export': [], 'eval:': ['false']}."
    out = {}
    for line in _src(cell).splitlines():
        m = re.match(r"^#\|\s*([\w-]+:?)\s*(.*)$", line)
        if m: out[m.group(1)] = m.group(2).split()
    return out


def notebooks():
    "(library notebooks, experiment notebooks) of nbs/, in file order."
    lib, exp = [], []
    for p in sorted((ROOT / "nbs").glob("*.ipynb")):
        if p.stem == "index": continue
        nb = json.loads(p.read_text(encoding="utf-8"))
        (lib if any("default_exp" in _flags(c) for c in nb["cells"] if c["cell_type"] == "code") else exp).append(p)
    return lib, exp


def _skip(cell, tst_flags):
    f = _flags(cell)
    if f.get("eval:") == ["false"]: return "eval: false"
    hit = [t for t in tst_flags if t in f]
    return f"#| {hit[0]}" if hit else None


def execute(path: Path, tst_flags, timeout=900) -> dict:
    "Execute a copy of the notebook at `path` (cwd: a temporary folder; cfx_nb from this checkout), skipping flagged cells."
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(str(path), as_version=4)
    env_py = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with tempfile.TemporaryDirectory(prefix="cfx_nb_docs_") as tmp:
        os.environ.update(PYTHONPATH=env_py, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), MPLBACKEND="module://matplotlib_inline.backend_inline")
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": tmp}})
        with client.setup_kernel():
            for i, cell in enumerate(nb.cells):
                if cell.cell_type != "code": continue
                why = _skip(cell, tst_flags)
                if why:
                    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"[not run in the docs build: {why} (slow)]\n")]
                    continue
                client.execute_cell(cell, i)
    return json.loads(nbformat.writes(nb))


def for_display(nb: dict) -> dict:
    "Drop `#| hide` cells, `#|` directive lines and Quarto front matter (raw `---` cells); strip ipywidget state."
    cells = []
    for c in nb["cells"]:
        if c["cell_type"] == "raw" and _src(c).lstrip().startswith("---"): continue  # read as a heading by the TOC
        if c["cell_type"] == "code":
            if "hide" in _flags(c): continue
            c = {**c, "source": "\n".join(l for l in _src(c).splitlines() if not re.match(r"^#\|", l)).strip("\n")}
            if not c["source"].strip() and not c.get("outputs"): continue  # only directives (#| default_exp ...)
        cells.append(c)
    return strip_widgets({**nb, "cells": cells})


def _title(nb: dict, default: str) -> str:
    for c in nb["cells"]:
        if c["cell_type"] == "markdown":
            m = re.search(r"^#\s+(.+)$", _src(c), re.M)
            if m: return m.group(1).strip()
    return default


def _subtitle(nb: dict) -> str:
    "nbdev's `> subtitle` line of the first markdown cell."
    for c in nb["cells"]:
        if c["cell_type"] == "markdown":
            m = re.search(r"^>\s*(.+)$", _src(c), re.M)
            return m.group(1).strip() if m else ""
    return ""


def build_notebooks(lib, tst_flags, no_exec):
    code_key = hashlib.sha256(b"".join(p.read_bytes() for p in sorted((ROOT / "cfx_nb").glob("*.py")))).hexdigest()
    (BUILD / "cache").mkdir(parents=True, exist_ok=True)
    (SRC / "nbs").mkdir(parents=True, exist_ok=True)
    nav = []
    for p in lib:
        key = hashlib.sha256(p.read_bytes() + code_key.encode()).hexdigest()[:16]
        cached = BUILD / "cache" / f"{p.stem}-{key}.ipynb"
        if no_exec: nb = json.loads(p.read_text(encoding="utf-8"))
        elif cached.exists(): nb = json.loads(cached.read_text(encoding="utf-8")); log(f"{p.name}: cached")
        else:
            t = time.time(); nb = execute(p, tst_flags)
            for old in (BUILD / "cache").glob(f"{p.stem}-*.ipynb"): old.unlink()
            cached.write_text(json.dumps(nb, indent=1), encoding="utf-8")
            log(f"{p.name}: executed in {time.time() - t:.0f} s")
        nb = for_display(nb)
        (SRC / "nbs" / p.name).write_text(json.dumps(nb, indent=1), encoding="utf-8")
        nav.append({f"{p.stem}: {_title(nb, p.stem)}": f"nbs/{p.name}"})
    return nav


def build_reports(exp):
    (SRC / "reports").mkdir(parents=True, exist_ok=True)
    nav = []
    for p in exp:
        rep = ROOT / "outputs" / p.name
        if not rep.exists(): log(f"no rendered report for {p.name} (outputs/{p.name}): skipped"); continue
        nb = for_display(json.loads(rep.read_text(encoding="utf-8")))
        (SRC / "reports" / p.name).write_text(json.dumps(nb, indent=1), encoding="utf-8")
        nav.append({f"{p.stem}: {_title(nb, p.stem)}": f"reports/{p.name}"})
    return nav


# ---- API reference from docstrings and docments
def _e(x): return html.escape(str(x), quote=False)


def _anno(a):
    if a is inspect.Parameter.empty: return ""
    return a if isinstance(a, str) else getattr(a, "__name__", str(a))


def _params_table(obj) -> str:
    from fastcore.docments import docments
    try: d = docments(obj, full=True)
    except Exception: return ""  # noqa: BLE001 (builtins, C functions: no docments to show)
    rows = []
    for name, v in d.items():
        if name in ("self", "cls"): continue
        default = "" if v.get("default", inspect.Parameter.empty) is inspect.Parameter.empty else repr(v["default"])
        code = lambda x: f"<code>{_e(x)}</code>" if x else ""
        doc = re.sub(r"`([^`]+)`", r"<code>\1</code>", _e(v.get("docment") or ""))
        rows.append(f"<tr><td>{code(name)}</td><td>{code(_anno(v.get('anno')))}</td><td>{code(default)}</td><td>{doc}</td></tr>")
    if not rows or all(name in ("return",) for name in d): return ""
    return ('<table class="cfx-params"><thead><tr><th>parameter</th><th>type</th><th>default</th><th>description</th></tr></thead>'
            "<tbody>" + "".join(rows) + "</tbody></table>\n")


def _sig(name, obj):
    "The signature, one parameter a line when long, annotations unquoted (the modules use `from __future__ import annotations`)."
    try: sig = inspect.signature(obj)
    except (TypeError, ValueError): return name
    parts, star = [], False
    for p in sig.parameters.values():
        if p.kind == p.KEYWORD_ONLY and not star: parts.append("*"); star = True
        if p.kind == p.VAR_POSITIONAL: star = True
        txt = ("*" if p.kind == p.VAR_POSITIONAL else "**" if p.kind == p.VAR_KEYWORD else "") + p.name
        if p.annotation is not p.empty: txt += f": {_anno(p.annotation)}"
        if p.default is not p.empty: txt += f" = {p.default!r}"
        parts.append(txt)
    ret = f" -> {_anno(sig.return_annotation)}" if sig.return_annotation is not sig.empty else ""
    one = f"{name}({', '.join(parts)}){ret}"
    return one if len(one) <= 88 else f"{name}(\n    " + ",\n    ".join(parts) + f"\n){ret}"


def _doc(obj): return inspect.getdoc(obj) or ""


def _md(text):
    "Plain docstring text, safe in markdown: escaped HTML, and no link or emphasis syntax (`ι_[lo,hi](u)`)."
    parts = re.split(r"(`[^`]*`)", text)  # code spans stay as they are; outside them, escape
    return "".join(p if p.startswith("`") and p.endswith("`") and len(p) > 1 else re.sub(r"([\\[\]*_])", r"\\\1", _e(p))
                   for p in parts)


def _entry(mod, name, obj, level=2) -> str:
    h = "#" * level
    if inspect.isclass(obj):
        out = [f"{h} {name}\n", f"```python\nclass {_sig(name, obj)}\n```\n", _md(_doc(obj)) + "\n", _params_table(obj)]
        for mname, m in inspect.getmembers(obj):
            if mname.startswith("_") or not (inspect.isfunction(m) or isinstance(m, property)): continue
            if getattr(m, "__qualname__", "").split(".")[0] != obj.__name__ and not isinstance(m, property): continue
            if isinstance(m, property):
                out.append(f"{h}# {name}.{mname}\n\n*property* {_md(_doc(m))}\n")
            else:
                out += [f"{h}# {name}.{mname}\n", f"```python\n{_sig(mname, m)}\n```\n", _md(_doc(m)) + "\n", _params_table(m)]
        return "\n".join(out)
    if callable(obj):
        return "\n".join([f"{h} {name}\n", f"```python\n{_sig(name, obj)}\n```\n", _md(_doc(obj)) + "\n", _params_table(obj)])
    return f"{h} {name}\n\n`{_e(type(obj).__name__)}` constant of `{mod.__name__}`.\n"


def build_api(lib):
    (SRC / "api").mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    nav = []
    for p in lib:
        nb = json.loads(p.read_text(encoding="utf-8"))
        modname = next(_flags(c)["default_exp"][0] for c in nb["cells"] if c["cell_type"] == "code" and "default_exp" in _flags(c))
        mod = importlib.import_module(f"cfx_nb.{modname}")
        names = getattr(mod, "__all__", [n for n in vars(mod) if not n.startswith("_")])
        page = [f"# cfx_nb.{modname}\n", f"{_md(_doc(mod))}\n" if mod.__doc__ else "",
                f"Generated from the docstrings and docments of `cfx_nb/{modname}.py`; the notebook that defines "
                f"and demonstrates them is [{p.stem}](../nbs/{p.name}).\n"]
        page += [_entry(mod, n, getattr(mod, n)) for n in names]
        (SRC / "api" / f"{modname}.md").write_text("\n".join(page), encoding="utf-8")
        nav.append({f"cfx_nb.{modname}": f"api/{modname}.md"})
    return nav


# ---- link check of the built site
class _Links(HTMLParser):
    def __init__(self):
        super().__init__(); self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("href", "src") and v: self.links.append(v)
            if k in ("id", "name") and v: self.ids.add(v)


def check_links(site: Path) -> tuple[int, int, list]:
    "(internal links checked, external links seen, broken) over every HTML page of `site`."
    # 404.html uses site-absolute links (/...): it is meant for a web server, not for file://
    pages = {p: _Links() for p in site.rglob("*.html") if p.name != "404.html"}
    for p, parser in pages.items(): parser.feed(p.read_text(encoding="utf-8", errors="replace"))
    n_int, n_ext, broken = 0, 0, []
    for p, parser in pages.items():
        for link in parser.links:
            u = urlsplit(link)
            if u.scheme or link.startswith("//"):
                n_ext += u.scheme in ("http", "https") or link.startswith("//"); continue
            n_int += 1
            target = (p.parent / unquote(u.path)).resolve() if u.path else p
            if target.is_dir() or u.path.endswith("/"): target = target / "index.html"
            if not target.exists(): broken.append(f"{p.relative_to(site)} -> {link}"); continue
            if u.fragment and target.suffix == ".html" and target in pages and unquote(u.fragment) not in pages[target].ids:
                broken.append(f"{p.relative_to(site)} -> {link} (no such anchor)")
    return n_int, n_ext, broken


def _notebook_map(nav_nbs, nav_api, nav_rep):
    "Replace `<!-- notebook-map -->` of index.md with tables of the generated pages."
    rows = ["| notebook | API | what it is |", "|---|---|---|"]
    for nb, api in zip(nav_nbs, nav_api):
        (label, path), (mod, apath) = next(iter(nb.items())), next(iter(api.items()))
        stem, title = label.split(": ", 1)
        sub = _subtitle(json.loads((SRC / path).read_text(encoding="utf-8"))) or title
        rows.append(f"| [{stem}]({path}) | [{mod}]({apath}) | {sub} |")
    rows += ["", "| experiment report | what it reproduces |", "|---|---|"]
    for rep in nav_rep:
        (label, path), = rep.items()
        stem, title = label.split(": ", 1)
        rows.append(f"| [{stem}]({path}) | {title} |")
    idx = SRC / "index.md"
    idx.write_text(idx.read_text(encoding="utf-8").replace("<!-- notebook-map -->", "\n".join(rows)), encoding="utf-8")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-exec", action="store_true", help="do not execute the library notebooks (no demo outputs)")
    args = ap.parse_args(argv)
    t0 = time.time()
    cfg = ConfigParser(delimiters=["="]); cfg.read(ROOT / "settings.ini", encoding="utf-8")
    tst_flags = cfg["DEFAULT"].get("tst_flags", "").split()
    shutil.rmtree(SRC, ignore_errors=True); shutil.rmtree(SITE, ignore_errors=True)
    shutil.copytree(ROOT / "docs", SRC)
    # MathJax 2.7 from PyPI (jupyter-server-mathjax, in the docs extra), so that the notebooks' maths is typeset offline
    import jupyter_server_mathjax
    shutil.copytree(Path(jupyter_server_mathjax.__file__).parent / "static", SRC / "assets" / "mathjax")
    (SRC / "assets" / "mathjax" / "config" / "local").mkdir(parents=True, exist_ok=True)
    (SRC / "assets" / "mathjax" / "config" / "local" / "cfx.js").write_text(MATHJAX_LOCAL, encoding="utf-8")
    lib, exp = notebooks()
    nav_nbs = build_notebooks(lib, tst_flags, args.no_exec)
    nav_api, nav_rep = build_api(lib), build_reports(exp)
    _notebook_map(nav_nbs, nav_api, nav_rep)
    import yaml
    conf = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    conf["hooks"] = [str(ROOT / h) for h in conf.get("hooks", [])]
    for plug in conf.get("plugins", []):  # mkdocs-jupyter caches its HTML; keep that under _build/, not ./.cache
        if isinstance(plug, dict) and "mkdocs-jupyter" in plug: plug["mkdocs-jupyter"]["cache_dir"] = str(BUILD / "mkdocs-jupyter")
    conf.update(docs_dir=str(SRC), site_dir=str(SITE),
                nav=[{"Home": "index.md"}, {"Library notebooks": nav_nbs}, {"API reference": nav_api},
                     {"Experiment reports": nav_rep}, {"About these docs": "about.md"}])
    (BUILD / "mkdocs.yml").write_text(yaml.safe_dump(conf, sort_keys=False, allow_unicode=True), encoding="utf-8")
    log("mkdocs build --strict")
    # NO_MKDOCS_2_WARNING: silences mkdocs-material's end-of-life banner (support ends May 2027), not a build warning
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(BUILD / "mkdocs.yml")], check=True, cwd=ROOT,
                   env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    n_int, n_ext, broken = check_links(SITE)
    if broken:
        log(f"{len(broken)} broken links:\n  " + "\n  ".join(broken[:50])); return 1
    log(f"site/ built in {time.time() - t0:.0f} s: {len(list(SITE.rglob('*.html')))} pages, "
        f"{n_int} internal links all resolve ({n_ext} external links, not checked offline)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
