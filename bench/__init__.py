"""`python -m bench`: Darkroom's benchmark suite (`make bench`).

Each figure is measured against a baseline taken in the same run on the same machine, and
written to a Markdown and a JSON report. Nothing here asserts a time: it reports.
"""
