"""The project's files speak to its users.

No references to numbered issues of the project's tracker, no talk of how
the work behind the code was organised, no paths of one particular machine
(absolute data or result paths, a `shared` folder beside the repository).
Scans the READMEs, docs, benchmarks (scripts, reports and records), tests,
the package, the tutorials and the notebooks; fails listing
`file:line: kind: match`.

The patterns below are written so that this file does not match them itself
(character classes split the words), and the self-checks build their jargon
lines by concatenation. References to other projects' trackers
(`owner/repo#123`), TensorFlow 1's `tf.compat.v1.Session` and assertions
that a string is absent (`assert "..." not in text`) are allowed.
"""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent

GLOBS = [
    "README.md",
    "docs/**/*.md",
    "examples/README.md",
    "benchmarks/**/*.py",
    "benchmarks/**/*.md",
    "benchmarks/**/*.json",
    "benchmarks/**/*.jsonl",
    "tests/**/*.py",
    "keras_kd/**/*.py",
    "examples/tutorials/*.py",
    "examples/*.ipynb",
]
# Not committed: the benchmarks' cached teachers and their metadata.
SKIP_PARTS = {"cache", "__pycache__"}

ISSUE = "issue number"
TRACKER = "tracker reference"
WORK = "how we work"
OUTSIDE = "path outside the repository"
MACHINE = "machine path"
JARGON = [
    # The word issue(s), then a number (after a hyphen or '#' too).
    (ISSUE, re.compile(r"(?<![\w/])[Ii]ssues?[ \t-]*(?:#[ \t]*)?\d+")),
    # A bare '#' and a number; another project's `owner/repo#N` is allowed.
    (TRACKER, re.compile(r"(?<![\w/.&-])#\d+\b(?![\w-])")),
    (WORK, re.compile(r"(?<![\w.])[Ss]ession(?:s|'s)?\b")),
    (WORK, re.compile(r"(?i)\bour[ \t]+CI[ \t]+machines?\b")),
    (WORK, re.compile(r"(?i)\bwe[ \t]+were[ \t]+told\b")),
    (OUTSIDE, re.compile(r"\.\./[s]hared\b")),
    (
        MACHINE,
        re.compile(
            r"(?<![\w.~-])/(?:[w]ork/|[t]mp/|[r]oot/|[h]ome/\w|Users/\w)"
        ),
    ),
]
ALLOWED = [
    # Another project's tracker (owner/repo, then '#' and a number).
    re.compile(r"[\w.-]+/[\w.-]+#\d+"),
    # TensorFlow 1's class, as tf.Session or tf.compat.v1.Session.
    re.compile(r"(?:\btf|\bv1|TensorFlow)[ .]?[S]ession\w*"),
    # A check that a string is absent.
    re.compile(r"""\bassert\s+(["'])[^"']*\1\s+not\s+in\b"""),
]


def jargon(text):
    """`(line number, kind, match)` for each piece of jargon in `text`."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for allowed in ALLOWED:
            line = allowed.sub(" ", line)
        for kind, pattern in JARGON:
            for match in pattern.finditer(line):
                found.append((number, kind, match.group(0)))
    return found


def scanned_files():
    files = set()
    for pattern in GLOBS:
        for path in ROOT.glob(pattern):
            relative = path.relative_to(ROOT)
            if path.is_file() and not SKIP_PARTS & set(relative.parts):
                files.add(path)
    return sorted(files)


def test_scanner_reports_jargon():
    lines = [
        "The panel (see " + "Iss" + "ue 9's notes) runs in parts.",
        "Checked where they are set (" + "iss" + "ue-11).",
        "python panel.py --data-dir .." + "/shared/data",
        "python accuracy.py /" + "work/shared/data/cifar10.npz",
        "Cached under /" + "tmp/run1/teacher.keras.",
        "Written to /" + "home/someone/results.",
        "No GPU was lent to this project's se" + "ssions.",
        "The torch wheel, as on o" + "ur CI machines.",
        "As w" + "e were told, the default is T = 1.",
        "Fixed in (" + "#" + "19).",
    ]
    found = jargon("\n".join(lines))
    assert sorted({number for number, _, _ in found}) == list(
        range(1, len(lines) + 1)
    ), found
    assert {kind for _, kind, _ in found} == {k for k, _ in JARGON}


def test_scanner_passes_clean_text():
    text = "\n".join(
        [
            "The panel of training regimes runs in parts of 45 minutes.",
            "python benchmarks/panel.py --data-dir path/to/data",
            "python benchmarks/accuracy.py $DATA/cifar10.npz",
            "A Keras fix (keras-team/keras#20585) makes this workaround moot.",
            "with tf.compat.v1.Session() as s: keras.backend.clear_session()",
            'assert "/' + 'work/shared" not in notebook_text',
            "CI runs on a 2-core CPU machine; tmp_path / 'backup' is local.",
            "KERAS_KD_DATA_DIR=~/tfds, an issue of data layout, #1f77b4 blue.",
            "Homework/ and shared/ folders, https://example.org/work/page.",
        ]
    )
    assert jargon(text) == []


def test_no_jargon_in_the_project_files():
    files = scanned_files()
    assert ROOT / "tests" / "test_wording.py" in files
    problems = [
        f"{path.relative_to(ROOT)}:{number}: {kind}: {match!r}"
        for path in files
        for number, kind, match in jargon(path.read_text(encoding="utf-8"))
    ]
    assert not problems, "internal jargon found:\n" + "\n".join(problems)
