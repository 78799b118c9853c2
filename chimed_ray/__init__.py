"""chimed-ray: train and serve a Chinese medical LLM the ChiMed-GPT way on Ray."""

__version__ = "0.1.0"
