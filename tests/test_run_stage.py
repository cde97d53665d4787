import nbformat
import pytest

from pipeline import run_stage


def executed_like_papermill() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={
        "papermill": {"start_time": "2026-01-01T00:00:00", "end_time": "2026-01-01T00:00:01",
                      "duration": 1.0, "status": "completed", "exception": False},
        "execution": {"iopub.status.busy": "2026-01-01T00:00:00"}, "tags": ["parameters"]})]
    nb.metadata["papermill"] = {"start_time": "t0", "end_time": "t1", "duration": 2.0, "input_path": "/a",
                                "output_path": "/b", "environment_variables": {}, "parameters": {"study": "s"},
                                "version": "2.7.0"}
    return nb


def test_scrub_removes_run_dependent_metadata_and_keeps_parameters():
    nb = run_stage.scrub_notebook(executed_like_papermill())
    assert nb.metadata["papermill"] == {"parameters": {"study": "s"}, "version": "2.7.0"}
    cell = nb.cells[0].metadata
    assert "execution" not in cell
    assert cell["papermill"] == {"status": "completed", "exception": False}
    assert cell["tags"] == ["parameters"]


def test_html_is_offline_and_hides_code_for_reviewers():
    nb = run_stage.scrub_notebook(executed_like_papermill())
    nb.cells.append(nbformat.v4.new_markdown_cell("# A heading"))
    reviewer = run_stage.export_html(nb, hide_code=True)
    analyst = run_stage.export_html(nb, hide_code=False)
    for html in (reviewer, analyst):
        assert "<script src" not in html and "cdnjs" not in html and "mathjax" not in html.lower()
    assert "x = 1" not in reviewer.replace("&#34;", '"')
    assert "x</span> <span" in analyst or "x = 1" in analyst
    assert run_stage.export_html(nb, hide_code=True) == reviewer  # deterministic


def test_stage_outs_fill_in_the_study():
    outs = run_stage.stage_outs("clean", "acme")
    names = {p.relative_to(run_stage.REPO_ROOT).as_posix() for p in outs}
    assert "data/interim/acme/clean.parquet" in names
    assert "reports/notebooks/acme/02_clean.html" in names
    assert all("${" not in n for n in names)


def test_params_are_checked_once_before_a_stage_runs(tmp_path):
    import yaml
    from pipeline.io import load_params, read_yaml
    from pipeline.params import ParamsError

    assert load_params() == read_yaml(run_stage.REPO_ROOT / "params.yaml")   # checked, not changed
    broken = load_params()
    broken["clean"]["winsor_uper_pct"] = 95
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(broken))
    with pytest.raises(ParamsError, match=r"params.yaml: clean: unknown key 'winsor_uper_pct'.*did you mean 'winsor_upper_pct'"):
        run_stage.run("clean", "synthetic", params_path=tmp_path / "params.yaml")   # before papermill starts
