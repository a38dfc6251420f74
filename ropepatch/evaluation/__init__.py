"""Long-context evaluation: perplexity by context length and passkey retrieval, per scaling method.

Nothing here imports torch, transformers or plotting libraries until a function needs them.
"""
