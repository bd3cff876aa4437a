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


def test_web_repeats_report_each_scenarios_median_run_with_every_runs_figure():
    from bench import web, web_report

    def run(storm_ms, fanout_p50, ratio):
        fanout = {"pages": 200, "project": {"p50": fanout_p50, "p99": 2 * fanout_p50}, "ratio": ratio}
        return {"configs": [{"server": "serve", "storms": [{"all_ms": storm_ms}], "fanouts": [fanout]}]}

    runs = [
        run(3000, 30, {"p50": 3.0, "p99": 1.4}),
        run(None, 20, {"p50": 2.0, "p99": 1.2}),  # a storm that did not complete ranks last
        run(2500, 40, {"p50": 4.0, "p99": 1.6}),
    ]
    combined = web.median_runs(runs)
    storm, fanout = combined["configs"][0]["storms"][0], combined["configs"][0]["fanouts"][0]
    assert storm["all_ms"] == 3000 and storm["runs"] == [3000, None, 2500]
    assert fanout["project"]["p50"] == 30 and [r["p50"] for r in fanout["runs"]] == [30, 20, 40]
    assert web_report.runs_of(fanout) == " (runs 3.00× / 1.40×, 2.00× / 1.20×, 4.00× / 1.60×)"
    assert runs[0]["configs"][0]["storms"][0].get("runs") is None  # the runs themselves are left as measured
    # A server whose runs differ in shape (one failed before its storms) is reported from its first run.
    failed = {"configs": [{"server": "serve", "storms": [], "fanouts": [], "error": "no port"}]}
    assert web.median_runs([runs[0], failed])["configs"][0]["storms"][0]["all_ms"] == 3000
    assert web_report.runs_of({"runs": [{"ratio": {"p50": 1.0, "p99": 1.0}}]}) == ""


def test_the_busy_report_names_its_web_process_and_folds_the_spied_profiles():
    from bench import report

    assert report.web_process({"plan": [["serve-1", ["busy"]]]}).startswith("one `manage.py serve`")
    assert report.web_process({"plan": [["core-1", ["busy"]]]}) == "one daphne"
    prof = {"samples": 10, "rate": 1000, "threads": [["thread (1): MainThread", 10]], "own": [], "inclusive": []}
    phase = {"spy": {"web process": prof, "worker": {"error": "py-spy could not attach"}}}
    lines = report.render_spies([("measured", {"machine": {"commit": "abc1234"}}, phase, {})])
    text = "\n".join(lines)
    assert "<details><summary>measured `abc1234`: the web process under py-spy" in text
    assert "10 samples at 1000 Hz" in text
    assert "No profile of measured `abc1234`: the worker under py-spy" in text and "could not attach" in text
    assert report.render_spies([("measured", {"machine": {"commit": "abc1234"}}, {}, {})]) == []


def test_capacity_repeats_report_the_median_run_by_peak_with_every_runs_verdict():
    from bench import report

    def run(peak, wait_at_200):
        steps = [
            {"rate": 200, "drained": True, "worker": {"handled_per_s": 200, "wait": {"p99": wait_at_200}}},
            {"rate": 800, "drained": True, "worker": {"handled_per_s": peak, "wait": {"p99": 400}}},
        ]
        return {"steps": steps, "machine": {"commit": "abc1234"}}

    runs = [run(900, 12), run(700, 30), run(1100, 9)]
    chosen = report.capacity_median_run(runs)
    assert report.capacity_verdict(chosen["steps"], 50)[1] == 900  # the median peak, not the best
    assert report.capacity_runs(chosen, 50, 1) == " (runs 900, 700, 1,100)"
    assert report.capacity_runs(chosen, 50, 2) == " (runs 12, 30, 9)"
    assert report.capacity_runs(chosen, 50, 0) == " (runs 200, 200, 200)"
    assert report.capacity_runs(runs[0], 50, 1) == ""  # one run: nothing beside it
    assert "runs" not in runs[0]
