"""llm360: pretrain language models in the open, the LLM360 way.

A run produces a release in which every artifact can be inspected, reproduced and verified:
the exact data and its order, the config, every checkpoint, the logs, the evaluations and the
analyses. The layout of that release is fixed by docs/run-directory.md (the run directory contract).
"""

__version__ = "0.1.0"
