"""The model: a plain-PyTorch LLaMA (llama.py), its Hugging Face folder format (hf.py), and
generation / log-likelihood scoring with it (generate.py)."""

from llm360.model.generate import generate, load_tokenizer, score_requests, score_tokens
from llm360.model.hf import load_args, load_hf, load_state_dict, save_hf
from llm360.model.llama import PRESETS, KVCache, Llama, ModelArgs, flops_per_token, model_args, num_params

__all__ = [
    "PRESETS", "KVCache", "Llama", "ModelArgs", "flops_per_token", "generate", "load_args", "load_hf",
    "load_state_dict", "load_tokenizer", "model_args", "num_params", "save_hf", "score_requests", "score_tokens",
]
