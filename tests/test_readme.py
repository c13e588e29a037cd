"""The README and the guides in docs/ stay true: every Python snippet runs
as pasted, the set-up commands are CI's, the generated tables are current,
and the extras install one TensorFlow wheel.

Each ```python block (README.md, docs/*.md) runs in a fresh interpreter in
an empty directory, as a user pasting it would. Tiny settings: the only
change is that `keras_kd.data.load_arrays` returns a small class-balanced
share of what it loads, so every snippet trains on a few hundred images. A
block that cannot run here must say why in a comment right before it:
`<!-- not-run: the reason -->`; the test lists those.
"""

import ast
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
SETUP = ROOT / "setup.py"

BLOCK = re.compile(
    r"(?:<!--\s*not-run:\s*(?P<reason>.*?)\s*-->[ \t]*\n)?"
    r"^```python[ \t]*\n(?P<code>.*?)^```",
    re.S | re.M,
)

TINY = """
import keras_kd.data

_load_arrays = keras_kd.data.load_arrays


def _tiny_load_arrays(*args, **kwargs):  # test_readme: tiny settings
    arrays = dict(_load_arrays(*args, **kwargs))
    for split, share in (("train", 0.05), ("test", 0.1)):
        arrays["x_" + split], arrays["y_" + split] = (
            keras_kd.data.balanced_subset(
                arrays["x_" + split], arrays["y_" + split], share))
    return arrays


keras_kd.data.load_arrays = _tiny_load_arrays
"""

# Extra checks run after a section's block, in the same interpreter, by
# "file: section" ("top" before a file's first "## " title).
CHECKS = {
    "README.md: Quickstart": """
assert student is distiller.student
assert isinstance(student, keras.Model)
assert isinstance(student.layers[1], keras.layers.Normalization)
# The plain student holds no teacher or connector weights.
assert student.count_params() < teacher.count_params() / 10
history = distiller.history.history
for key in ("activation_boundary_loss", "boundary_agreement",
            "neuron_selectivity_loss", "logits_distillation_loss",
            "student_loss", "val_loss"):
    assert key in history, key
""",
    "docs/export.md: top": """
import os
assert os.path.isfile("student.tflite")
assert result.format == "tflite_int8"
""",
}


def _section_titles(text):
    return [
        (m.start(), m.group(1)) for m in re.finditer(r"^## (.+)$", text, re.M)
    ]


def readme_blocks():
    """`(id, "file: section", not_run_reason or None, code)` of every
    ```python block of the README and docs/."""
    blocks = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(ROOT).as_posix()
        titles = _section_titles(text)
        counts = {}
        for match in BLOCK.finditer(text):
            section = next(
                (t for start, t in reversed(titles) if start < match.start()),
                "top",
            )
            key = f"{name}: {section}"
            counts[key] = counts.get(key, 0) + 1
            blocks.append(
                (
                    f"{key} #{counts[key]}",
                    key,
                    match.group("reason"),
                    match.group("code"),
                )
            )
    return blocks


def test_readme_has_the_snippets_this_file_runs():
    sections = [section for _, section, _, _ in readme_blocks()]
    for section in (
        "README.md: Quickstart",
        "docs/scale_out.md: top",
        "docs/backends.md: top",
        "docs/export.md: top",
    ):
        assert section in sections, f"no ```python block in {section}"
    # Every ```python fence is found (none hides in another fence style).
    fences = sum(p.read_text(encoding="utf-8").count("```python") for p in DOCS)
    assert fences == len(sections)


def test_readme_is_short_and_starts_with_what_it_is():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    titles = [title for _, title in _section_titles(text)]
    assert titles[:3] == ["Install", "The main job", "Quickstart"], titles


def test_links_point_at_files_of_the_repository():
    for path in DOCS + [ROOT / "examples" / "README.md"]:
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # a web address
            assert (path.parent / target).exists(), (
                f"{path.relative_to(ROOT)}: {target}"
            )


