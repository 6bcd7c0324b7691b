"""`kdistill report RUN_DIR [RUN_DIR ...]`: one self-contained HTML page (and Markdown beside it).

    kdistill report runs/demo                       # -> runs/demo/report/report.html, report.md, *.png
    kdistill report runs/a runs/b runs/c --min-retention 0.9

The page shows the loss and KL curves with the held-out points, agreement and perplexity over training,
the teacher-vs-student table (held-out agreement, benchmarks, measured size/speed/memory), the KL by
position, the seed prompts' completions side by side and, across runs, the quality-vs-size trade-off
with a recommendation of the smallest student that keeps a stated retention. Plots are matplotlib PNGs,
embedded as base64 in the HTML and written as files for the Markdown.

`runs.py` reads run folders, `tradeoff.py` is the quality-size analysis, `plots.py` draws,
`sections.py` assembles the content, `page.py` writes it as HTML and Markdown, `command.py` ties it up.
"""
