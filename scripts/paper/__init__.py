"""The pieces of ``scripts/reproduce_paper.py``, in the order it runs them.

``experiments`` (what each mode trains), ``runs`` (training and computing a store, or reusing a finished run),
``findings`` (the paper's four findings measured from the stores), ``figures`` (one function per figure family)
and ``markdown`` (one function per section of docs/paper.md).
"""
