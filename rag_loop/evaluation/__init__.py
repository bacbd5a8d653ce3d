"""Evaluation: Ragas runs, IR metrics, drift, reports.

Ragas sends usage analytics to its makers unless told not to; this package tells it (through
`settings.apply_environment`, the one place environment variables are set), before any
module here imports Ragas (an explicit RAGAS_DO_NOT_TRACK=false still wins).
"""

from rag_loop.settings import apply_environment

apply_environment()
