#!/usr/bin/env python3
"""Checks of the documentation, for scripts/check-docs.sh and scripts/check-walkthrough.sh.

  docs_checks.py links                  every relative link of README.md and of the book
                                        (docs/src, and the files it includes from docs/)
                                        names a file that exists, and every #anchor a heading
                                        of its target; then the same on the built book
                                        (docs/book), as a reader clicks them
  docs_checks.py admin-password         the password of the README's `make run` line
  docs_checks.py walkthrough DIR PROXY OPS
                                        runs the README's walk-through (the book includes it)
                                        in DIR against a keyward on PROXY and OPS, checking
                                        each answer against the `# ` lines under its command

Run from the repository's root.
"""
import html
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

ROOT = Path.cwd()
SRC = ROOT / "docs" / "src"
BOOK = ROOT / "docs" / "book"

LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INCLUDE = re.compile(r"\{\{#include\s+([^}:\s]+)(?::[^}]*)?\}\}")


def problem(problems, where, message):
    problems.append(f"{where}: {message}")


def prose_lines(text):
    """The lines of a Markdown text outside fenced code blocks, inline code removed."""
    fence = None
    for number, line in enumerate(text.split("\n"), 1):
        stripped = line.lstrip()
        marker = re.match(r"(```+|~~~+)", stripped)
        if marker:
            if fence is None:
                fence = marker.group(1)
            elif stripped.startswith(fence):
                fence = None
            continue
        if fence is None:
            yield number, re.sub(r"(`+)(?:(?!\1).)+\1", "", line)


def github_slugs(text):
    """The anchors GitHub gives a Markdown file's headings."""
    slugs, seen = set(), {}
    for title in heading_texts_with_code(text):
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)
        title = re.sub(r"<[^>]+>", "", title)
        slug = "".join(
            c for c in title.lower()
            if c in " -_" or unicodedata.category(c)[0] in "LN"
        ).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        slugs.add(slug if n == 0 else f"{slug}-{n}")
    return slugs


def heading_texts_with_code(text):
    """Heading texts outside code blocks, with inline code kept as its text."""
    fence = None
    for line in text.split("\n"):
        stripped = line.lstrip()
        marker = re.match(r"(```+|~~~+)", stripped)
        if marker:
            if fence is None:
                fence = marker.group(1)
            elif stripped.startswith(fence):
                fence = None
            continue
        if fence is None:
            m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
            if m:
                yield m.group(1)


def html_ids(path):
    return set(html.unescape(i) for i in re.findall(r'\bid="([^"]+)"', path.read_text()))


def chapter_html(md_path):
    """The page the book builds from a chapter of docs/src."""
    rel = md_path.relative_to(SRC)
    if rel.name == "README.md":
        rel = rel.with_name("index.md")
    return BOOK / rel.with_suffix(".html")


def anchors_of(target):
    """The anchors a reader of `target` can jump to, or None when unknown."""
    if target.suffix == ".md":
        if SRC in target.parents and target.exists():
            page = chapter_html(target)
            return html_ids(page) if page.exists() else set()
        return github_slugs(target.read_text())
    if target.suffix == ".html" and target.exists():
        return html_ids(target)
    return None


def markdown_files():
    """README.md, the book's chapters, and the files they include from docs/."""
    files = [ROOT / "README.md"] + sorted(SRC.rglob("*.md"))
    included = []
    for f in files[1:]:
        for m in INCLUDE.finditer(f.read_text()):
            target = (f.parent / m.group(1)).resolve()
            if target.suffix == ".md" and target not in files + included and target.exists():
                included.append(target)
    return files + included


