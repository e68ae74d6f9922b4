"""``python -m grlhf.eval {judge,pointwise,policy}``: the paper's evaluations as commands.

``judge``: pairwise accuracy of judges on preference sets (Figure 5). ``pointwise``: correlation with
human scores, with and without grouped comparison (Table 1). ``policy``: policies' answers judged against
a reference or a baseline, or with a rubric (Table 2), with the reward-hacking monitors. Each writes
``<out>/results.json`` (strict JSON), ``<out>/table.md`` and plots.
"""
