"""harness: one model, every runtime and precision, accuracy next to efficiency."""

import sys
from pathlib import Path

__version__ = "0.1.0"

# `python -m harness` and `python -m pytest` put the working folder first on sys.path. In a checkout
# that folder holds kernels/ and backends/, installed as harness.kernels and harness.backends because
# their bare names belong to other distributions: from there kernels/ would shadow Hugging Face's
# `kernels`, which transformers (5.25 on) imports with every model. Nothing is imported from the
# checkout's root that an install lacks, so the root comes off sys.path before anything else loads.
_CHECKOUT = Path(__file__).resolve().parent.parent
if (_CHECKOUT / "kernels" / "__init__.py").is_file():
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _CHECKOUT]
