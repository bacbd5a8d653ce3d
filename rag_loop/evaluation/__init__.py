"""Evaluation: Ragas runs, IR metrics, drift, reports.

Ragas sends usage analytics to its makers unless told not to; this package tells it, before
any module here imports Ragas (an explicit RAGAS_DO_NOT_TRACK=false still wins).
"""

import os

os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
