"""A run's console shows kdistill's lines only: other libraries' warnings go to the run's log file."""
import warnings

from kdistill.base.console import run_log


def test_third_party_warnings_go_to_the_log_file_only(tmp_path, capsys):
    log = tmp_path / "kdistill.log"
    with run_log(log):
        warnings.warn("MatMul8bitLt: inputs will be cast from torch.float32 to float16", UserWarning)
        print("kdistill's own line")
    out = capsys.readouterr()
    assert "MatMul8bitLt" not in out.out + out.err and "kdistill's own line" in out.out
    text = log.read_text()
    assert "MatMul8bitLt" in text and "kdistill's own line" in text
    with warnings.catch_warnings(record=True) as seen:  # outside a run, warnings are Python's again
        warnings.simplefilter("always")
        warnings.warn("after the run", UserWarning)
    assert [str(w.message) for w in seen] == ["after the run"]
