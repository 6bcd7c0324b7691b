"""`kdistill report` plots gradient flow by layer from the debugger's rows (train.debug_every)."""
import json
import math

from kdistill.report.build import build_report
from kdistill.report.gradient_flow import flow, gradient_flow_png

PNG = b"\x89PNG"


def _debug_rows(steps=(5, 10, 15)) -> list[dict]:
    rows = []
    for s in steps:
        row = {"step": s, "loss": 1.0}
        for i in range(11):  # layer_10 sorts after layer_9, "other" last
            row[f"grad_norm/layer_{i}"] = 10.0 ** (-i) * s
            row[f"update_ratio/layer_{i}"] = 1e-3
        row["grad_norm/other"], row["update_ratio/other"] = 0.0, 2e-3  # 0 has no log: NaN, not an error
        rows.append(row)
    return rows


def test_flow_reads_layers_in_order_as_log10():
    steps, groups, values = flow([{"step": 1, "loss": 2.0}, *_debug_rows()], "grad_norm/")
    assert steps == [5, 10, 15] and groups == [f"layer_{i}" for i in range(11)] + ["other"]
    assert values[3][1] == math.log10(1e-3 * 10) and math.isnan(values[-1][0])


def test_report_draws_gradient_flow_for_a_run_that_debugged(make_run, tmp_path):
    debugged, plain = make_run("debugged"), make_run("plain")
    with open(debugged / "metrics.jsonl", "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in _debug_rows())
    assert gradient_flow_png({"name": "plain", "metrics": []}) is None
    paths = build_report([debugged, plain], tmp_path / "out", min_retention=0.9)
    assert (tmp_path / "out" / "gradient_flow_debugged.png").read_bytes().startswith(PNG)
    assert not (tmp_path / "out" / "gradient_flow_plain.png").exists()
    assert "Gradient flow by layer" in open(paths["markdown"]).read()
