"""Evaluation: metrics (``metrics``), scoring feature rows (``scoring``), the paper's tables
(``tables``), the Markdown report and its plots (``report``, ``plots``) and the rule that says a
new generator slipped (``slip``)."""
