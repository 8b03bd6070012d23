"""The modeling code that ships inside an exported CrystalCoder folder (`llm360.model.hf` copies
these two files next to config.json), so that
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` loads it with nothing but
transformers. They import nothing from llm360; importing this package imports nothing at all.
"""

from pathlib import Path

FILES = ("configuration_crystalcoder.py", "modeling_crystalcoder.py")
HERE = Path(__file__).parent
