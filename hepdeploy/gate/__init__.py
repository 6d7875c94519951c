"""hepdeploy.gate: may version N+1 of a model replace version N, the one published and serving?

Above the stages (it reads a repository through the triton stage's manifests, runs both versions
through the backend, judges with the validate stage's paired bootstrap). One module per check:
``integrity.py``, ``interface.py``, ``variants.py``, ``non_inferiority.py``, ``change_map.py``,
``performance.py``; what every check returns and the exit codes: ``outcome.py``; the report files
(gate.json, JUnit, Markdown, OpenMetrics, Code Quality, annotations, HTML): ``reports.py``;
which models a git change touched: ``changed.py``; the whole gate: ``run.py``.
"""
