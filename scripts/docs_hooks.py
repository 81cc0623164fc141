"""mkdocs hook (listed in mkdocs.yml) for the notebook pages that mkdocs-jupyter renders: point the table of
contents at the headings' real ids.

mkdocs-jupyter computes the TOC's anchors from a markdown conversion of the notebook, whose slugs drop code
spans and maths (## One entry point: `load_dataset` -> #one-entry-point), while the page's headings carry
nbconvert's ids (#one-entry-point-load_dataset): such TOC links lead nowhere. Each TOC entry whose anchor is
missing takes the id of the next heading of its level whose text contains the entry's title (its letters, in
order: the title lacks what the slug dropped).
"""
import html as _html
import re


def _loose(s: str) -> str: return re.sub(r"[^a-z0-9]", "", _html.unescape(re.sub(r"<[^>]+>", "", s)).lower())


def _within(key: str, text: str) -> bool:
    it = iter(text)
    return all(ch in it for ch in key)


def _flat(items):
    for t in items:
        yield t
        yield from _flat(t.children)


def on_page_content(html, page, config, files):
    if not page.file.src_path.endswith(".ipynb") or page.toc is None: return html
    heads = [(int(m.group(1)), m.group(2), _loose(m.group(3)))
             for m in re.finditer(r'<h([1-6])[^>]*\bid="([^"]*)"[^>]*>(.*?)</h\1>', html, re.S)]
    index = {hid: k for k, (_, hid, _) in enumerate(heads)}
    j = 0
    for t in _flat(page.toc.items):
        if t.id in index: j = index[t.id] + 1; continue
        key = _loose(t.title)
        for k in range(j, len(heads)):
            level, hid, text = heads[k]
            if level == t.level and key and _within(key, text):
                t.id, j = hid, k + 1
                break
    return html