def check_markdown_links(problems):
    files = markdown_files()
    for f in files:
        text = f.read_text()
        where_file = f.relative_to(ROOT)
        for m in INCLUDE.finditer(text):
            target = (f.parent / m.group(1)).resolve()
            if not target.exists():
                problem(problems, where_file, f"{{{{#include {m.group(1)}}}}}: no such file")
        for number, line in prose_lines(text):
            for m in LINK.finditer(line):
                link = m.group(1)
                where = f"{where_file}:{number}"
                if re.match(r"[a-z][a-z0-9+.-]*:", link, re.I) or link.startswith("//"):
                    continue  # http(s), mailto: not checked here
                path, _, anchor = link.partition("#")
                target = (f.parent / path).resolve() if path else f
                if not target.exists():
                    problem(problems, where, f"{link}: no such file ({target.relative_to(ROOT) if ROOT in target.parents else target})")
                    continue
                if ROOT not in target.parents and target != ROOT:
                    problem(problems, where, f"{link}: outside the repository")
                    continue
                if anchor:
                    ids = anchors_of(target)
                    if ids is not None and anchor not in ids:
                        problem(problems, where, f"{link}: no heading #{anchor} in {target.relative_to(ROOT)}")


def check_summary(problems):
    summary = (SRC / "SUMMARY.md").read_text()
    listed = set()
    for m in LINK.finditer(summary):
        listed.add((SRC / m.group(1)).resolve())
    for f in sorted(SRC.rglob("*.md")):
        if f.name != "SUMMARY.md" and f.resolve() not in listed:
            problem(problems, f.relative_to(ROOT), "not in docs/src/SUMMARY.md (mdBook would leave it out)")


def check_book(problems):
    """The built book as a reader clicks it: every relative href of every chapter page."""
    pages = sorted(p for p in BOOK.rglob("*.html") if p.name not in ("print.html", "404.html", "toc.html"))
    if not pages:
        problem(problems, "docs/book", "no pages: was the book built?")
    ids_cache = {}
    for page in pages:
        text = page.read_text()
        main = re.search(r"<main>(.*)</main>", text, re.S)
        body = main.group(1) if main else text
        for link in re.findall(r'\bhref="([^"]*)"', body):
            link = html.unescape(link)
            if re.match(r"[a-z][a-z0-9+.-]*:", link, re.I) or link.startswith("//"):
                continue
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT)}"
            if not target.exists():
                problem(problems, where, f"href {link}: no such file ({os.path.relpath(target, ROOT)})")
                continue
            if anchor and target.suffix == ".html":
                if target not in ids_cache:
                    ids_cache[target] = html_ids(target)
                if anchor not in ids_cache[target]:
                    problem(problems, where, f"href {link}: no id {anchor!r} in {target.relative_to(ROOT)}")


def links():
    problems = []
    check_summary(problems)
    check_markdown_links(problems)
    check_book(problems)
    # One broken Markdown link shows once per view; report each message once.
    problems = list(dict.fromkeys(problems))
    for p in problems:
        print(f"broken link: {p}", file=sys.stderr)
    checked = len(markdown_files())
    if problems:
        print(f"docs: {len(problems)} broken link(s) in {checked} Markdown files and the built book", file=sys.stderr)
        return 1
    print(f"docs: the links of {checked} Markdown files and of the built book resolve")
    return 0


# The walk-through ---------------------------------------------------------------------------

def walkthrough_block(readme):
    text = readme.read_text()
    m = re.search(r"ANCHOR: walk-through\b.*?\n(.*?)\n[^\n]*ANCHOR_END: walk-through", text, re.S)
    if not m:
        sys.exit(f"{readme}: no ANCHOR: walk-through … ANCHOR_END: walk-through")
    block = re.search(r"```sh\n(.*?)\n```", m.group(1), re.S)
    if not block:
        sys.exit(f"{readme}: the walk-through has no ```sh block")
    return block.group(1)