def test_generated_tables_are_current():
    """The README's tables and printout, and benchmarks/README.md's panel
    tables, are what benchmarks/readme_tables.py writes from the results
    files."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import readme_tables
    finally:
        sys.path.pop(0)
    assert len(readme_tables.FILES) == 2
    for path, blocks in readme_tables.FILES.items():
        name = os.path.relpath(path, ROOT)
        text = pathlib.Path(path).read_text(encoding="utf-8")
        assert readme_tables.render(text, blocks, name) == text, (
            f"{name}'s generated tables are stale: run "
            "python benchmarks/readme_tables.py"
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, section, reason, code",
    readme_blocks(),
    ids=[block[0] for block in readme_blocks()],
)
def test_readme_snippet_runs_as_pasted(tmp_path, name, section, reason, code):
    if reason is not None:
        pytest.skip(f"README marks it not-run: {reason}")
    # A snippet that picks its backend (`os.environ["KERAS_BACKEND"] = ...`
    # before importing keras) runs under it; the tiny-data prelude imports
    # keras first, so the same backend goes into the environment.
    chosen = re.search(
        r"""^os\.environ\[["']KERAS_BACKEND["']\]\s*=\s*["'](\w+)["']""",
        code,
        re.M,
    )
    backend = chosen.group(1) if chosen else "tensorflow"
    if backend != "tensorflow":
        pytest.importorskip(backend)
    script = (
        TINY + "\n# --- README: " + name + "\n" + code + CHECKS.get(section, "")
    )
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        KERAS_BACKEND=backend,
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, (
        f"README snippet {name} failed:\n{result.stdout[-2000:]}\n"
        f"{result.stderr[-4000:]}"
    )


def _section(title):
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


TEST_COMMAND = (
    "python -m pytest -n 2 --dist loadgroup --doctest-modules tests keras_kd -q"
)


@pytest.mark.xdist_group("loadgroup_check")
def test_test_command_keeps_xdist_groups_together(request):
    """Under the README's test command (`-n 2 --dist loadgroup`) the tests
    of one `xdist_group` run in one worker, which builds their shared
    fixtures once. pytest-xdist marks such a test by its group (`...@NAME`);
    under pytest 9.2 it cannot, and tests/conftest.py does it instead."""
    if not (
        hasattr(request.config, "workerinput")
        and request.config.getvalue("loadgroup")
    ):
        pytest.skip("not run with pytest -n N --dist loadgroup")
    assert request.node.nodeid.endswith("@loadgroup_check"), (
        f"pytest-xdist did not apply --dist loadgroup under pytest "
        f"{pytest.__version__} (this test's id: {request.node.nodeid}): "
        "see _keep_xdist_groups in tests/conftest.py"
    )


def test_setup_commands_match_ci():
    commands = re.findall(r"^pip install .*$", _section("Install"), re.M)
    assert commands == [
        'pip install -e ".[cpu]" && keras-kd',
        "pip install torch==2.13.0 && pip install -e "
        '".[cpu,jax,torch,test,examples]" && ' + TEST_COMMAND,
        'pip install -e ".[cpu,jax,test]" && '
        "python -m pytest -m quick tests -q",
    ]
    ci = (README.parent / ".ci" / "run").read_text()
    # The README's installs (CI adds pip's --no-compile).
    assert re.search(r'pip install (--no-compile )?"torch==2\.13\.0"', ci)
    assert re.search(
        r'pip install (--no-compile )?-e "\.\[cpu,jax,torch,test,examples\]"',
        ci,
    )
    assert TEST_COMMAND in ci
    # The lint commands the README's "Contributing" paragraph names.
    text = README.read_text()
    for command in (
        "ruff check keras_kd tests benchmarks examples",
        "ruff format --check keras_kd tests benchmarks examples",
    ):
        assert f"`{command}`" in text
        assert f"\n{command}\n" in ci


# --- one TensorFlow wheel ----------------------------------------------------

# Packages that require the full `tensorflow` wheel by name, so that next to
# tensorflow-cpu they install a second TensorFlow (and its CUDA start-up
# errors on CPU machines).
NEEDS_FULL_TENSORFLOW = {
    "tensorflow",
    "tensorflow-text",
    "keras-hub",
    "keras-nlp",
    "tf-keras",
}


def _extras():
    tree = ast.parse(SETUP.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "extras_require":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no extras_require")


def _names(requirements):
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    return [canonicalize_name(Requirement(r).name) for r in requirements]


def _installed_closure(requirements):
    """Names reachable from `requirements` through installed distributions."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen, todo = set(), list(requirements)
    while todo:
        requirement = Requirement(todo.pop())
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        if requirement.marker and not requirement.marker.evaluate(
            {"extra": ""}
        ):
            continue
        seen.add(name)
        try:
            todo.extend(metadata.distribution(name).requires or [])
        except metadata.PackageNotFoundError:
            pass
    return seen


@pytest.mark.parametrize(
    "combination",
    ["cpu", "cpu,data", "cpu,test,examples", "cpu,litert", "cpu,bench"],
)
def test_cpu_installs_pull_in_no_second_tensorflow_wheel(combination):
    pytest.importorskip("packaging")
    extras = _extras()
    requirements = [
        r for extra in combination.split(",") for r in extras[extra]
    ]
    direct = set(_names(requirements)) & NEEDS_FULL_TENSORFLOW
    assert not direct, (
        f'pip install "keras-kd[{combination}]" asks for {sorted(direct)}, '
        "which install the full tensorflow wheel next to tensorflow-cpu"
    )
    # And through what is installed here (keras-cv, tensorflow-datasets, ...).
    reachable = _installed_closure(requirements)
    assert "tensorflow" not in reachable, (
        f'"keras-kd[{combination}]" reaches the full tensorflow wheel through '
        f"{sorted(reachable & NEEDS_FULL_TENSORFLOW)}"
    )
