from pipeline import report_provenance


def test_metric_changes_against_previous_version():
    current = {"primary_outcome": "p", "s": {"capital_women": {"estimate": 12.0, "se": 1.0}}}
    previous = {"primary_outcome": "p", "s": {"capital_women": {"estimate": 10.0, "se": 1.0}, "gone": {"estimate": 1}}}
    assert report_provenance.metric_changes(current, previous) == [
        {"study": "s", "effect": "capital_women", "previous": 10.0, "current": 12.0, "change": 2.0}]
    assert report_provenance.metric_changes(current, None) == []


def test_input_hashes_read_dvc_lock(tmp_path):
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  a:\n    cmd: x\n    deps:\n    - path: data/raw\n      md5: abc.dir\n"
        "  b:\n    cmd: y\n    deps:\n    - path: data/raw\n      md5: abc.dir\n    - path: code.py\n      md5: def\n"
        "  report:\n    cmd: z\n    deps:\n    - path: pipeline/report_provenance.py\n      md5: fed\n")
    assert report_provenance.input_hashes(tmp_path / "dvc.lock") == [
        {"path": "code.py", "md5": "def", "stages": "b"}, {"path": "data/raw", "md5": "abc.dir", "stages": "a, b"}]