def walkthrough_steps(block):
    """[(command, [expected lines])]: a command's expected lines are the `# ` lines right
    under it; a comment after a blank line is prose."""
    steps, lines, i = [], block.split("\n"), 0
    expecting = False
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            expecting = False
        elif line.lstrip().startswith("#"):
            if expecting:
                steps[-1][1].append(line.lstrip()[1:].strip())
        else:
            command = line
            while command.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command.rstrip()[:-1] + " " + lines[i].strip()
            steps.append((command, []))
            expecting = True
        i += 1
    return steps


ID = re.compile(r"[0-9A-F]{16}")
PAIR = re.compile(r'"([^"]+)":(\[[^\]]*\]|"[^"]*"|-?\d+(?:\.\d+)?|true|false|null)')


def pattern(text, in_string=False):
    """A regular expression of an expected text: request ids and `...`/`…` stand for anything."""
    out, pos = [], 0
    for m in re.finditer(r"[0-9A-F]{16}|\.\.\.|…", text):
        out.append(re.escape(text[pos:m.start()]))
        if m.group(0) in ("...", "…"):
            out.append('[^"]*' if in_string else ".*")
        else:
            out.append("[0-9A-F]{16}")
        pos = m.end()
    out.append(re.escape(text[pos:]))
    return "".join(out)


def unmet(expected, output):
    """The parts of the expected lines the output lacks."""
    missing = []
    out_lines = [" ".join(l.split()) for l in output.split("\n")]
    for line in expected:
        pairs = PAIR.findall(line) if ('{' in line or line.startswith('"')) else []
        if pairs:
            for key, value in pairs:
                if not re.search(pattern(f'"{key}":{value}', in_string=True), output):
                    missing.append(f'"{key}":{value}')
        elif line not in ("...", "…"):
            p = re.compile(pattern(" ".join(line.split())), re.I)
            if not any(p.fullmatch(l) for l in out_lines):
                missing.append(line)
    return missing


def admin_password():
    m = re.search(r"KEYWARD_ADMIN_PASSWORD=(\S+) make run", (ROOT / "README.md").read_text())
    if not m:
        sys.exit("README.md: no `KEYWARD_ADMIN_PASSWORD=… make run` line")
    print(m.group(1))
    return 0


def walkthrough(workdir, proxy, ops):
    steps = walkthrough_steps(walkthrough_block(ROOT / "README.md"))
    if len(steps) < 5:
        sys.exit(f"README.md: the walk-through has {len(steps)} commands; expected a walk-through")
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "keyward_config")}
    failed, checked = 0, 0
    for command, expected in steps:
        run = command.replace("127.0.0.1:8080", proxy).replace("127.0.0.1:9090", ops)
        try:
            result = subprocess.run(["bash", "-c", run], cwd=workdir, env=env, text=True,
                                    capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
            output, status = result.stdout.replace("\r\n", "\n"), result.returncode
            stderr = result.stderr
        except subprocess.TimeoutExpired:
            output, status, stderr = "", "timeout", ""
        missing = unmet(expected, output) if status == 0 else []
        if expected:
            checked += 1
        if status != 0 or missing:
            failed += 1
            print(f"FAILED: {command}", file=sys.stderr)
            if status != 0:
                print(f"  exit status {status}", file=sys.stderr)
            for m in missing:
                print(f"  expected: {m}", file=sys.stderr)
            print("  output: " + output.strip().replace("\n", "\n          ")[:3000], file=sys.stderr)
            if stderr.strip():
                print("  stderr: " + stderr.strip().replace("\n", "\n          ")[:2000], file=sys.stderr)
        else:
            print(f"ok: {command}")
    print(f"walk-through: {len(steps) - failed} passed, {failed} failed")
    print(f"({len(steps)} commands of README.md's walk-through, {checked} answers checked against their `# ` lines)")
    return 1 if failed else 0


def main(argv):
    if argv[:1] == ["links"]:
        return links()
    if argv[:1] == ["admin-password"]:
        return admin_password()
    if argv[:1] == ["walkthrough"] and len(argv) == 4:
        return walkthrough(*argv[1:])
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
