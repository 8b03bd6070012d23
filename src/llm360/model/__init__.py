"""The model: its architecture as numbers (args.py, no torch), a plain-PyTorch LLaMA (llama.py),
its Hugging Face folder format (hf.py), and generation / log-likelihood scoring with it
(generate.py).

Importing this package imports no torch (the config checks a model's arguments when it loads,
and `llm360 --help` stays instant), so it re-exports only the names of args.py; import the torch
ones from their modules: `from llm360.model.llama import Llama`.
"""

from llm360.model.args import PRESETS, ModelArgs, flops_per_token, model_args, num_params

__all__ = ["PRESETS", "ModelArgs", "flops_per_token", "model_args", "num_params"]
