"""Markdown docs: every relative link resolves and every cited results JSON is committed.

For each tracked `*.md` file (`git ls-files '*.md'`):

* every inline link or image `[text](target)` outside fenced code blocks whose target is not a
  URL (`http://`, `https://`, `mailto:`) or a pure `#anchor` must name an existing file or
  directory, relative to the markdown file (a `#fragment` is stripped);
* every path cited in an inline code span or a link that names a results JSON
  (`.../results/NAME.json`, `results.json`, `results_NAME.json`) must exist in the repository,
  relative to the markdown file or to the repository root. Globs (`*`) must match a file and
  `{a,b}` alternatives are expanded. Output locations that are not part of the repository are
  skipped: absolute paths, git-ignored paths (e.g. `runs/...`) and placeholders such as
  `OUT/...`.

`PENDING_RESULTS` lists experiment folders whose README gives the command that writes the results
JSON before any run has been committed (the README says there are no results yet); their
results-JSON citations are not checked. Relative links are checked everywhere.
"""

from __future__ import annotations

import glob
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PENDING_RESULTS: tuple[str, ...] = ("experiments/visual_proactivity",)

_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_CODE = re.compile(r"(`+)(.+?)\1")
_RESULTS_JSON = re.compile(r"(?:^|/)(?:results/[^/\s]+|results[\w.-]*)\.json$")
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]*(/|$)")
_STRIP = "\"'.,;:()[]<>"


def _prose_lines(text: str):
    """(line number, line) for lines outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def _is_external(target: str) -> bool:
    return target.startswith(("http://", "https://", "mailto:", "#"))


def links(text: str) -> list[tuple[int, str]]:
    """Relative link targets (fragment stripped) outside fenced code."""
    out = []
    for number, line in _prose_lines(text):
        for match in _LINK.finditer(_CODE.sub(lambda m: " " * len(m.group(0)), line)):
            target = match.group(1)
            if _is_external(target):
                continue
            target = target.split("#", 1)[0]
            if target:
                out.append((number, target))
    return out


def cited_results(text: str) -> list[tuple[int, str]]:
    """Results-JSON paths named in inline code spans or link targets outside fenced code."""
    out = []
    for number, line in _prose_lines(text):
        spans = [m.group(2) for m in _CODE.finditer(line)]
        spans += [m.group(1).split("#", 1)[0] for m in _LINK.finditer(line) if not _is_external(m.group(1))]
        for span in spans:
            for token in re.split(r"[\s=]+", span):
                token = token.strip(_STRIP)
                if _RESULTS_JSON.search(token):
                    out.append((number, token))
    return out


def _expand(path: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", path)
    if not match:
        return [path]
    return [p for alt in match.group(1).split(",")
            for p in _expand(path[:match.start()] + alt + path[match.end():])]


def _exists(path: str, base: Path, root: Path) -> bool:
    for directory in (base, root):
        candidate = str(directory / path)
        if any(ch in path for ch in "*?"):
            if glob.glob(candidate):
                return True
        elif Path(candidate).exists():
            return True
    return False


def _ignored(path: str, root: Path) -> bool:
    if path.startswith(("/", "~")) or _PLACEHOLDER.match(path):
        return True
    result = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=root, capture_output=True)
    return result.returncode == 0


def check_file(md: Path, root: Path, pending_folders: tuple[str, ...] = PENDING_RESULTS) -> list[str]:
    """Problems in one markdown file: broken relative links and missing cited results JSON."""
    text = md.read_text(encoding="utf-8")
    rel = md.relative_to(root).as_posix()
    base = md.parent
    problems = []
    for number, target in links(text):
        if not (base / target).exists():
            problems.append(f"{rel}:{number}: link target {target!r} does not exist")
    pending = any(rel.startswith(p) for p in pending_folders)
    for number, cited in cited_results(text):
        for path in _expand(cited):
            resolved = (base / path).resolve()
            in_pending = any(str(resolved).startswith(str(root / p)) for p in pending_folders)
            if pending or in_pending or _ignored(path, root):
                continue
            if not _exists(path, base, root):
                problems.append(f"{rel}:{number}: cited results file {path!r} is not in the repository")
    return problems


def tracked_markdown(root: Path) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "*.md"], cwd=root, capture_output=True, text=True, check=True)
    return [root / line for line in out.stdout.splitlines() if line and (root / line).exists()]


def test_repository_markdown_links_and_results_resolve():
    files = tracked_markdown(REPO)
    assert any(f.name == "README.md" for f in files)
    problems = [p for md in files for p in check_file(md, REPO)]
    assert not problems, "\n".join(problems)


@pytest.fixture
def fake_repo(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / ".gitignore").write_text("runs/\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "experiments" / "perf" / "results").mkdir(parents=True)
    (tmp_path / "experiments" / "perf" / "results" / "a.json").write_text("{}")
    (tmp_path / "experiments" / "perf" / "README.md").write_text("# perf\n")
    return tmp_path


def test_checker_accepts_good_links_and_citations(fake_repo):
    md = fake_repo / "docs" / "page.md"
    md.write_text(
        "See [perf](../experiments/perf/README.md#kernels), [dir](../experiments/), [top](#top),\n"
        "[web](https://example.org/x.md) and `experiments/perf/results/a.json`,\n"
        "`experiments/perf/results/*.json`, `experiments/perf/results/{a}.json`.\n"
        "Output goes to `runs/x/eval/results.json` or `OUT/results.json` or `/tmp/results.json`.\n"
        "```\n[not a link](missing.md) `experiments/perf/results/missing.json`\n```\n")
    assert check_file(md, fake_repo) == []


def test_checker_reports_broken_link_and_missing_results(fake_repo):
    md = fake_repo / "docs" / "page.md"
    md.write_text(
        "A [broken link](../experiments/perf/READ_ME.md) and an image ![x](figures/none.png);\n"
        "numbers from `experiments/perf/results/missing.json` and [results](results.json),\n"
        "and `experiments/perf/results/{a,b}.json`.\n")
    problems = check_file(md, fake_repo)
    assert len(problems) == 6, problems
    assert "READ_ME.md" in problems[0] and "figures/none.png" in problems[1]
    assert "results.json" in problems[2]  # a link to a missing file is a broken link ...
    assert any("missing.json" in p for p in problems)
    assert any("'results.json'" in p and "not in the repository" in p for p in problems)  # ... and a citation
    assert any("b.json" in p for p in problems) and not any("/a.json" in p for p in problems)


def test_pending_results_folder_skips_only_the_json_check(fake_repo):
    folder = fake_repo / "experiments" / "interaction_small"
    folder.mkdir()
    md = folder / "README.md"
    md.write_text("Numbers: `results.json`. Broken: [x](nothing.md).\n")
    problems = check_file(md, fake_repo, pending_folders=("experiments/interaction_small/",))
    assert len(problems) == 1 and "nothing.md" in problems[0]
