"""Quality against size across runs (the guide's quality-size analysis, measured instead of predicted).

Each evaluated run is a point: compression = teacher parameters / student parameters, and a quality
ratio = student quality / teacher quality, named by what it measures and the same for all runs: the
mean task retention (`kdistill eval --tasks`: student / teacher task score over the tasks where the
teacher beats the baseline) when every run has it, otherwise the perplexity ratio = teacher perplexity
/ student perplexity on held-out text (1.0 means the student predicts the data as well as the teacher).
A run is Pareto-optimal when no other run is both at least as small and at least as good, and strictly
better in one. The recommendation is the smallest student (highest compression) whose ratio is at least
`min_retention`.
"""
from __future__ import annotations

SOURCES = {
    "benchmarks": "mean task retention (student / teacher task score, tasks where the teacher beats the baseline)",
    "perplexity": "perplexity ratio (teacher perplexity / student perplexity on held-out text)",
}
NAMES = {"benchmarks": "task retention", "perplexity": "perplexity ratio"}


def task_retention(result: dict) -> float | None:
    """Mean task retention (`retention` in eval.json files written before it had that name)."""
    return result.get("task_retention", result.get("retention"))


def perplexity_ratio(result: dict) -> float | None:
    held = result.get("heldout") or {}
    return held["ppl_teacher"] / held["ppl_student"] if held.get("ppl_student") and held.get("ppl_teacher") else None


def pick_source(evals: list[dict]) -> str:
    evals = [e for e in evals if e]
    if evals and all(task_retention(e) is not None for e in evals):
        return "benchmarks"
    return "perplexity"


def retention_of(result: dict, source: str) -> float | None:
    if source == "benchmarks":
        return task_retention(result)
    return perplexity_ratio(result)


def points(runs: list[dict]) -> tuple[list[dict], str]:
    """One point per evaluated run: name, compression, retention, student parameters; and the source."""
    source = pick_source([r["eval"] for r in runs])
    out = []
    for r in runs:
        e = r["eval"]
        if not e or e.get("compression") is None:
            continue
        ret = retention_of(e, source)
        if ret is not None:
            out.append({"name": r["name"], "compression": e["compression"], "retention": ret,
                        "parameters": (e.get("student") or {}).get("parameters")})
    return out, source


def pareto(pts: list[dict]) -> list[str]:
    """Names of the points no other point dominates (>= compression and >= retention, one strictly)."""
    front = []
    for p in pts:
        dominated = any(q is not p and q["compression"] >= p["compression"] and q["retention"] >= p["retention"]
                        and (q["compression"] > p["compression"] or q["retention"] > p["retention"]) for q in pts)
        if not dominated:
            front.append(p["name"])
    return front


def recommend(pts: list[dict], min_retention: float, source: str = "perplexity") -> dict:
    """{"pick": the smallest point with retention >= min_retention or None, "text": a sentence saying so,
    naming the ratio (task retention or perplexity ratio)}."""
    name = NAMES[source]
    if not pts:
        return {"pick": None, "text": "No run has an eval.json yet, so there is nothing to recommend; "
                                      "run `kdistill eval --run RUN_DIR` on finished runs."}
    ok = [p for p in pts if p["retention"] >= min_retention]
    if ok:
        pick = max(ok, key=lambda p: (p["compression"], p["retention"]))
        return {"pick": pick, "text": (
            f"Recommended: {pick['name']}, the smallest student with a {name} of at least {min_retention:.0%}: "
            f"{pick['compression']:.2f}x fewer parameters, {name} {pick['retention']:.1%}"
            f" ({len(ok)} of {len(pts)} runs meet the bar).")}
    best = max(pts, key=lambda p: p["retention"])
    return {"pick": None, "text": (
        f"No run reaches a {name} of {min_retention:.0%}; the best is {best['name']} with "
        f"{best['retention']:.1%} at {best['compression']:.2f}x. Train longer, or try a larger student.")}
