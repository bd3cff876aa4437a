"""The benches' own bookkeeping (bench/infra.py): which checkout is measured when, and how it is named."""

import subprocess

from bench import infra


def test_repeated_measurements_take_turns_so_a_drift_falls_on_every_checkout(tmp_path):
    baseline, measured = tmp_path / "old", tmp_path / "new"
    baseline.mkdir()
    measured.mkdir()
    order, combined = [], {}

    def measure(tree, name, workdir):
        order.append((tree.name, name))
        return name

    def combine(runs):
        combined[runs[0].rsplit("-", 1)[0]] = runs
        return f"median of {len(runs)}"

    results = infra.measure_checkouts(
        [("baseline", str(baseline)), ("none", None), ("measured", str(measured))],
        measure,
        "bench-test-",
        rounds=3,
        combine=combine,
    )
    assert order == [
        ("old", "baseline-1"),
        ("new", "measured-1"),
        ("old", "baseline-2"),
        ("new", "measured-2"),
        ("old", "baseline-3"),
        ("new", "measured-3"),
    ]
    assert combined == {
        "baseline": ["baseline-1", "baseline-2", "baseline-3"],
        "measured": ["measured-1", "measured-2", "measured-3"],
    }
    assert results == [("baseline", "median of 3"), ("measured", "median of 3")]
    # One round: each checkout once, by its plain label, nothing combined.
    order.clear()
    assert infra.measure_checkouts([("measured", str(measured))], measure, "bench-test-") == [("measured", "measured")]
    assert order == [("new", "measured")]


def test_the_commit_measured_is_marked_for_code_changes_not_for_the_reports_written(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "performance.md").write_text("old figures\n")
    (tmp_path / "app.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "one")
    clean = infra.code_commit(tmp_path)
    assert clean and "uncommitted" not in clean
    (tmp_path / "docs" / "performance.md").write_text("new figures\n")  # a bench wrote its section
    assert infra.code_commit(tmp_path) == clean
    (tmp_path / "app.py").write_text("x = 2\n")
    assert infra.code_commit(tmp_path) == f"{clean} (with uncommitted changes)"
    (tmp_path / "app.py").write_text("x = 1\n")
    (tmp_path / "new.py").write_text("")  # a new file is a change too
    assert infra.code_commit(tmp_path) == f"{clean} (with uncommitted changes)"
