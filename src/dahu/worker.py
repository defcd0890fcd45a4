"""``python -m dahu.worker``: the worker process of the ``process`` executor.

Kept for compatibility; the worker lives in :mod:`dahu.executors.worker`.
"""

from .executors.worker import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
