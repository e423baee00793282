"""Side-by-side benchmark of embellama against raw llama-cpp-python, LangChain and sentence-transformers.

Run it with ``make bench`` (``python -m benchmarks.run``); results land in ``benchmarks/results/``.
"""
