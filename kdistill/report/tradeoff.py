"""Quality against size across runs (the guide's quality-size analysis, measured instead of predicted).

Each evaluated run is a point: compression = teacher parameters / student parameters, and retention =
student quality / teacher quality. Retention comes from one source for all runs, stated on the page:
the mean benchmark retention (`kdistill eval --tasks`) when every run has it, otherwise held-out
perplexity retention = teacher perplexity / student perplexity (1.0 means the student predicts the
data as well as the teacher). A run is Pareto-optimal when no other run is both at least as small and
at least as good, and strictly better in one. The recommendation is the smallest student (highest
compression) whose retention is at least `min_retention`.
"""
from __future__ import annotations

SOURCES = {
    "benchmarks": "mean benchmark retention (student score / teacher score)",
    "perplexity": "held-out perplexity retention (teacher perplexity / student perplexity)",
}


def pick_source(evals: list[dict]) -> str:
    evals = [e for e in evals if e]
    if evals and all(e.get("retention") is not None for e in evals):
        return "benchmarks"
    return "perplexity"


def retention_of(result: dict, source: str) -> float | None:
    if source == "benchmarks":
        return result.get("retention")
    held = result.get("heldout") or {}
    if not held.get("ppl_student"):
        return None
    return held["ppl_teacher"] / held["ppl_student"]


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


def recommend(pts: list[dict], min_retention: float) -> dict:
    """{"pick": the smallest point with retention >= min_retention or None, "text": a sentence saying so}."""
    if not pts:
        return {"pick": None, "text": "No run has an eval.json yet, so there is nothing to recommend; "
                                      "run `kdistill eval --run RUN_DIR` on finished runs."}
    ok = [p for p in pts if p["retention"] >= min_retention]
    if ok:
        pick = max(ok, key=lambda p: (p["compression"], p["retention"]))
        return {"pick": pick, "text": (
            f"Recommended: {pick['name']}, the smallest student that keeps at least {min_retention:.0%} of the "
            f"teacher's quality: {pick['compression']:.2f}x fewer parameters, retention {pick['retention']:.1%}"
            f" ({len(ok)} of {len(pts)} runs meet the bar).")}
    best = max(pts, key=lambda p: p["retention"])
    return {"pick": None, "text": (
        f"No run keeps {min_retention:.0%} of the teacher's quality; the best is {best['name']} with "
        f"{best['retention']:.1%} at {best['compression']:.2f}x. Train longer, or try a larger student.")}
